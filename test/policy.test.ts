/** Hosting mode's backend policy: special addresses denied unless allowed, own ports never. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type AllowRule, BackendPolicy, parseAllowRule } from '../src/routing/policy.js';
import { CachingResolver } from '../src/routing/resolver.js';
import { exchange, startEchoBackend, startProxy, type TestServer } from './helpers.js';

function rules(...texts: string[]): AllowRule[] {
  return texts.map((t) => {
    const r = parseAllowRule(t);
    assert.notEqual(typeof r, 'string', String(r));
    return r as AllowRule;
  });
}

describe('allow rules', () => {
  it('parses CIDR, CIDR:PORT, CIDR:LO-HI and bracketed IPv6', () => {
    for (const text of ['10.0.0.0/8', '127.0.0.1', '127.0.0.0/8:80', '127.0.0.1/32:8000-9000', '[::1]/128:80', '[fe80::]/10', '[::1]', 'fe80::/10']) {
      assert.equal(typeof parseAllowRule(text), 'object', text);
    }
    assert.deepEqual((parseAllowRule('127.0.0.1/32:8000-9000') as AllowRule).ports, [8000, 9000]);
  });

  it('refuses malformed rules with a reason', () => {
    for (const text of ['', 'localhost', '10.0.0.0/33', '300.1.1.1/8', '10.0.0.0/8:0', '10.0.0.0/8:9-1', '10.0.0.0/8:70000', '10.0.0.0/8:http', '[::1]/129', '[10.0.0.1]/8', '::1/128:80:80']) {
      assert.equal(typeof parseAllowRule(text), 'string', text);
    }
  });
});

describe('BackendPolicy', () => {
  const ownPorts = new Set([7070, 20000]);
  const base = new BackendPolicy([], (p) => ownPorts.has(p));

  it('denies loopback, link-local, unspecified and multicast by default', () => {
    for (const ip of ['127.0.0.1', '127.1.2.3', '169.254.169.254', '0.0.0.0', '224.0.0.1', '239.255.255.250', '255.255.255.255', '::1', '::', 'fe80::1', 'ff02::1', '::ffff:127.0.0.1']) {
      assert.equal(base.check(ip, 80).allowed, false, ip);
    }
  });

  it('allows ordinary addresses', () => {
    for (const ip of ['10.1.2.3', '192.0.2.10', '2001:db8::1', '::ffff:192.0.2.1']) assert.equal(base.check(ip, 80).allowed, true, ip);
  });

  it('lets rules open special addresses, by port when they say so', () => {
    const p = base.with(rules('127.0.0.0/8:8080', '[::1]/128:80-81', '169.254.169.254'));
    assert.equal(p.check('127.0.0.1', 8080).allowed, true);
    assert.equal(p.check('127.0.0.1', 8081).allowed, false);
    assert.equal(p.check('::1', 81).allowed, true);
    assert.equal(p.check('::1', 82).allowed, false);
    assert.equal(p.check('169.254.169.254', 1).allowed, true);
    assert.equal(base.check('127.0.0.1', 8080).allowed, false, 'with() leaves the base policy alone');
  });

  it('never allows the service’s own ports on its own addresses', () => {
    const p = base.with(rules('127.0.0.0/8', '0.0.0.0/0'));
    assert.equal(p.check('127.0.0.1', 7070).allowed, false);
    assert.equal(p.check('127.0.0.1', 20000).allowed, false);
    assert.equal(p.check('0.0.0.0', 20000).allowed, false);
    assert.equal(p.check('127.0.0.1', 20001).allowed, true);
    assert.equal(p.check('192.0.2.1', 7070).allowed, true, 'another machine’s port 7070 is not ours');
  });
});

describe('CachingResolver', () => {
  it('resolves IP literals to themselves and names through the hosts file', async () => {
    const r = new CachingResolver();
    assert.deepEqual(await r.resolve('10.0.0.1'), ['10.0.0.1']);
    const local = await r.resolve('localhost');
    assert.ok(local.some((a) => a === '127.0.0.1' || a === '::1'), local.join());
    assert.equal(await r.resolve('LOCALHOST.'), local, 'cached under its normalised name');
    await assert.rejects(r.resolve('no-such-host.invalid'));
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

  it('checks what a name resolves to', async () => {
    assert.deepEqual(await route(`localhost:${echo.port}`, []), { data: '', reason: 'policy_denied' });
  });

  it('routes when a rule allows the backend', async () => {
    assert.equal((await route(`127.0.0.1:${echo.port}`, [`127.0.0.0/8:${echo.port}`])).data, `${echo.port}:hi`);
    assert.equal((await route(`localhost:${echo.port}`, ['127.0.0.0/8', '[::1]/128'])).data, `${echo.port}:hi`);
  });

  it('never routes to the service’s own ports', async () => {
    assert.deepEqual(await route(`127.0.0.1:${echo.port}`, ['127.0.0.0/8'], [echo.port]), { data: '', reason: 'policy_denied' });
  });
});
