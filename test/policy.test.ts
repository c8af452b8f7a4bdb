/** Hosting mode's backend policy: special-purpose ranges and this host's addresses denied unless allowed, own ports never. */
import assert from 'node:assert/strict';
import type { NetworkInterfaceInfo } from 'node:os';
import { after, before, describe, it } from 'node:test';
import { parseEndpoint, type Endpoint } from '../src/routing/endpoint.js';
import { HostAddresses } from '../src/routing/host-addresses.js';
import { admissionReason, admit, type AllowRule, BackendPolicy, parseAllowRule } from '../src/routing/policy.js';
import { CachingResolver } from '../src/routing/resolver.js';
import { allowedByDefault, deniedByDefault, hostAddress } from './address-table.js';
import { exchange, startEchoBackend, startProxy, type TestServer } from './helpers.js';

function rules(...texts: string[]): AllowRule[] {
  return texts.map((t) => {
    const r = parseAllowRule(t);
    assert.notEqual(typeof r, 'string', String(r));
    return r as AllowRule;
  });
}

function endpoint(text: string): Endpoint {
  const e = parseEndpoint(text);
  assert.notEqual(typeof e, 'string', `${text}: ${String(e)}`);
  return e as Endpoint;
}

/** An interface list as os.networkInterfaces() gives it. */
function interfaces(list: Record<string, string[]>): () => NodeJS.Dict<NetworkInterfaceInfo[]> {
  return () =>
    Object.fromEntries(
      Object.entries(list).map(([name, addresses]) => [
        name,
        addresses.map((address): NetworkInterfaceInfo => {
          const internal = name === 'lo';
          return address.includes(':')
            ? { address, family: 'IPv6', netmask: 'ffff:ffff:ffff:ffff::', mac: '00:00:00:00:00:00', internal, cidr: `${address}/64`, scopeid: 0 }
            : { address, family: 'IPv4', netmask: '255.255.255.0', mac: '00:00:00:00:00:00', internal, cidr: `${address}/24` };
        }),
      ]),
    );
}

/** A host with loopback and one public address on eth9, so that only "this host" denies that address. */
const fakeHost = (): HostAddresses => new HostAddresses({ source: interfaces({ lo: ['127.0.0.1', '::1'], eth9: ['93.184.216.34', '2606:2800:220:1::34'] }) });

describe('allow rules', () => {
  it('parses CIDR, CIDR:PORT, CIDR:LO-HI and bracketed IPv6', () => {
    for (const text of ['10.0.0.0/8', '127.0.0.1', '127.0.0.0/8:80', '127.0.0.1/32:8000-9000', '[::1]/128:80', '[fe80::]/10', '[::1]', 'fe80::/10', '0.0.0.0/0', '[::]/0']) {
      assert.equal(typeof parseAllowRule(text), 'object', text);
    }
    assert.deepEqual((parseAllowRule('127.0.0.1/32:8000-9000') as AllowRule).ports, [8000, 9000]);
  });

  it('refuses malformed rules with a reason', () => {
    for (const text of ['', 'localhost', '10.0.0.0/33', '300.1.1.1/8', '10.0.0.0/8:0', '10.0.0.0/8:9-1', '10.0.0.0/8:70000', '10.0.0.0/8:http', '[::1]/129', '[10.0.0.1]/8', '::1/128:80:80', '[fe80::1%eth0]/128']) {
      assert.equal(typeof parseAllowRule(text), 'string', text);
    }
  });

  it('reads an IPv4-mapped IPv6 network as the IPv4 network it maps', () => {
    const p = new BackendPolicy(rules('[::ffff:10.0.0.0]/104'), () => false, fakeHost());
    assert.equal(p.check('10.1.2.3', 80).allowed, true);
    assert.equal(p.check('11.1.2.3', 80).allowed, true, 'public anyway');
    assert.equal(p.check('172.16.0.1', 80).allowed, false);
  });
});

