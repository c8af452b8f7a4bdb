/**
 * Tenant self-service (README "Writing a router"): reading back the live source, any kept
 * version and the table (`GET …/router`, `…/router/versions`, `…/table`; `switchyard router get`,
 * `router versions`, `table get`), and the tenant's own log (`GET …/logs?since=`, `switchyard
 * logs TENANT [--follow]`): its router's console lines, rate-limited, and its rejections, in a
 * bounded ring that a reader follows by long polling.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { TenantLog, tenantLogDefaults } from '../src/tenants/tenant-log.js';
import { AdminApi, eventually, exchange, runCli, spawnCli, startTestHosting, type TestHosting, until, within, writeRouterFile } from './helpers.js';

describe('reading back', () => {
  let hosting: TestHosting;
  let api: AdminApi;
  let token: string;
  let env: Record<string, string>;
  before(async () => {
    hosting = await startTestHosting({ quotas: { pushesPerMinute: 6000, pushBurst: 100 } });
    api = hosting.api;
    ({ token } = await api.createTenant('acme'));
    await api.createTenant('other');
    env = { SWITCHYARD_URL: `http://127.0.0.1:${hosting.adminPort}`, SWITCHYARD_TOKEN: token };
  });
  after(() => hosting.close());

  it('before any upload: no router (404), an empty table, no versions', async () => {
    assert.equal((await api.call('GET', '/v1/tenants/acme/router', { token })).status, 404);
    const table = await api.call('GET', '/v1/tenants/acme/table', { token });
    assert.deepEqual([table.status, table.json], [200, {}]);
    assert.deepEqual((await api.call('GET', '/v1/tenants/acme/router/versions', { token })).json, { versions: [] });
  });

  it('the live source, an older version, the list of versions and the table, through the API and the CLI', async () => {
    const v1 = "// version one\nproxy(() => ({ close: 'v1' }));\n";
    const v2 = "// version two: ünïcødé\nproxy(() => ({ close: 'v2' }));\n";
    await api.putRouter('acme', v1, token);
    await api.putRouter('acme', v2, token);
    const live = await api.call('GET', '/v1/tenants/acme/router', { token });
    assert.deepEqual([live.status, live.text, live.headers['x-router-version']], [200, v2, '2']);
    assert.match(String(live.headers['content-type']), /^application\/javascript/);
    assert.equal((await api.call('GET', '/v1/tenants/acme/router?version=1', { token })).text, v1);
    assert.equal((await api.call('GET', '/v1/tenants/acme/router?version=7', { token })).status, 404);
    assert.equal((await api.call('GET', '/v1/tenants/acme/router?version=x', { token })).status, 400);

    const { versions } = (await api.call('GET', '/v1/tenants/acme/router/versions', { token })).json;
    assert.deepEqual(
      versions.map((v: Record<string, unknown>) => ({ ...v, createdAt: typeof v.createdAt })),
      [
        { version: 2, createdAt: 'string', size: Buffer.byteLength(v2), sha256: createHash('sha256').update(v2).digest('hex'), live: true, percent: 100 },
        { version: 1, createdAt: 'string', size: Buffer.byteLength(v1), sha256: createHash('sha256').update(v1).digest('hex'), live: false, percent: 0 },
      ],
    );

    const tableFile = writeRouterFile('', 'table.json');
    writeFileSync(tableFile, JSON.stringify({ users: { alice: '198.51.100.7:22' } }));
    assert.equal((await runCli(['table', 'push', 'acme', tableFile], env)).code, 0);
    assert.deepEqual((await api.call('GET', '/v1/tenants/acme/table', { token })).json, { users: { alice: '198.51.100.7:22' } });

    const got = await runCli(['router', 'get', 'acme'], env);
    assert.deepEqual([got.code, got.stdout], [0, v2]);
    assert.equal((await runCli(['router', 'get', 'acme', '--version', '1'], env)).stdout, v1);
    const listed = await runCli(['router', 'versions', 'acme'], env);
    assert.deepEqual(JSON.parse(listed.stdout).versions.map((v: { version: number }) => v.version), [2, 1]);
    const table = await runCli(['table', 'get', 'acme'], env);
    assert.deepEqual(JSON.parse(table.stdout), { users: { alice: '198.51.100.7:22' } });
  });

  it("a tenant token reads only its own tenant's", async () => {
    for (const path of ['/router', '/router/versions', '/table', '/logs']) {
      assert.equal((await api.call('GET', `/v1/tenants/other${path}`, { token })).status, 403, path);
    }
  });
});

describe("a tenant's own log", () => {
  let hosting: TestHosting;
  let api: AdminApi;
  let port: number;
  let token: string;
  before(async () => {
    hosting = await startTestHosting({ quotas: { pushesPerMinute: 6000, pushBurst: 100 } });
    api = hosting.api;
    ({ port, token } = await api.createTenant('acme'));
    await api.putRouter('acme', "proxy((data, conn) => {\n  console.log('saw', data);\n  if (data === 'boom') console.error('about to refuse');\n  return { close: data === 'boom' ? true : 'ok' };\n});\n", token);
  });
  after(() => hosting.close());

  /** GET …/logs?since=&wait= as the tenant. */
  async function logs(since: number, waitS = 0): Promise<{ entries: Record<string, unknown>[]; next: number; missed: number }> {
    const r = await api.call('GET', `/v1/tenants/acme/logs?since=${since}&wait=${waitS}`, { token });
    assert.equal(r.status, 200, r.text);
    return r.json;
  }

  it('console lines (with the version that wrote them) and rejections, in order; since= reads on from there', async () => {
    const start = (await logs(0)).next;
    await exchange(port, ['boom']);
    await eventually(async () => (await logs(start)).entries.length >= 3, 'three entries');
    const page = await logs(start);
    assert.deepEqual(
      page.entries.map((e) => [e.kind, e.version, e.line ?? e.reason]),
      [
        ['log', 1, 'saw boom'],
        ['error', 1, 'about to refuse'],
        ['rejection', undefined, 'router_close'],
      ],
    );
    assert.match(String(page.entries[2]!.client), /^127\.0\.0\.1:\d+$/);
    assert.equal(page.missed, 0);
    assert.deepEqual((await logs(page.next)).entries, []);
  });

  it('a reader waiting for more (long polling) is answered as soon as a line comes', async () => {
    const from = (await logs(0)).next;
    // With nothing new, the answer comes after the wait, empty.
    const quiet = performance.now();
    assert.deepEqual((await logs(from, 1)).entries, []);
    assert.ok(performance.now() - quiet >= 900, 'it waited');
    // With a line coming, the answer comes with it, long before the wait is over.
    const asked = performance.now();
    const waiting = logs(from, 20);
    await exchange(port, ['later']);
    const page = await within(waiting, 15_000, 'the long poll');
    assert.equal(page.entries[0]!.line, 'saw later');
    assert.ok(performance.now() - asked < 15_000);
  });

  it('the rate limit: a chatty router has its lines dropped, and the log says how many', async () => {
    await api.putRouter('acme', "proxy(() => {\n  for (let i = 0; i < 20; i++) console.log('line', i);\n  return { close: true };\n});\n", token);
    const from = (await logs(0)).next;
    await eventually(
      async () => {
        await exchange(port, ['x']);
        const all: Record<string, unknown>[] = [];
        for (let since = from; ; ) {
          const page = await logs(since);
          if (page.entries.length === 0) break;
          all.push(...page.entries);
          since = page.next;
        }
        return all.some((e) => e.kind === 'dropped' && Number(e.count) > 0);
      },
      'a dropped entry',
      30_000,
      0,
    );
  });

  it('switchyard logs prints the log; --follow keeps printing what comes', async () => {
    const env = { SWITCHYARD_URL: `http://127.0.0.1:${hosting.adminPort}`, SWITCHYARD_TOKEN: token };
    await api.putRouter('acme', "proxy((data) => {\n  console.log('followed', data);\n  return { close: true };\n});\n", token);
    const start = String((await logs(0)).next);
    const follower = spawnCli(['logs', 'acme', '--follow', '--since', start], { env });
    try {
      await exchange(port, ['one']);
      await until(() => /^\S+ log v\d+: followed one$/m.test(follower.log.text), 'the line on stdout', 15_000);
      await exchange(port, ['two']);
      await until(() => /^\S+ log v\d+: followed two$/m.test(follower.log.text), 'the next line on stdout', 15_000);
      assert.match(follower.log.text, /^\S+ rejected 127\.0\.0\.1:\d+: router_close: router closed the connection$/m);
    } finally {
      follower.child.kill('SIGTERM');
      await follower.exited;
    }
    const once = await runCli(['logs', 'acme', '--since', start, '--json'], env);
    assert.equal(once.code, 0, once.stderr);
    const lines = once.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(lines.filter((e) => e.kind === 'log').map((e) => e.line), ['followed one', 'followed two']);
    assert.equal((await runCli(['logs', 'acme', '--since', 'x'], env)).code, 2);
  });
});

