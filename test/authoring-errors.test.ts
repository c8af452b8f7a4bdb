/**
 * Errors that point at the router's code (README "Writing a router"): a syntax error, a throw
 * while loading and a throw in a call each carry `line` and `column` in the router's source, a
 * short code frame and the router's own stack frames (none of Switchyard's), with a hint for
 * module and TypeScript syntax. The same fields through the admin API (422 and the dry run) and
 * the command line (`router check`, `router try`, `router push`, `router test`), the local ones
 * with no service running. Exit codes: 0 a decision, 1 a router error, 2 a usage error.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { AdminApi, eventually, exchange, runCli, startTestHosting, type TestHosting, writeRouterFile } from './helpers.js';

const syntaxError = 'proxy((data) => {\n  const m = /^GET /.exec(data);\n  return { remote: ;\n});\n';
const loadThrow = 'const users = {};\nusers.alice.port = 80;\nproxy(() => ({ noop: true }));\n';
const callThrow = 'function lookup(name) {\n  return undefinedThing[name];\n}\nproxy((data) => {\n  return { remote: lookup(data) };\n});\n';

/** Every stack frame names the router's file; nothing of Switchyard's (its prelude, eval) shows. */
function assertOwnFrames(stack: unknown, file: string): void {
  assert.ok(Array.isArray(stack) && stack.length > 0, `a stack: ${JSON.stringify(stack)}`);
  for (const frame of stack as string[]) assert.match(frame, new RegExp(`^at .*${file.replace('.', '\\.')}:\\d+:\\d+\\)?$`));
  assert.doesNotMatch(JSON.stringify(stack), /prelude|switchyard:|<anonymous>\)/);
}

describe('router errors through the admin API', () => {
  let hosting: TestHosting;
  let api: AdminApi;
  let port: number;
  before(async () => {
    hosting = await startTestHosting({ quotas: { pushesPerMinute: 6000, pushBurst: 100 } });
    api = hosting.api;
    ({ port } = await api.createTenant('acme'));
    await api.putRouter('acme', 'proxy(() => ({ close: "v1" }));');
  });
  after(() => hosting.close());

  it('a syntax error: 422 with line, column and a code frame; the old router stays live', async () => {
    const r = await api.call('PUT', '/v1/tenants/acme/router', { body: syntaxError });
    assert.equal(r.status, 422, r.text);
    assert.equal(r.json.code, 'ERR_ROUTER_SYNTAX');
    assert.equal(r.json.error, "Unexpected token ';'");
    assert.deepEqual([r.json.line, r.json.column], [3, 20]);
    assert.equal(r.json.frame, ['  1 | proxy((data) => {', '  2 |   const m = /^GET /.exec(data);', '> 3 |   return { remote: ;', '    |                    ^', '  4 | });'].join('\n'));
    assert.equal(r.json.hint, undefined);
    assert.equal((await exchange(port, ['x'])).data, 'v1');
  });

  it('module syntax and TypeScript get a hint', async () => {
    const cases: [string, RegExp][] = [
      ['export default function route(data) {\n  return { noop: true };\n}\n', /classic scripts, not ES modules/],
      ["import { lookup } from './users.js';\nproxy(() => ({ noop: true }));\n", /classic scripts, not ES modules/],
      ['proxy((data: string) => ({ noop: true }));\n', /looks like TypeScript/],
      ['interface Backend { host: string }\nproxy(() => ({ noop: true }));\n', /looks like TypeScript/],
      ['const backends = ["a:1"] as const;\nproxy(() => ({ noop: true }));\n', /looks like TypeScript/],
      ["const net = require('net');\nproxy(() => ({ noop: true }));\n", /no require/],
    ];
    for (const [source, hint] of cases) {
      const r = await api.call('PUT', '/v1/tenants/acme/router', { body: source });
      assert.equal(r.status, 422, r.text);
      assert.match(String(r.json.hint), hint, source);
      assert.equal(typeof r.json.frame, 'string', source);
    }
  });

  it('a throw while loading: 422 with where it happened in the source, and only the router\'s own frames', async () => {
    const r = await api.call('PUT', '/v1/tenants/acme/router', { body: 'function setUp() {\n  return users.alice;\n}\nsetUp();\nproxy(() => ({ noop: true }));\n' });
    assert.equal(r.status, 422, r.text);
    assert.equal(r.json.code, 'ERR_ROUTER_THROW');
    assert.match(r.json.error, /ReferenceError: users is not defined/);
    assert.deepEqual([r.json.line, r.json.column], [2, 3]);
    assert.deepEqual(r.json.stack, ['at setUp (acme.js:2:3)', 'at <top level> (acme.js:4:1)']);
    assert.match(r.json.frame, /^> 2 \|   return users\.alice;$/m);
  });

  it('a router that throws on every call is accepted; the dry run says where, with a frame and the stack', async () => {
    assert.equal(await api.putRouter('acme', callThrow), 2);
    const r = await api.call('POST', '/v1/tenants/acme/route', { body: { data: 'GET /' } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.reason, 'router_throw');
    assert.equal(r.json.code, 'ERR_ROUTER_THROW');
    assert.equal(r.json.error, 'router threw: ReferenceError: undefinedThing is not defined');
    assert.deepEqual([r.json.line, r.json.column], [2, 3]);
    assertOwnFrames(r.json.stack, 'acme.js');
    assert.deepEqual(r.json.stack, ['at lookup (acme.js:2:3)', 'at <anonymous> (acme.js:5:20)']);
    assert.match(r.json.frame, /^> 2 \|   return undefinedThing\[name\];\n {4}\| {3}\^$/m);
    // A real client's connection: the rejection and the log say where too.
    await exchange(port, ['GET /']);
    const [rejection] = await api.rejections('acme');
    assert.equal(rejection.reason, 'router_throw');
    assert.equal(rejection.detail, 'router threw: ReferenceError: undefinedThing is not defined (at acme.js:2:3)');
  });

  it('a dry run of another kept version; one not kept is 404', async () => {
    const r = await api.call('POST', '/v1/tenants/acme/route', { body: { data: 'x', version: 1 } });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.decision, { close: 'v1' });
    const missing = await api.call('POST', '/v1/tenants/acme/route', { body: { data: 'x', version: 99 } });
    assert.equal(missing.status, 404, missing.text);
  });

  it('router push and router test on the command line show the same fields; a failing dry run exits 1', async () => {
    const env = { SWITCHYARD_URL: `http://127.0.0.1:${hosting.adminPort}`, SWITCHYARD_TOKEN: hosting.operatorToken };
    const file = writeRouterFile(loadThrow, 'users.js');
    const pushed = await runCli(['router', 'push', 'acme', file], env);
    assert.equal(pushed.code, 1);
    assert.ok(pushed.stderr.includes(`${file}:2:18: router threw while loading: TypeError: Cannot set properties of undefined (setting 'port') (ERR_ROUTER_THROW)`), pushed.stderr);
    assert.match(pushed.stderr, /^> 2 \| users\.alice\.port = 80;$/m);
    assert.match(pushed.stderr, /^ {4}at <top level> \(users\.js:2:18\)$/m);

    const tested = await runCli(['router', 'test', 'acme', '--data', 'GET /'], env);
    assert.equal(tested.code, 1, tested.stderr);
    assert.equal(JSON.parse(tested.stdout).line, 2);
    assert.match(tested.stderr, /^acme\.js:2:3: router threw: ReferenceError: undefinedThing is not defined \(ERR_ROUTER_THROW\)$/m);
    assert.match(tested.stderr, /^ {4}at lookup \(acme\.js:2:3\)$/m);

    const usage = await runCli(['router', 'test', 'acme'], env);
    assert.equal(usage.code, 2, usage.stderr);
  });
});