describe('BackendPolicy', () => {
  const ownPorts = new Set([7070, 20000]);
  const base = new BackendPolicy([], (p) => ownPorts.has(p), fakeHost());

  for (const row of deniedByDefault) {
    it(`denies ${row.remote} by default, saying why`, () => {
      const { host, port } = endpoint(row.remote);
      const v = base.check(host, port);
      assert.equal(v.allowed, false, row.remote);
      for (const words of row.reason) assert.ok(!v.allowed && v.reason.includes(words), `${row.remote}: "${v.allowed ? '' : v.reason}" should say "${words}"`);
    });
  }

  it('allows public addresses, the edges of the denied ranges, and IPv6 forms that carry public IPv4 addresses', () => {
    for (const remote of allowedByDefault) {
      const { host, port } = endpoint(remote);
      assert.deepEqual(base.check(host, port), { allowed: true }, remote);
    }
  });

  it('denies what is not an IP address', () => {
    for (const text of ['localhost', '010.0.0.1', '1.2.3', '::ffff:1.2.3.4.5', '']) assert.equal(base.check(text, 80).allowed, false, text);
  });

  it("denies this host's own interface addresses on every port, and their IPv6 forms; only a rule for the very address opens one", () => {
    for (const [address, words] of [
      ['93.184.216.34', '93.184.216.34 is an address of this host (eth9); only a rule for that address opens it, such as --allow 93.184.216.34/32:8080'],
      ['2606:2800:220:1::34', '2606:2800:220:1::34 is an address of this host (eth9); only a rule for that address opens it, such as --allow [2606:2800:220:1::34]/128:8080'],
      ['::ffff:93.184.216.34', '::ffff:93.184.216.34 carries 93.184.216.34 (IPv4-mapped, RFC 4291): 93.184.216.34 is an address of this host (eth9)'],
      ['64:ff9b::5db8:d822', 'carries 93.184.216.34 (NAT64, RFC 6052): 93.184.216.34 is an address of this host'],
      ['2002:5db8:d822::1', 'carries 93.184.216.34 (6to4'],
    ] as const) {
      const v = base.check(address, 8080);
      assert.ok(!v.allowed && v.reason.includes(words), `${address}: ${v.allowed ? 'allowed' : v.reason}`);
    }
    for (const port of [1, 22, 6379, 65535]) assert.equal(base.check('93.184.216.34', port).allowed, false, `port ${port}`);
    assert.equal(base.with(rules('93.184.216.0/24', '0.0.0.0/0')).check('93.184.216.34', 22).allowed, false, 'a wider rule does not open it');
    assert.equal(base.with(rules('93.184.216.34/32:22')).check('93.184.216.34', 22).allowed, true, 'a rule for the address does');
    assert.equal(base.with(rules('93.184.216.34/32:22')).check('93.184.216.34', 23).allowed, false, 'on its ports only');
    assert.equal(base.with(rules('[2606:2800:220:1::34]/128')).check('2606:2800:220:1::34', 22).allowed, true);
    assert.equal(base.check('93.184.216.35', 22).allowed, true, 'a neighbour is not this host');
  });

  it("re-reads this host's addresses when the last reading is older than refreshMs, and no more often", () => {
    let now = 0;
    let reads = 0;
    let list: Record<string, string[]> = { eth0: ['93.184.216.34'] };
    const host = new HostAddresses({ source: () => (reads++, interfaces(list)()), refreshMs: 2000, now: () => now });
    const p = new BackendPolicy([], () => false, host);
    assert.equal(p.check('93.184.216.34', 80).allowed, false);
    assert.equal(p.check('93.184.216.77', 80).allowed, true);
    list = { eth0: ['93.184.216.77'] };
    now = 1999;
    assert.equal(p.check('93.184.216.77', 80).allowed, true, 'within refreshMs the last reading stands');
    assert.equal(reads, 1, 'one reading for three checks');
    now = 2000;
    assert.equal(p.check('93.184.216.77', 80).allowed, false, 'the new address is denied once read');
    assert.equal(p.check('93.184.216.34', 80).allowed, true, 'the address that went away is not');
    assert.equal(reads, 2);
  });

  it("uses this machine's interfaces by default", { skip: hostAddress() === undefined ? 'no non-loopback interface address' : false }, () => {
    const mine = hostAddress()!;
    const v = new BackendPolicy([], () => false).check(mine.address, 1);
    assert.ok(!v.allowed && v.reason.includes(`is an address of this host (${mine.name})`), v.allowed ? 'allowed' : v.reason);
  });

  it('lets rules open denied ranges, by port when they say so, and checks an embedded IPv4 address against IPv4 rules', () => {
    const p = base.with(rules('127.0.0.0/8:8080', '[::1]/128:80-81', '10.0.0.0/8', '[fc00::]/7', '169.254.0.0/16'));
    assert.equal(p.check('127.0.0.1', 8080).allowed, true);
    assert.equal(p.check('127.0.0.1', 8081).allowed, false);
    assert.equal(p.check('::1', 81).allowed, true);
    assert.equal(p.check('::1', 82).allowed, false);
    for (const address of ['10.0.0.5', '::ffff:10.0.0.5', '64:ff9b::a00:5', '2002:a00:5::', '2001:0:808:808::f5ff:fffa', 'fd12::1', '169.254.1.1']) {
      assert.deepEqual(p.check(address, 80), { allowed: true }, address);
    }
    assert.equal(p.check('172.16.0.1', 80).allowed, false, 'other ranges stay denied');
    assert.equal(p.check('2001:0:a00:5::f7f7:f7f7', 80).allowed, true, 'Teredo: server 10.0.0.5 opened, client 8.8.8.8 public');
    assert.equal(p.check('2001:0:a00:5::80ff:fffe', 80).allowed, false, 'Teredo: the client 127.0.0.1 is still denied');
    assert.equal(base.check('127.0.0.1', 8080).allowed, false, 'with() leaves the base policy alone');
    const localNat64 = base.with(rules('[64:ff9b:1::]/48'));
    assert.deepEqual(localNat64.check('64:ff9b:1::808:808', 80), { allowed: true }, 'the local-use NAT64 prefix opened');
    const v = localNat64.check('64:ff9b:1::7f00:1', 80);
    assert.ok(!v.allowed && v.reason.includes('carries 127.0.0.1 (local-use NAT64, RFC 8215, read as a /96): 127.0.0.1 is in 127.0.0.0/8'), v.allowed ? 'allowed' : v.reason);
  });

  it('opens a cloud metadata address only by a rule for that address, not by a rule for its range', () => {
    const wide = base.with(rules('169.254.0.0/16', '100.64.0.0/10', '[fc00::]/7', '0.0.0.0/0', '[::]/0'));
    for (const address of ['169.254.169.254', '169.254.170.2', '100.100.100.200', 'fd00:ec2::254', '64:ff9b::a9fe:a9fe', '::ffff:169.254.169.254']) {
      assert.equal(wide.check(address, 80).allowed, false, address);
    }
    const exact = base.with(rules('169.254.169.254/32:80', '[fd00:ec2::254]/128'));
    assert.equal(exact.check('169.254.169.254', 80).allowed, true);
    assert.equal(exact.check('169.254.169.254', 81).allowed, false);
    assert.equal(exact.check('fd00:ec2::254', 80).allowed, true);
  });

  it('never allows the service’s own ports on this host’s addresses, in any form, whatever the rules say', () => {
    const p = base.with(rules('127.0.0.0/8', '0.0.0.0/0', '[::]/0', '93.184.216.34/32'));
    for (const address of ['127.0.0.1', '127.9.9.9', '0.0.0.0', '::1', '::', '::ffff:127.0.0.1', '::127.0.0.1', '64:ff9b::7f00:1', '2002:7f00:1::', '93.184.216.34', '::ffff:93.184.216.34']) {
      for (const port of [7070, 20000]) {
        const v = p.check(address, port);
        assert.ok(!v.allowed && v.reason.includes(`:${port} is one of the service's own ports`), `${address}:${port}: ${v.allowed ? 'allowed' : v.reason}`);
      }
    }
    assert.equal(p.check('127.0.0.1', 20001).allowed, true);
    assert.equal(p.check('93.184.216.34', 20001).allowed, true);
    assert.equal(p.check('8.8.8.8', 7070).allowed, true, 'another machine’s port 7070 is not ours');
  });
});

