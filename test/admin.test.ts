/**
 * The admin API of hosting mode (CONTRACT §4), over real HTTP against `switchyard serve` started
 * in-process: every route with good and bad input and the status codes of the contract table —
 * 2xx, 400 (bad JSON, bad names, ports outside the range), 401, 403, 404, 405 (with Allow),
 * 409 (name taken, port taken, port not bindable), 413 (answered, not reset), 422 (a script that
 * does not compile, never calls proxy, throws, or loads for more than 1 s; the old router stays
 * live, checked with a real connection) — and the properties of tokens (length, opacity, never
 * listed, never stored in clear, the operator token file's mode).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  AdminApi,
  exchange,
  fileMode,
  filesUnder,
  httpCall,
  type HttpReply,
  occupyPort,
  removeDir,
  startEchoBackend,
  startTestHosting,
  type TestHosting,
  type TestServer,
} from './helpers.js';

/** Asserts an error answer: the status, a JSON body `{ error: string, … }`. */
function assertError(r: HttpReply, status: number, what: string): void {
  assert.equal(r.status, status, `${what}: expected ${status}, got ${r.status} ${r.text}`);
  assert.match(String(r.headers['content-type']), /^application\/json/, `${what}: errors are JSON`);
  assert.equal(typeof r.json?.error, 'string', `${what}: the body is { error }: ${r.text}`);
  assert.ok(r.json.error.length > 0, `${what}: the error says something`);
}

/** A router that sends every client to `port` (an echo backend answering `<port>:<data>`). */
const routeTo = (port: number): string => `proxy(() => ({ remote: '127.0.0.1:${port}' }));\n`;

/** Every route that needs a token, for tenant `n`, with a well-formed body. */
function protectedRoutes(n: string): [string, string, unknown?][] {
  return [
    ['GET', '/metrics'],
    ['GET', '/v1/tenants'],
    ['POST', '/v1/tenants', { name: 'never-created' }],
    ['GET', `/v1/tenants/${n}`],
    ['DELETE', `/v1/tenants/${n}`],
    ['PUT', `/v1/tenants/${n}/router`, 'proxy(() => ({ noop: true }));'],
    ['POST', `/v1/tenants/${n}/router/rollback`],
    ['PUT', `/v1/tenants/${n}/table`, { a: 1 }],
    ['PUT', `/v1/tenants/${n}/limits`, { maxConnections: 3 }],
    ['POST', `/v1/tenants/${n}/route`, { data: 'x' }],
    ['GET', `/v1/tenants/${n}/rejections`],
    ['DELETE', `/v1/tenants/${n}/connections`],
  ];
}

/** The routes of one tenant that a tenant token may use. */
function tenantRoutes(n: string): [string, string, unknown?][] {
  return [
    ['GET', `/v1/tenants/${n}`],
    ['PUT', `/v1/tenants/${n}/router`, 'proxy(() => ({ noop: true }));'],
    ['POST', `/v1/tenants/${n}/router/rollback`],
    ['PUT', `/v1/tenants/${n}/table`, { a: 1 }],
    ['POST', `/v1/tenants/${n}/route`, { data: 'x' }],
    ['GET', `/v1/tenants/${n}/rejections`],
    ['DELETE', `/v1/tenants/${n}/connections`],
  ];
}

