/**
 * The backend policy through the dry run (`POST /v1/tenants/:name/route`) of a real service:
 * every address form of the policy's table, denied by default with its reason; public
 * addresses allowed; this host's own addresses; and what `--allow` and a tenant's `allow` open.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { allowedByDefault, deniedByDefault, hostAddress } from './address-table.js';
import { eventually, exchange, removeDir, startTestHosting, type TestHosting } from './helpers.js';

/** The first value `get` resolves that is not undefined, polled (bounded by `eventually`). */
async function eventuallyValue<T>(get: () => Promise<T | undefined>): Promise<T> {
  let value: T | undefined;
  await eventually(async () => (value = await get()) !== undefined, 'a rejection recorded');
  return value!;
}

const echoRouter = 'proxy((data) => ({ remote: data.trim() }));';

async function dryRun(h: TestHosting, tenant: string, remote: string): Promise<{ allowed: unknown; reason: unknown }> {
  const r = await h.api.call('POST', `/v1/tenants/${tenant}/route`, { body: { data: remote } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.decision, { remote }, r.text);
  return { allowed: r.json.allowed, reason: r.json.reason };
}

describe('dry run: the default backend policy', () => {
  let h: TestHosting;

  before(async () => {
    h = await startTestHosting({ portCount: 2 }); // no --allow
    await h.api.createTenant('probe');
    await h.api.putRouter('probe', echoRouter);
  });

  after(async () => {
    await h?.close();
    if (h !== undefined) removeDir(h.dataDir);
  });

  it('denies every special-purpose range and every IPv6 form that carries a denied IPv4 address, saying which range', async () => {
    for (const row of deniedByDefault) {
      const r = await dryRun(h, 'probe', row.remote);
      assert.equal(r.allowed, false, row.remote);
      assert.ok(typeof r.reason === 'string' && r.reason.startsWith('backend not allowed: '), `${row.remote}: ${String(r.reason)}`);
      for (const words of row.reason) assert.ok((r.reason as string).includes(words), `${row.remote}: "${String(r.reason)}" should say "${words}"`);
    }
  });

  it('allows public addresses', async () => {
    for (const remote of allowedByDefault) assert.deepEqual(await dryRun(h, 'probe', remote), { allowed: true, reason: undefined }, remote);
  });

  it('checks what a host name resolves to', async () => {
    const r = await dryRun(h, 'probe', 'localhost:80');
    assert.equal(r.allowed, false);
    assert.match(String(r.reason), /loopback/);
  });

  it('a real client refused by the policy is recorded with the dry run\'s very reason', async () => {
    for (const remote of ['10.0.0.5:80', '[64:ff9b::7f00:1]:80', 'localhost:80']) {
      const dry = await dryRun(h, 'probe', remote);
      const port = (await h.api.show('probe')).port as number;
      await exchange(port, [`${remote}\n`], { end: true });
      const latest = await eventuallyValue(async () => (await h.api.rejections('probe')).find((r) => Buffer.from(r.firstBytes, 'base64').toString('latin1') === `${remote}\n`));
      assert.equal(latest.reason, 'policy_denied');
      assert.equal(latest.detail, dry.reason, remote);
    }
  });

  it("denies this host's own interface addresses on ports that are not the service's", { skip: hostAddress() === undefined ? 'no non-loopback interface address' : false }, async () => {
    const mine = hostAddress()!;
    const remote = mine.family === 4 ? `${mine.address}:22` : `[${mine.address}]:22`;
    const r = await dryRun(h, 'probe', remote);
    assert.equal(r.allowed, false, remote);
    assert.ok(String(r.reason).includes(`${mine.address} is an address of this host (${mine.name})`), String(r.reason));
  });
});

describe('dry run: what --allow and a tenant allow open', () => {
  let h: TestHosting;

  before(async () => {
    h = await startTestHosting({ portCount: 2, allow: ['10.0.0.0/8', '169.254.0.0/16', '0.0.0.0/0:22', '[::]/0:22'] });
    await h.api.createTenant('open');
    await h.api.putRouter('open', echoRouter);
  });

  after(async () => {
    await h?.close();
    if (h !== undefined) removeDir(h.dataDir);
  });

  it('--allow opens a range, in every form that carries it, and nothing else', async () => {
    for (const remote of ['10.0.0.5:80', '[::ffff:10.0.0.5]:80', '[64:ff9b::a00:5]:80', '[2002:a00:5::]:80', '[2001:0:808:808::f5ff:fffa]:80', '169.254.1.1:80']) {
      assert.deepEqual(await dryRun(h, 'open', remote), { allowed: true, reason: undefined }, remote);
    }
    for (const remote of ['172.16.0.1:80', '[fd12::1]:80', '[::ffff:127.0.0.1]:80']) assert.equal((await dryRun(h, 'open', remote)).allowed, false, remote);
  });

  it('a range rule does not open a cloud metadata address; a rule for the address does', async () => {
    let r = await dryRun(h, 'open', '169.254.169.254:80');
    assert.equal(r.allowed, false);
    assert.match(String(r.reason), /cloud metadata service.*only a rule for that address opens it, such as --allow 169\.254\.169\.254\/32:80/);
    assert.equal((await dryRun(h, 'open', '169.254.169.254:22')).allowed, false, 'not even 0.0.0.0/0:22');
    const put = await h.api.call('PUT', '/v1/tenants/open/limits', { body: { allow: ['169.254.169.254/32:80'] } });
    assert.equal(put.status, 200, put.text);
    r = await dryRun(h, 'open', '169.254.169.254:80');
    assert.equal(r.allowed, true, String(r.reason));
    assert.equal((await h.api.call('PUT', '/v1/tenants/open/limits', { body: { allow: null } })).status, 200);
  });

  it("a wide rule does not open this host's own address; a tenant rule for the address does", { skip: hostAddress() === undefined ? 'no non-loopback interface address' : false }, async () => {
    const mine = hostAddress()!;
    const remote = mine.family === 4 ? `${mine.address}:22` : `[${mine.address}]:22`;
    const r = await dryRun(h, 'open', remote);
    assert.equal(r.allowed, false, `${remote} with 0.0.0.0/0:22 and [::]/0:22`);
    assert.ok(String(r.reason).includes('only a rule for that address opens it'), String(r.reason));
    const rule = mine.family === 4 ? `${mine.address}/32:22` : `[${mine.address}]/128:22`;
    assert.equal((await h.api.call('PUT', '/v1/tenants/open/limits', { body: { allow: [rule] } })).status, 200);
    assert.deepEqual(await dryRun(h, 'open', remote), { allowed: true, reason: undefined });
    assert.equal((await h.api.call('PUT', '/v1/tenants/open/limits', { body: { allow: null } })).status, 200);
  });

  it("never the service's own ports, whatever the rules say", async () => {
    const put = await h.api.call('PUT', '/v1/tenants/open/limits', { body: { allow: ['127.0.0.0/8', '0.0.0.0/0', '[::]/0'] } });
    assert.equal(put.status, 200, put.text);
    const own = (await h.api.show('open')).port as number;
    for (const remote of [`127.0.0.1:${h.adminPort}`, `127.0.0.1:${own}`, `[::ffff:127.0.0.1]:${h.adminPort}`, `[::1]:${own}`, `0.0.0.0:${h.adminPort}`, `localhost:${h.adminPort}`]) {
      const r = await dryRun(h, 'open', remote);
      assert.equal(r.allowed, false, remote);
      assert.match(String(r.reason), /is one of the service's own ports/, remote);
    }
    assert.equal((await dryRun(h, 'open', '127.0.0.1:22')).allowed, true, 'other loopback ports are open by the rule');
  });
});
