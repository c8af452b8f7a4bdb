/**
 * The admin API's command-line client (switchyard tenant|router|table …), run as the real
 * executable against a running service: the operator creates a tenant, the tenant pushes a
 * router and a table, tests it, rolls it back, and a real client is routed by the result.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { exchange, spawnCli, startEchoBackend, startTestHosting, type TestHosting, type TestServer, writeRouterFile } from './helpers.js';

async function client(args: string[], env: Record<string, string>): Promise<{ code: number | null; json: unknown; stderr: string }> {
  const proc = spawnCli(args, { env });
  const { code } = await proc.exited;
  const stdout = proc.log.text.trim();
  return { code, json: stdout === '' ? undefined : (JSON.parse(stdout) as unknown), stderr: proc.stderr() };
}

describe('command-line client', () => {
  let hosting: TestHosting;
  let echo: TestServer;
  let url: string;
  before(async () => {
    echo = await startEchoBackend();
    hosting = await startTestHosting({ allow: ['127.0.0.0/8'] });
    url = `http://127.0.0.1:${hosting.adminPort}`;
  });
  after(async () => {
    await hosting.close();
    await echo.close();
  });

  it('walks an operator and a tenant through the whole API', async () => {
    const operator = { SWITCHYARD_URL: url, SWITCHYARD_TOKEN: hosting.operatorToken };
    const created = await client(['tenant', 'create', 'acme'], operator);
    assert.equal(created.code, 0, created.stderr);
    const { port, token } = created.json as { name: string; port: number; token: string };
    assert.ok(port >= hosting.ports[0] && port <= hosting.ports[1]);
    assert.deepEqual((await client(['tenant', 'list'], operator)).json, { tenants: [{ name: 'acme', port, version: null }] });

    // The tenant, with its own token, passed as a flag this time.
    const as = (args: string[]) => client([...args, '--url', url, '--token', token], {});
    const v1 = writeRouterFile(`proxy((data) => data.startsWith('GET') ? { remote: table.backend } : { close: 'v1' });`);
    assert.deepEqual((await as(['router', 'push', 'acme', v1])).json, { version: 1 });
    const table = v1.replace(/router\.js$/, 'table.json');
    writeFileSync(table, JSON.stringify({ backend: `127.0.0.1:${echo.port}` }));
    assert.deepEqual((await as(['table', 'push', 'acme', table])).json, { ok: true });
    const test = await as(['router', 'test', 'acme', '--data', 'GET / HTTP/1.0\\r\\n\\r\\n']);
    assert.deepEqual((test.json as { decision: unknown; allowed: boolean }).decision, { remote: `127.0.0.1:${echo.port}` });
    assert.equal((test.json as { allowed: boolean }).allowed, true);
    assert.equal((await exchange(port, ['GET / HTTP/1.0\r\n\r\n'])).data, `${echo.port}:GET / HTTP/1.0\r\n\r\n`);

    const v2 = writeRouterFile(`proxy(() => ({ close: 'v2' }));`);
    assert.deepEqual((await as(['router', 'push', 'acme', v2])).json, { version: 2 });
    assert.equal((await exchange(port, ['x'])).data, 'v2');
    assert.deepEqual((await as(['router', 'rollback', 'acme'])).json, { version: 1 });
    assert.equal((await exchange(port, ['x'])).data, 'v1');

    const bad = writeRouterFile('proxy(() => {\n  return {;\n});');
    const refused = await as(['router', 'push', 'acme', bad]);
    assert.equal(refused.code, 1);
    assert.ok(refused.stderr.includes(`${bad}:2:11: Unexpected token ';' (ERR_ROUTER_SYNTAX)`), refused.stderr);
    assert.match(refused.stderr, /^> 2 \|   return \{;$/m);
    const forbidden = await as(['tenant', 'list']);
    assert.equal(forbidden.code, 1);
    assert.match(forbidden.stderr, /403/);

    const shown = (await client(['tenant', 'show', 'acme'], operator)).json as { version: number; stats: { connections: { total: number } } };
    assert.equal(shown.version, 1);
    assert.equal(shown.stats.connections.total, 3);
    assert.deepEqual((await client(['tenant', 'delete', 'acme'], operator)).json, { deleted: 'acme' });
    assert.deepEqual((await client(['tenant', 'list'], operator)).json, { tenants: [] });
  });

  it('says clearly what is wrong', async () => {
    const noToken = await client(['tenant', 'list', '--url', url], { SWITCHYARD_TOKEN: '' });
    assert.equal(noToken.code, 1);
    assert.match(noToken.stderr, /no token/);
    const unreachable = await client(['tenant', 'list', '--url', 'http://127.0.0.1:1', '--token', 'x'], {});
    assert.equal(unreachable.code, 1);
    assert.match(unreachable.stderr, /cannot reach/);
    const bothData = await client(['router', 'test', 'acme', '--url', url, '--token', 'x'], {});
    assert.match(bothData.stderr, /exactly one of --data and --base64/);
  });
});