describe('admin API', () => {
  let h: TestHosting;
  let api: AdminApi;
  let backend: TestServer;
  let lo: number;
  let hi: number;
  /** Every tenant token handed out in this suite. */
  const tokens: string[] = [];

  const create = async (name: string, port?: number): Promise<{ name: string; port: number; token: string }> => {
    const t = await api.createTenant(name, port);
    tokens.push(t.token);
    return t;
  };

  /** A port of the range no tenant has, from the top. */
  const unusedPort = async (): Promise<number> => {
    const r = await api.call('GET', '/v1/tenants');
    const used = new Set((r.json.tenants as { port: number }[]).map((t) => t.port));
    for (let p = hi; p >= lo; p--) if (!used.has(p)) return p;
    throw new Error('the range is full');
  };

  before(async () => {
    backend = await startEchoBackend();
    h = await startTestHosting({ portCount: 24, allow: ['127.0.0.0/8'], quotas: { pushesPerMinute: 6000, pushBurst: 1000 } }); // pushes without pause: quotas.test.ts tests the push rate
    api = h.api;
    [lo, hi] = h.ports;
  });

  after(async () => {
    await h?.close();
    await backend?.close();
    if (h !== undefined) removeDir(h.dataDir);
  });

  it('GET /healthz: 200 for anyone, with or without a token', async () => {
    for (const call of [{}, { token: 'nonsense' }, { token: h.operatorToken }]) {
      const r = await httpCall(h.adminPort, 'GET', '/healthz', call);
      assert.equal(r.status, 200, r.text);
    }
  });

  it('POST /v1/tenants: 201 { name, port, token }, on the port asked for or a free one of the range', async () => {
    const a = await create('alpha');
    assert.equal(a.name, 'alpha');
    assert.ok(Number.isInteger(a.port) && a.port >= lo && a.port <= hi, `port ${a.port} in ${lo}-${hi}`);
    assert.equal(typeof a.token, 'string');
    const b = await create('beta', hi);
    assert.deepEqual({ name: b.name, port: b.port }, { name: 'beta', port: hi });
    assert.notEqual(a.port, b.port);
    // A 63-character name (the longest allowed) and one that starts with a digit.
    const long = `a${'b'.repeat(61)}9`;
    assert.equal(long.length, 63);
    assert.equal((await create(long)).name, long);
    assert.equal((await create('0-x')).name, '0-x');
    const list = await api.call('GET', '/v1/tenants');
    assert.equal(list.status, 200);
    const names = (list.json.tenants as { name: string }[]).map((t) => t.name).sort();
    assert.deepEqual(names, ['0-x', 'alpha', long, 'beta'].sort());
    // Clean up the two that are not used further.
    assert.equal((await api.call('DELETE', `/v1/tenants/${long}`)).status, 204);
    assert.equal((await api.call('DELETE', '/v1/tenants/0-x')).status, 204);
  });

  it('GET /v1/tenants: 200 { tenants: [{ name, port, version }] }, without tokens', async () => {
    const r = await api.call('GET', '/v1/tenants');
    assert.equal(r.status, 200);
    for (const t of r.json.tenants as Record<string, unknown>[]) {
      assert.deepEqual(Object.keys(t).sort(), ['name', 'port', 'version'], JSON.stringify(t));
      assert.equal(t.version, null, 'no router uploaded yet');
    }
    for (const token of tokens) assert.ok(!r.text.includes(token), 'GET /v1/tenants must never show a token');
  });

  it('POST /v1/tenants: 400 for bad JSON, a body that is not an object, bad names, ports outside the range', async () => {
    const bad: [string, unknown][] = [
      ['bad JSON', '{"name":'],
      ['not JSON at all', 'name=x'],
      ['an empty body', ''],
      ['an array', '[]'],
      ['a string', '"alpha2"'],
      ['null', 'null'],
      ['a number', '42'],
      ['no name', {}],
      ['a name that is not a string', { name: 42 }],
      ['an upper-case name with an underscore', { name: 'Bad_Name' }],
      ['a name starting with a hyphen', { name: '-x' }],
      ['a 64-character name', { name: 'a'.repeat(64) }],
      ['an empty name', { name: '' }],
      ['a name with a space', { name: 'a b' }],
      ['a name with a dot', { name: 'a.b' }],
      ['a name with a slash', { name: 'a/b' }],
      ['a non-ASCII name', { name: 'café' }],
      ['a port below the range', { name: 'portless', port: lo - 1 }],
      ['a port above the range', { name: 'portless', port: hi + 1 }],
      ['port 0', { name: 'portless', port: 0 }],
      ['port 70000', { name: 'portless', port: 70000 }],
      ['a fractional port', { name: 'portless', port: lo + 0.5 }],
      ['a port as a string', { name: 'portless', port: String(lo) }],
      ['an unknown field', { name: 'portless', token: 'mine' }],
    ];
    for (const [what, body] of bad) {
      assertError(await api.call('POST', '/v1/tenants', { body, headers: { 'content-type': 'application/json' } }), 400, what);
    }
    assertError(await api.call('GET', '/v1/tenants/portless'), 404, 'nothing was created');
    const list = await api.call('GET', '/v1/tenants');
    assert.deepEqual((list.json.tenants as { name: string }[]).map((t) => t.name).sort(), ['alpha', 'beta']);
  });

  it('POST /v1/tenants: 409 when the name is taken, the port is taken, or the port cannot be bound', async () => {
    const alpha = (await api.show('alpha')) as { port: number };
    assertError(await api.call('POST', '/v1/tenants', { body: { name: 'alpha' } }), 409, 'name taken');
    assertError(await api.call('POST', '/v1/tenants', { body: { name: 'alpha', port: await unusedPort() } }), 409, 'name taken, another port');
    assertError(await api.call('POST', '/v1/tenants', { body: { name: 'gamma-x', port: alpha.port } }), 409, 'port of another tenant');

    // Something else listens on a port of the range: that port cannot be bound.
    const foreign = await unusedPort();
    const occupant = await occupyPort(foreign);
    try {
      assertError(await api.call('POST', '/v1/tenants', { body: { name: 'squatted', port: foreign } }), 409, 'port not bindable');
      assertError(await api.call('GET', '/v1/tenants/squatted'), 404, 'a failed create leaves no tenant');
      // Without a port, the tenant gets a port that can be bound.
      const auto = await create('auto');
      assert.notEqual(auto.port, foreign);
      assert.equal((await api.call('DELETE', '/v1/tenants/auto')).status, 204);
    } finally {
      await new Promise<void>((resolve) => occupant.close(() => resolve()));
    }
    // Once the port is free, the same request succeeds: the 409 was about binding.
    const squatted = await create('squatted', foreign);
    assert.equal(squatted.port, foreign);
    assert.equal((await api.call('DELETE', '/v1/tenants/squatted')).status, 204);
  });

  it('401 for no token, a wrong token and malformed Authorization headers, on every protected route', async () => {
    const authorizations: [string, string | undefined][] = [
      ['no header', undefined],
      ['a wrong token', `Bearer sy_op_${'x'.repeat(43)}`],
      ['a wrong token of the tenant kind', `Bearer sy_tn_${'x'.repeat(43)}`],
      ['the scheme alone', 'Bearer'],
      ['the scheme and a space', 'Bearer '],
      ['another scheme', `Basic ${Buffer.from(`admin:${h.operatorToken}`).toString('base64')}`],
      ['the token without a scheme', h.operatorToken],
      ['two tokens', `Bearer ${h.operatorToken} ${h.operatorToken}`],
      ['a prefix of the token', `Bearer ${h.operatorToken.slice(0, -1)}`],
      ['the token with a character more', `Bearer ${h.operatorToken}x`],
    ];
    for (const [what, authorization] of authorizations) {
      for (const [method, path, body] of protectedRoutes('alpha')) {
        const call = authorization === undefined ? { body } : { authorization, body };
        assertError(await httpCall(h.adminPort, method, path, call), 401, `${what}: ${method} ${path}`);
      }
    }
    // Without a token, a tenant that does not exist looks the same as one that does.
    assertError(await httpCall(h.adminPort, 'GET', '/v1/tenants/no-such-tenant'), 401, 'unknown tenant without a token');
    // Nothing happened: alpha is still there.
    assert.equal((await api.show('alpha')).name, 'alpha');
  });

  it('a tenant token reaches its own tenant: 2xx on every tenant route', async () => {
    const token = tokens[0]!; // alpha's
    const own = (method: string, path: string, body?: unknown): Promise<HttpReply> => httpCall(h.adminPort, method, path, { token, body });
    const shown = await own('GET', '/v1/tenants/alpha');
    assert.equal(shown.status, 200, shown.text);
    assert.equal(shown.json.name, 'alpha');
    const put = await own('PUT', '/v1/tenants/alpha/router', 'proxy(() => ({ noop: true }));');
    assert.equal(put.status, 200, put.text);
    assert.deepEqual(put.json, { version: 1 });
    assert.equal((await own('PUT', '/v1/tenants/alpha/router', 'proxy(() => ({ close: true }));')).json.version, 2);
    const rolled = await own('POST', '/v1/tenants/alpha/router/rollback');
    assert.equal(rolled.status, 200, rolled.text);
    assert.deepEqual(rolled.json, { version: 1 });
    assert.equal((await own('PUT', '/v1/tenants/alpha/table', { a: 1 })).status, 200);
    const route = await own('POST', '/v1/tenants/alpha/route', { data: 'x' });
    assert.equal(route.status, 200, route.text);
    assert.deepEqual(route.json.decision, { noop: true });
    const rejections = await own('GET', '/v1/tenants/alpha/rejections');
    assert.equal(rejections.status, 200);
    assert.ok(Array.isArray(rejections.json.rejections));
    const closed = await own('DELETE', '/v1/tenants/alpha/connections');
    assert.equal(closed.status, 200);
    assert.deepEqual(closed.json, { closed: 0 });
  });

  it('403 for a tenant token on another tenant (existing or not) and on operator-only routes', async () => {
    const alphaToken = tokens[0]!;
    const betaVersion = (await api.show('beta')).version as number | null;
    for (const [method, path, body] of [...tenantRoutes('beta'), ['DELETE', '/v1/tenants/beta'], ['PUT', '/v1/tenants/beta/limits', { maxConnections: 1 }]] as [string, string, unknown?][]) {
      assertError(await httpCall(h.adminPort, method, path, { token: alphaToken, body }), 403, `alpha's token on ${method} ${path}`);
    }
    // A tenant token cannot probe for other tenants: one that does not exist is a 403 too.
    assertError(await httpCall(h.adminPort, 'GET', '/v1/tenants/no-such-tenant', { token: alphaToken }), 403, 'unknown tenant, tenant token');
    const operatorOnly: [string, string, unknown?][] = [
      ['GET', '/v1/tenants'],
      ['POST', '/v1/tenants', { name: 'made-by-a-tenant' }],
      ['PUT', '/v1/tenants/alpha/limits', { maxConnections: 1 }],
      ['DELETE', '/v1/tenants/alpha'],
      ['GET', '/metrics'],
    ];
    for (const [method, path, body] of operatorOnly) {
      assertError(await httpCall(h.adminPort, method, path, { token: alphaToken, body }), 403, `a tenant token on ${method} ${path}`);
    }
    // None of it had an effect.
    assert.equal((await api.show('beta')).version, betaVersion);
    assert.equal((await api.show('alpha')).limits.maxConnections, 10_000);
    assertError(await api.call('GET', '/v1/tenants/made-by-a-tenant'), 404, 'no tenant was created');
  });

  it('404 for an unknown tenant on every tenant route, and for unknown paths', async () => {
    for (const [method, path, body] of [...tenantRoutes('nobody'), ['DELETE', '/v1/tenants/nobody'], ['PUT', '/v1/tenants/nobody/limits', { maxConnections: 1 }]] as [string, string, unknown?][]) {
      assertError(await api.call(method, path, { body }), 404, `${method} ${path}`);
    }
    for (const path of ['/', '/v1', '/v1/', '/v1/tenants/', '/v2/tenants', '/v1/tenant', '/v1/tenants/alpha/unknown', '/v1/tenants/alpha/router/extra', '/v1/tenants/alpha/rollback', '/healthz/x', '/metrics/x', '/v1/tenants/Bad_Name', '/v1/tenants/-x']) {
      assertError(await api.call('GET', path), 404, `GET ${path}`);
    }
    assertError(await api.call('POST', '/v1/nothing', { body: { name: 'x' } }), 404, 'POST to an unknown path');
  });

  it('a malformed percent-encoding in a tenant name is a client error (400 or 404), not a 500', async () => {
    for (const path of ['/v1/tenants/%E0%A4%A', '/v1/tenants/%zz', '/v1/tenants/%']) {
      const r = await api.call('GET', path);
      assert.ok(r.status === 400 || r.status === 404, `GET ${path}: expected 400 or 404, got ${r.status} ${r.text}`);
      assertError(r, r.status, `GET ${path}`);
    }
  });

  it('405 for a wrong method, with an Allow header naming the right ones', async () => {
    const cases: [string, string, string[]][] = [
      ['DELETE', '/healthz', ['GET']],
      ['POST', '/metrics', ['GET']],
      ['PUT', '/v1/tenants', ['GET', 'POST']],
      ['DELETE', '/v1/tenants', ['GET', 'POST']],
      ['PATCH', '/v1/tenants/alpha', ['DELETE', 'GET']],
      ['POST', '/v1/tenants/alpha', ['DELETE', 'GET']],
      ['DELETE', '/v1/tenants/alpha/router', ['GET', 'PUT']],
      ['POST', '/v1/tenants/alpha/router', ['GET', 'PUT']],
      ['GET', '/v1/tenants/alpha/router/rollback', ['POST']],
      ['POST', '/v1/tenants/alpha/router/versions', ['GET']],
      ['GET', '/v1/tenants/alpha/router/promote', ['POST']],
      ['GET', '/v1/tenants/alpha/router/replay', ['POST']],
      ['POST', '/v1/tenants/alpha/logs', ['GET']],
      ['POST', '/v1/tenants/alpha/table', ['GET', 'PUT']],
      ['GET', '/v1/tenants/alpha/limits', ['PUT']],
      ['GET', '/v1/tenants/alpha/route', ['POST']],
      ['DELETE', '/v1/tenants/alpha/rejections', ['GET']],
      ['GET', '/v1/tenants/alpha/connections', ['DELETE']],
    ];
    for (const [method, path, allowed] of cases) {
      const r = await api.call(method, path);
      assertError(r, 405, `${method} ${path}`);
      const header = r.headers.allow;
      assert.equal(typeof header, 'string', `${method} ${path}: an Allow header`);
      assert.deepEqual(
        String(header)
          .split(',')
          .map((m) => m.trim())
          .sort(),
        allowed,
        `${method} ${path}: Allow`,
      );
    }
  });

  it('PUT …/router: 200 { version } from 1, increasing; a multi-byte UTF-8 script is fine', async () => {
    await create('gamma');
    assert.deepEqual((await api.call('PUT', '/v1/tenants/gamma/router', { body: routeTo(backend.port) })).json, { version: 1 });
    const gamma = await api.show('gamma');
    assert.equal(gamma.version, 1);
    const r = await exchange(gamma.port, ['ping']);
    assert.equal(r.data, `${backend.port}:ping`);
    // Version 2 (with non-ASCII text in a comment), then back to the backend router as version 3.
    assert.equal(await api.putRouter('gamma', `// routeur — 路由器\n${routeTo(backend.port)}`), 2);
    assert.equal(await api.putRouter('gamma', routeTo(backend.port)), 3);
    assert.equal((await api.show('gamma')).version, 3);
  });

  /** gamma still runs version 3: the version shown, and a real client relayed to the backend. */
  const assertGammaLive = async (what: string): Promise<void> => {
    const gamma = await api.show('gamma');
    assert.equal(gamma.version, 3, `${what}: the version is unchanged`);
    const r = await exchange(gamma.port, ['still-there']);
    assert.equal(r.data, `${backend.port}:still-there`, `${what}: the old router still routes`);
  };

  it('PUT …/router: 422 with line and column (1-based) for a script that does not compile; the old router stays live', async () => {
    // [what, source, line, column of the offending token in the uploaded text]
    const scripts: [string, string, number, number][] = [
      [
        'an error on line 7',
        ['// gamma, version 4', "const users = { a: '1.2.3.4:80' };", '', 'proxy((data) => {', '  return { noop: true };', '});', 'const broken = ;', ''].join('\n'),
        7,
        'const broken = '.length + 1,
      ],
      ['an error on line 1, column 30', 'proxy(() => ({ noop: true })));\n', 1, 'proxy(() => ({ noop: true }))'.length + 1],
      ['an error after a multi-line template literal', 'const banner = `one\ntwo\nthree`;\nproxy(() => ({ noop: true }));\n  let let = 1;\n', 5, '  let '.length + 1],
    ];
    for (const [what, source, line, column] of scripts) {
      const r = await api.call('PUT', '/v1/tenants/gamma/router', { body: source });
      assertError(r, 422, what);
      assert.equal(r.json.line, line, `${what}: line (${r.text})`);
      assert.equal(r.json.column, column, `${what}: column (${r.text})`);
      await assertGammaLive(what);
    }
  });

  it('PUT …/router: 422 for a script that never calls proxy, throws, or runs past 1 s while loading; the old router stays live', async () => {
    const scripts: [string, string][] = [
      ['never calls proxy', 'const routes = {};\nfunction route() { return { noop: true }; }\n'],
      ['an empty script', ''],
      ['throws while loading', "proxy(() => ({ noop: true }));\nthrow new Error('not today');\n"],
      ['throws before calling proxy', "throw new TypeError('nope');\n"],
      ['runs past 1 s while loading', 'proxy(() => ({ noop: true }));\nwhile (true) {}\n'],
      ['exhausts its memory while loading', 'proxy(() => ({ noop: true }));\nconst hog = [];\nwhile (true) hog.push(new Array(100000).fill(hog.length));\n'],
    ];
    for (const [what, source] of scripts) {
      const started = Date.now();
      const r = await api.call('PUT', '/v1/tenants/gamma/router', { body: source });
      assertError(r, 422, what);
      if (what.startsWith('runs past')) assert.ok(Date.now() - started < 10_000, 'the load is stopped, not waited for');
      await assertGammaLive(what);
    }
  });

  it('PUT …/router: a script that is not UTF-8 is refused and the old router stays', async () => {
    const r = await api.call('PUT', '/v1/tenants/gamma/router', { body: Buffer.from([0x70, 0x72, 0x6f, 0x78, 0x79, 0xff, 0xfe, 0x28, 0x29]) });
    assert.ok(r.status === 400 || r.status === 422, `expected 400 or 422, got ${r.status}`);
    assertError(r, r.status, 'not UTF-8');
    await assertGammaLive('not UTF-8');
  });

  it('413 for a script over 256 KiB, with and without Content-Length; exactly 256 KiB is accepted', async () => {
    const head = routeTo(backend.port) + '//';
    const exact = head + 'x'.repeat(256 * 1024 - Buffer.byteLength(head));
    assert.equal(Buffer.byteLength(exact), 256 * 1024);
    const over = `${exact}x`;
    assertError(await api.call('PUT', '/v1/tenants/gamma/router', { body: over }), 413, 'script + 1 byte, Content-Length');
    assertError(await api.call('PUT', '/v1/tenants/gamma/router', { body: over, chunkSize: 16 * 1024 }), 413, 'script + 1 byte, chunked');
    assertError(await api.call('PUT', '/v1/tenants/gamma/router', { body: over + 'y'.repeat(2 * 1024 * 1024), chunkSize: 64 * 1024 }), 413, 'a 2 MiB script, chunked');
    await assertGammaLive('after 413');
    const r = await api.call('PUT', '/v1/tenants/gamma/router', { body: exact });
    assert.equal(r.status, 200, `exactly 256 KiB: ${r.text}`);
    assert.equal(r.json.version, 4);
    assert.equal((await exchange((await api.show('gamma')).port, ['big'])).data, `${backend.port}:big`);
  });

  it('413 for a table over 4 MiB, with and without Content-Length; exactly 4 MiB is accepted', async () => {
    await create('delta');
    const head = '{"pad":"';
    const tail = '"}';
    const exact = head + 'x'.repeat(4 * 1024 * 1024 - head.length - tail.length) + tail;
    assert.equal(exact.length, 4 * 1024 * 1024);
    const over = head + 'x'.repeat(4 * 1024 * 1024 - head.length - tail.length + 1) + tail;
    assertError(await api.call('PUT', '/v1/tenants/delta/table', { body: over }), 413, 'table + 1 byte, Content-Length');
    assertError(await api.call('PUT', '/v1/tenants/delta/table', { body: over, chunkSize: 256 * 1024 }), 413, 'table + 1 byte, chunked');
    assertError(await api.call('PUT', '/v1/tenants/delta/table', { body: Buffer.alloc(16 * 1024 * 1024, 0x20) }), 413, 'a 16 MiB table, Content-Length');
    assert.equal((await api.call('PUT', '/v1/tenants/delta/table', { body: exact })).status, 200, 'exactly 4 MiB');
    // A table of more than 64 KiB is not held to the "other bodies" limit.
    assert.equal((await api.call('PUT', '/v1/tenants/delta/table', { body: { pad: 'y'.repeat(100 * 1024) } })).status, 200);
  });

  it('400, not 500, for JSON nested too deep: a 5,000-deep table, limits and dry run; the table in force is kept', async () => {
    await create('deep');
    assert.equal((await api.call('PUT', '/v1/tenants/deep/table', { body: { kept: 1 } })).status, 200);
    const deep = (n: number): string => '{"a":'.repeat(n) + '1' + '}'.repeat(n);
    for (const [method, path, body] of [
      ['PUT', '/v1/tenants/deep/table', deep(5000)],
      ['PUT', '/v1/tenants/deep/table', '[' .repeat(65) + ']'.repeat(65)],
      ['PUT', '/v1/tenants/deep/limits', deep(100)],
      ['POST', '/v1/tenants/deep/route', deep(100)],
    ] as const) {
      const r = await api.call(method, path, { body, headers: { 'content-type': 'application/json' } });
      assertError(r, 400, `${method} ${path}`);
      assert.match(r.json.error, /^the body is JSON nested deeper than 64 levels/);
    }
    assert.equal((await api.call('PUT', '/v1/tenants/deep/table', { body: deep(63) })).status, 200, '64 levels are fine');
    assert.equal((await api.call('GET', '/v1/tenants/deep')).status, 200);
  });

  it('413 for other bodies over 64 KiB (create, limits, dry run, and bodies on routes that take none)', async () => {
    const pad = (prefix: string, suffix: string, size: number): string => prefix + 'z'.repeat(size - prefix.length - suffix.length) + suffix;
    const over = 64 * 1024 + 1;
    const cases: [string, string, string][] = [
      ['POST', '/v1/tenants', pad('{"name":"padded","pad":"', '"}', over)],
      ['PUT', '/v1/tenants/alpha/limits', pad('{"maxConnections":5,"pad":"', '"}', over)],
      ['POST', '/v1/tenants/gamma/route', pad('{"data":"', '"}', over)],
      ['DELETE', '/v1/tenants/gamma/connections', 'z'.repeat(over)],
      ['POST', '/v1/tenants/gamma/router/rollback', 'z'.repeat(over)],
    ];
    for (const [method, path, body] of cases) {
      assertError(await api.call(method, path, { body }), 413, `${method} ${path}, Content-Length`);
      assertError(await api.call(method, path, { body, chunkSize: 8 * 1024 }), 413, `${method} ${path}, chunked`);
    }
    assertError(await api.call('GET', '/v1/tenants/padded'), 404, 'nothing was created');
    assert.equal((await api.show('gamma')).version, 4, 'the refused rollback did nothing');
    // Exactly 64 KiB is accepted.
    const exact = await api.call('POST', '/v1/tenants/gamma/route', { body: pad('{"data":"', '"}', 64 * 1024) });
    assert.equal(exact.status, 200, exact.text);
  });

  it('PUT …/table: 200 for an object; 400 for anything else', async () => {
    assert.equal((await api.call('PUT', '/v1/tenants/delta/table', { body: { backends: { a: '10.0.0.1:80' }, n: [1, 2, 3] } })).status, 200);
    assert.equal((await api.call('PUT', '/v1/tenants/delta/table', { body: {} })).status, 200);
    for (const [what, body] of [
      ['an array', '[1,2]'],
      ['a string', '"table"'],
      ['a number', '7'],
      ['null', 'null'],
      ['true', 'true'],
      ['bad JSON', '{"a":'],
      ['an empty body', ''],
    ] as const) {
      assertError(await api.call('PUT', '/v1/tenants/delta/table', { body }), 400, `table: ${what}`);
    }
  });

  it('PUT …/limits: 200 with the limits in force, merged; 400 for bad values and unknown keys, which change nothing', async () => {
    const r = await api.call('PUT', '/v1/tenants/delta/limits', { body: { routerTimeoutMs: 120, maxConnections: 7, allow: ['10.0.0.0/8', '192.168.1.1:80-90'] } });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, {
      routerTimeoutMs: 120,
      memoryMb: 32,
      maxBufferBytes: 65536,
      decisionTimeoutMs: 10000,
      maxConnections: 7,
      connectTimeoutMs: 10000,
      allow: ['10.0.0.0/8', '192.168.1.1:80-90'],
    });
    const merged = await api.call('PUT', '/v1/tenants/delta/limits', { body: { memoryMb: 64, maxBufferBytes: 1024, decisionTimeoutMs: 500, connectTimeoutMs: 250 } });
    assert.equal(merged.status, 200, merged.text);
    assert.deepEqual(merged.json, {
      routerTimeoutMs: 120,
      memoryMb: 64,
      maxBufferBytes: 1024,
      decisionTimeoutMs: 500,
      maxConnections: 7,
      connectTimeoutMs: 250,
      allow: ['10.0.0.0/8', '192.168.1.1:80-90'],
    });
    const before = (await api.show('delta')).limits;
    assert.deepEqual(before, merged.json, 'GET shows the limits in force');
    const bad: [string, unknown][] = [
      ['routerTimeoutMs 0', { routerTimeoutMs: 0 }],
      ['routerTimeoutMs negative', { routerTimeoutMs: -5 }],
      ['routerTimeoutMs fractional', { routerTimeoutMs: 1.5 }],
      ['routerTimeoutMs as a string', { routerTimeoutMs: '100' }],
      ['routerTimeoutMs huge', { routerTimeoutMs: 1e12 }],
      ['memoryMb 1', { memoryMb: 1 }],
      ['memoryMb true', { memoryMb: true }],
      ['maxConnections negative', { maxConnections: -1 }],
      ['maxBufferBytes 0', { maxBufferBytes: 0 }],
      ['decisionTimeoutMs an object', { decisionTimeoutMs: {} }],
      ['connectTimeoutMs an array', { connectTimeoutMs: [5] }],
      ['an unknown key', { maxBananas: 3 }],
      ['a good key with an unknown one', { maxConnections: 3, bogus: 1 }],
      ['allow not an array', { allow: '10.0.0.0/8' }],
      ['allow with a bad rule', { allow: ['not-a-cidr'] }],
      ['allow with a bad prefix', { allow: ['10.0.0.0/33'] }],
      ['allow with a number', { allow: [10] }],
      ['an array', [1]],
      ['a string', 'fast'],
      ['null', null],
      ['bad JSON', '{"memoryMb":'],
    ];
    for (const [what, body] of bad) {
      assertError(await api.call('PUT', '/v1/tenants/delta/limits', { body: typeof body === 'string' ? body : JSON.stringify(body) }), 400, `limits: ${what}`);
    }
    assert.deepEqual((await api.show('delta')).limits, before, 'a refused PUT changes nothing');
    // null resets a key to the service default (README).
    const reset = await api.call('PUT', '/v1/tenants/delta/limits', { body: { routerTimeoutMs: null, allow: null } });
    assert.equal(reset.status, 200, reset.text);
    assert.equal(reset.json.routerTimeoutMs, 50);
    assert.deepEqual(reset.json.allow, []);
  });

  it('POST …/route: 200 for { data } and { base64 }; 400 for other bodies', async () => {
    const d = await api.call('POST', '/v1/tenants/gamma/route', { body: { data: 'hello' } });
    assert.equal(d.status, 200, d.text);
    assert.deepEqual(d.json.decision, { remote: `127.0.0.1:${backend.port}` });
    assert.equal(d.json.allowed, true);
    assert.equal(typeof d.json.durationMs, 'number');
    const b = await api.call('POST', '/v1/tenants/gamma/route', { body: { base64: Buffer.from([0, 1, 2, 255]).toString('base64') } });
    assert.equal(b.status, 200, b.text);
    assert.equal(b.json.allowed, true);
    const bad: [string, unknown][] = [
      ['an empty object', {}],
      ['data not a string', { data: 5 }],
      ['base64 not a string', { base64: ['AA=='] }],
      ['both data and base64', { data: 'a', base64: 'YQ==' }],
      ['an unknown key', { bytes: 'a' }],
      ['data with an extra key', { data: 'a', extra: 1 }],
      ['base64 that is not base64', { base64: '!!!not base64!!!' }],
      ['data with a character above U+00FF', { data: 'price: €5' }],
      ['an array', [{ data: 'a' }]],
      ['a string', '"data"'],
      ['bad JSON', '{"data":'],
    ];
    for (const [what, body] of bad) {
      assertError(await api.call('POST', '/v1/tenants/gamma/route', { body }), 400, `route: ${what}`);
    }
  });

  it('GET …/rejections, DELETE …/connections, GET /metrics: 200 with the documented shapes', async () => {
    const rej = await api.call('GET', '/v1/tenants/gamma/rejections');
    assert.equal(rej.status, 200);
    assert.ok(Array.isArray(rej.json.rejections));
    const closed = await api.call('DELETE', '/v1/tenants/gamma/connections');
    assert.equal(closed.status, 200);
    assert.equal(typeof closed.json.closed, 'number');
    const m = await api.call('GET', '/metrics');
    assert.equal(m.status, 200);
    assert.match(String(m.headers['content-type']), /^text\/plain/);
    assert.match(m.text, /^# (HELP|TYPE) /m);
    assert.match(m.text, /tenant="gamma"/);
  });

  it('GET …/:name: 200 { name, port, version, limits, stats }', async () => {
    const g = await api.show('gamma');
    for (const key of ['name', 'port', 'version', 'limits', 'stats']) assert.ok(key in g, `has ${key}`);
    assert.equal(g.name, 'gamma');
    assert.equal(g.version, 4);
    assert.equal(typeof g.stats, 'object');
    assert.ok(!JSON.stringify(g).includes('sy_tn_'), 'no token in the tenant view');
    for (const token of tokens) assert.ok(!JSON.stringify(g).includes(token));
  });

  it('tokens: at least 32 characters, opaque, distinct; never listed; never stored in clear; the operator token file is 0600', async () => {
    assert.ok(tokens.length >= 5);
    assert.equal(new Set(tokens).size, tokens.length, 'every token is different');
    for (const token of tokens) {
      assert.ok(token.length >= 32, `${token.length} characters`);
      assert.match(token, /^[\x21-\x7e]+$/, 'usable in a header as is');
      for (const name of ['alpha', 'beta', 'gamma', 'delta', 'squatted', 'auto']) assert.ok(!token.includes(name), 'no tenant name in a token');
    }
    // Nothing the API lists shows a token.
    const listed = (await api.call('GET', '/v1/tenants')).text + JSON.stringify(await api.show('alpha')) + (await api.call('GET', '/metrics')).text;
    for (const token of tokens) assert.ok(!listed.includes(token));
    // No file of the data directory holds a tenant token in clear (nor its random part).
    const files = filesUnder(h.dataDir);
    assert.ok(files.some((f) => f.path.endsWith('switchyard.db')), `the store is in the data directory: ${files.map((f) => f.path).join(', ')}`);
    for (const { path, content } of files) {
      for (const token of tokens) {
        assert.ok(!content.includes(Buffer.from(token)), `${path} holds a tenant token in clear`);
        // The random part is base64url, which has underscores of its own: strip the known prefix only.
        const secret = token.replace(/^sy_tn_/, '');
        assert.ok(secret.length >= 32, secret);
        assert.ok(!content.includes(Buffer.from(secret)), `${path} holds a tenant token's random part in clear`);
      }
    }
    // The operator token: generated, in DIR/admin-token with mode 0600, announced once.
    const tokenFile = `${h.dataDir}/admin-token`;
    assert.equal(fileMode(tokenFile), 0o600);
    assert.ok(h.operatorToken.length >= 32);
    assert.equal(h.announced.length, 1);
    assert.ok(h.announced[0]!.includes(h.operatorToken));
    for (const { path } of files) assert.equal(fileMode(path) & 0o077, 0, `${path} is readable only by its owner (mode ${fileMode(path).toString(8)})`);
  });

  it('DELETE /v1/tenants/:name: 204 with no body; the token dies with the tenant; the name can be reused with a new token', async () => {
    const old = await create('epsilon');
    assert.equal((await httpCall(h.adminPort, 'GET', '/v1/tenants/epsilon', { token: old.token })).status, 200);
    const del = await api.call('DELETE', '/v1/tenants/epsilon');
    assert.equal(del.status, 204);
    assert.equal(del.text, '');
    assertError(await api.call('DELETE', '/v1/tenants/epsilon'), 404, 'a second delete');
    assertError(await api.call('GET', '/v1/tenants/epsilon'), 404, 'gone');
    assertError(await httpCall(h.adminPort, 'GET', '/v1/tenants/epsilon', { token: old.token }), 401, "a deleted tenant's token");
    const again = await create('epsilon', old.port);
    assert.equal(again.port, old.port, 'the port is free again');
    assert.notEqual(again.token, old.token);
    assertError(await httpCall(h.adminPort, 'GET', '/v1/tenants/epsilon', { token: old.token }), 401, 'the old token does not reach the new tenant');
    assert.equal((await httpCall(h.adminPort, 'GET', '/v1/tenants/epsilon', { token: again.token })).status, 200);
    assert.equal((await api.call('GET', '/v1/tenants/epsilon')).json.version, null, 'a new tenant starts without a router');
  });
});