describe('router check and router try: the local loop, no service running', () => {
  it('check: a syntax error, a throw while loading, a script that never calls proxy: exit 1 with the report; a good one: exit 0', async () => {
    const bad = writeRouterFile(syntaxError, 'syntax.js');
    const r = await runCli(['router', 'check', bad]);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.equal(
      r.stderr,
      [`${bad}:3:20: Unexpected token ';' (ERR_ROUTER_SYNTAX)`, '', '  1 | proxy((data) => {', '  2 |   const m = /^GET /.exec(data);', '> 3 |   return { remote: ;', '    |                    ^', '  4 | });', ''].join('\n'),
    );

    const throws = writeRouterFile(loadThrow, 'users.js');
    const t = await runCli(['router', 'check', throws]);
    assert.equal(t.code, 1);
    assert.ok(t.stderr.startsWith(`${throws}:2:18: router threw while loading: TypeError`), t.stderr);
    assert.match(t.stderr, /^ {4}at <top level> \(users\.js:2:18\)$/m);
    assert.doesNotMatch(t.stderr, /prelude/);

    const json = await runCli(['router', 'check', '--json', throws]);
    assert.equal(json.code, 1);
    const view = JSON.parse(json.stdout);
    assert.deepEqual([view.ok, view.code, view.line, view.column, view.stack], [false, 'ERR_ROUTER_THROW', 2, 18, ['at <top level> (users.js:2:18)']]);

    const noProxy = await runCli(['router', 'check', writeRouterFile('const x = 1;\n')]);
    assert.equal(noProxy.code, 1);
    assert.match(noProxy.stderr, /never calls proxy\(\) \(ERR_ROUTER_NO_PROXY\)/);

    const good = writeRouterFile('proxy(() => ({ noop: true }));\nproxyAccept(() => undefined);\n', 'good.js');
    const ok = await runCli(['router', 'check', good]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout, `${good}: ok (proxy, proxyAccept)\n`);
  });

  it('check loads as a push does: the same limits (1 s while loading, the heap limit) and the table', async () => {
    const spin = await runCli(['router', 'check', writeRouterFile('for (;;) {}\nproxy(() => ({ noop: true }));\n')]);
    assert.equal(spin.code, 1);
    assert.match(spin.stderr, /router ran past 1000 ms while loading \(ERR_ROUTER_TIMEOUT\)/);
    const hog = await runCli(['router', 'check', '--memory', '8', writeRouterFile('const a = [];\nfor (;;) a.push(new Array(1e5).fill(1));\n')]);
    assert.equal(hog.code, 1);
    assert.match(hog.stderr, /\(ERR_ROUTER_(MEMORY|CRASH)\)/);
    // A router that reads its table while loading: without one it fails, with one it loads.
    const file = writeRouterFile('const web = table.sites.web;\nproxy(() => ({ remote: web }));\n');
    const tableFile = file.replace(/router\.js$/, 'table.json');
    writeFileSync(tableFile, JSON.stringify({ sites: { web: '198.51.100.1:80' } }));
    assert.equal((await runCli(['router', 'check', file])).code, 1);
    assert.equal((await runCli(['router', 'check', file, '--table', tableFile])).code, 0);
  });

  it('try: the validated decision and the policy verdict (exit 0); a call that throws (exit 1); usage errors (exit 2)', async () => {
    const file = writeRouterFile("proxy((data, conn) => {\n  console.log('saw', data.length, 'bytes from', conn.remoteAddress);\n  return data.startsWith('GET') ? { remote: table.web } : { close: 'HTTP/1.0 400 Bad Request\\r\\n\\r\\n' };\n});\n", 'web.js');
    const tableFile = file.replace(/web\.js$/, 'table.json');
    writeFileSync(tableFile, JSON.stringify({ web: '10.1.2.3:8080' }));
    const denied = await runCli(['router', 'try', file, '--table', tableFile, '--data', 'GET / HTTP/1.1\\r\\n\\r\\n']);
    assert.equal(denied.code, 0, denied.stderr);
    const d = JSON.parse(denied.stdout);
    assert.deepEqual(d.decision, { remote: '10.1.2.3:8080' });
    assert.equal(d.allowed, false);
    assert.match(d.reason, /10\.1\.2\.3 is in 10\.0\.0\.0\/8 \(private, RFC 1918\)/);
    assert.match(denied.stderr, /^console\.log: saw 18 bytes from 203\.0\.113\.7$/m);

    const allowed = await runCli(['router', 'try', file, '--table', tableFile, '--allow', '10.0.0.0/8', '--base64', Buffer.from('GET /').toString('base64'), '--client', '192.0.2.9:4000']);
    assert.equal(allowed.code, 0, allowed.stderr);
    assert.equal(JSON.parse(allowed.stdout).allowed, true);
    assert.match(allowed.stderr, /from 192\.0\.2\.9$/m);

    const closed = await runCli(['router', 'try', file, '--table', tableFile, '--data', 'HELO']);
    assert.deepEqual(JSON.parse(closed.stdout).decision, { close: 'HTTP/1.0 400 Bad Request\r\n\r\n' });

    const throwing = writeRouterFile(callThrow, 'lookup.js');
    const failed = await runCli(['router', 'try', throwing, '--data', 'GET /']);
    assert.equal(failed.code, 1);
    assert.equal(JSON.parse(failed.stdout).reason, 'router_throw');
    assert.equal(
      failed.stderr,
      [
        `${throwing}:2:3: router threw: ReferenceError: undefinedThing is not defined (ERR_ROUTER_THROW)`,
        '',
        '  1 | function lookup(name) {',
        '> 2 |   return undefinedThing[name];',
        '    |   ^',
        '  3 | }',
        '  4 | proxy((data) => {',
        '',
        '    at lookup (lookup.js:2:3)',
        '    at <anonymous> (lookup.js:5:20)',
        '',
      ].join('\n'),
    );

    for (const args of [['router', 'try', file], ['router', 'try', file, '--data', 'x', '--base64', 'eA=='], ['router', 'try'], ['router', 'try', '/nonexistent/router.js', '--data', 'x'], ['router', 'check', file, '--no-such-flag'], ['router', 'try', file, '--data', 'x', '--table', '/nonexistent/table.json']]) {
      const r = await runCli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    }
  });

  it("try --from-rejections: the file on each first bytes a tenant's service captured", async () => {
    const hosting = await startTestHosting();
    try {
      const { port, token } = await hosting.api.createTenant('shop');
      await hosting.api.putRouter('shop', "proxy((data) => ({ close: 'no ' + data }));");
      await exchange(port, ['alpha']);
      await exchange(port, ['beta']);
      await eventually(async () => (await hosting.api.rejections('shop')).length === 2, 'two rejections');
      const file = writeRouterFile("proxy((data) => data === 'beta' ? { close: true } : { noop: true });");
      const env = { SWITCHYARD_URL: `http://127.0.0.1:${hosting.adminPort}`, SWITCHYARD_TOKEN: token };
      const r = await runCli(['router', 'try', file, '--from-rejections', 'shop'], env);
      assert.equal(r.code, 0, r.stderr);
      const { results } = JSON.parse(r.stdout) as { results: { client: string; rejected: string; decision: unknown }[] };
      assert.deepEqual(
        results.map((x) => [x.rejected, x.decision]),
        [
          ['router_close', { close: true }],
          ['router_close', { noop: true }],
        ],
      );
      assert.ok(results.every((x) => x.client.startsWith('127.0.0.1:')));
    } finally {
      await hosting.close();
    }
  });
});