describe('admit', () => {
  const policy = new BackendPolicy([], () => false, fakeHost());

  it('connects to an IPv4-mapped address as IPv4, keeps the order, and says why nothing is left', async () => {
    const resolver = new CachingResolver({ lookup: async () => ['8.8.4.4', '10.0.0.1'] });
    const a = await admit([endpoint('[::ffff:8.8.8.8]:53'), endpoint('dns.example:53'), endpoint('10.0.0.9:53')], policy, resolver);
    assert.deepEqual(a.candidates, [
      { host: '8.8.8.8', port: 53 },
      { host: '8.8.4.4', port: 53 },
    ]);
    assert.equal(a.denied.length, 2);
    const none = await admit([endpoint('10.0.0.9:53')], policy, new CachingResolver({ lookup: async () => Promise.reject(Object.assign(new Error('nope'), { code: 'ENOTFOUND' })) }));
    assert.equal(admissionReason(none), 'backend not allowed: 10.0.0.9 is in 10.0.0.0/8 (private, RFC 1918) and no --allow rule covers 10.0.0.9:53');
    const missing = await admit([endpoint('gone.example:53')], policy, new CachingResolver({ lookup: async () => Promise.reject(Object.assign(new Error('nope'), { code: 'ENOTFOUND' })) }));
    assert.deepEqual(missing.unresolved, ['gone.example:53']);
    assert.equal(admissionReason(missing), 'not resolved: gone.example did not resolve (ENOTFOUND)');
  });
});