describe('TenantLog: the bounded ring', () => {
  it('keeps the newest entries within its bounds, and says how many a reader missed', () => {
    const log = new TenantLog();
    const n = tenantLogDefaults.maxEntries + 50;
    for (let i = 1; i <= n; i++) log.add({ kind: 'log', line: `line ${i}` });
    const page = log.since(0);
    assert.equal(page.missed, 50);
    assert.equal(page.entries[0]!.seq, 51);
    assert.equal(page.entries.length, tenantLogDefaults.pageEntries);
    assert.equal(log.since(page.next).entries[0]!.seq, 51 + tenantLogDefaults.pageEntries);
    // The character bound: long lines push out more entries.
    const big = new TenantLog();
    for (let i = 0; i < tenantLogDefaults.maxEntries; i++) big.add({ kind: 'log', line: 'x'.repeat(1024) });
    const kept = big.since(0);
    assert.ok(kept.missed > tenantLogDefaults.maxEntries / 2, `missed ${kept.missed}`);
    assert.ok((tenantLogDefaults.maxEntries - kept.missed) * 1024 <= tenantLogDefaults.maxChars);
  });

  it('readers waiting are bounded per tenant and in all: past that a read is answered at once', async () => {
    const gone = new AbortController();
    const logs = Array.from({ length: 8 }, () => new TenantLog());
    const waits = logs.flatMap((log) => Array.from({ length: 8 }, () => log.wait(0, 60_000, gone.signal)));
    assert.deepEqual(logs.map((l) => l.waiting), [8, 8, 8, 8, 0, 0, 0, 0]);
    await logs[7]!.wait(0, 60_000, gone.signal); // answered at once: 32 wait already
    gone.abort();
    await Promise.all(waits);
    assert.deepEqual(logs.map((l) => l.waiting), [0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it('a reader waits until an entry comes, or gives up when it goes away', async () => {
    const log = new TenantLog();
    const gone = new AbortController();
    const waiting = log.wait(0, 60_000, gone.signal);
    assert.equal(log.waiting, 1);
    log.add({ kind: 'dropped', count: 3 });
    await waiting;
    assert.equal(log.waiting, 0);
    const abandoned = log.wait(1, 60_000, gone.signal);
    gone.abort();
    await abandoned;
    assert.equal(log.waiting, 0);
  });
});