describe('the policy on a proxy', () => {
  let echo: TestServer;
  before(async () => {
    echo = await startEchoBackend();
  });
  after(() => echo.close());

  async function route(remote: string, allow: string[], own: number[] = []): Promise<{ data: string; reason: unknown }> {
    const proxy = await startProxy(`proxy(() => ({ remote: ${JSON.stringify(remote)} }));`, {
      gate: { policy: new BackendPolicy(rules(...allow), (p) => own.includes(p)), resolver: new CachingResolver() },
    });
    try {
      const r = await exchange(proxy.port, ['hi']);
      const closed = await proxy.log.closed();
      return { data: r.data, reason: closed.reason };
    } finally {
      await proxy.close();
    }
  }

  it('denies a loopback backend by default, and counts it', async () => {
    assert.deepEqual(await route(`127.0.0.1:${echo.port}`, []), { data: '', reason: 'policy_denied' });
  });

  it('denies loopback carried in IPv6 forms', async () => {
    for (const host of ['[::ffff:127.0.0.1]', '[::ffff:7f00:1]', '[::127.0.0.1]', '[64:ff9b::7f00:1]']) {
      assert.deepEqual(await route(`${host}:${echo.port}`, ['[::]/0']), { data: '', reason: 'policy_denied' }, host);
    }
  });

  it('checks what a name resolves to', async () => {
    assert.deepEqual(await route(`localhost:${echo.port}`, []), { data: '', reason: 'policy_denied' });
  });

  it('routes when a rule allows the backend', async () => {
    assert.equal((await route(`127.0.0.1:${echo.port}`, [`127.0.0.0/8:${echo.port}`])).data, `${echo.port}:hi`);
    assert.equal((await route(`[::ffff:127.0.0.1]:${echo.port}`, [`127.0.0.0/8:${echo.port}`])).data, `${echo.port}:hi`, 'a mapped address is connected to as IPv4');
    assert.equal((await route(`localhost:${echo.port}`, ['127.0.0.0/8', '[::1]/128'])).data, `${echo.port}:hi`);
  });

  it('never routes to the service’s own ports', async () => {
    assert.deepEqual(await route(`127.0.0.1:${echo.port}`, ['127.0.0.0/8'], [echo.port]), { data: '', reason: 'policy_denied' });
  });
});
