/**
 * Hostile routers: each misbehaviour closes only its own client with a logged reason, the
 * router (or a fresh isolate of it) serves the next connection, and nothing of the host is
 * reachable from inside.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { exchange, startEchoBackend, startProxy, type TestServer } from './helpers.js';

/** The router runs `hostile` on data "bad" and routes to the echo backend on anything else. */
function hostileRouter(hostile: string, echoPort: number): string {
  return `proxy((data) => {
    if (data === 'bad') { ${hostile} }
    return { remote: '127.0.0.1:${echoPort}' };
  });`;
}

/** Memory and stack cases get a generous time limit so that the limit under test is the one hit. */
const cases: Record<string, { code: string; reason: string; detail?: string; timeoutMs?: number }> = {
  'infinite loop': { code: 'for (;;) {}', reason: 'router_timeout' },
  'catastrophic regex backtracking': { code: "/^(a+)+$/.test('a'.repeat(40) + 'b');", reason: 'router_timeout' },
  'deep recursion': { code: 'const f = (n) => f(n + 1) + 1; f(0);', reason: 'router_throw', detail: 'RangeError', timeoutMs: 5000 },
  'memory bomb': { code: 'const a = []; for (let i = 0; ; i++) a.push(new Array(100000).fill(i));', reason: 'router_memory', timeoutMs: 5000 },
  'string memory bomb': { code: "let s = 'x'; const keep = []; for (;;) { s = s + s; keep.push(s.slice(1)); }", reason: 'router_memory', timeoutMs: 5000 },
  throw: { code: "throw new Error('boom');", reason: 'router_throw', detail: 'Error: boom' },
  'throw with a looping message getter': { code: 'throw { get message() { for (;;) {} } };', reason: 'router_throw' },
  'throw a Proxy': { code: 'throw new Proxy({}, { get() { for (;;) {} }, getOwnPropertyDescriptor() { for (;;) {} } });', reason: 'router_timeout' },
  'decision with a looping getter': { code: 'return { get remote() { for (;;) {} } };', reason: 'router_invalid', detail: 'getter' },
  'decision Proxy with looping traps': { code: 'return new Proxy({}, { ownKeys() { for (;;) {} }, getPrototypeOf() { for (;;) {} } });', reason: 'router_invalid', detail: 'Proxy' },
  'looping microtask after returning': { code: 'Promise.resolve().then(() => { for (;;) {} }); return { noop: true };', reason: 'router_timeout' },
  'unhandled rejection with a looping getter': {
    code: 'Promise.reject({ get message() { for (;;) {} } }); return { noop: true };',
    reason: 'router_timeout',
    detail: 'stopped responding|hung past its time limit',
  },
};

describe('containment', () => {
  let echo: TestServer;
  before(async () => {
    echo = await startEchoBackend();
  });
  after(() => echo.close());

  for (const [name, { code, reason, detail, timeoutMs = 50 }] of Object.entries(cases)) {
    it(`${name}: closes that client (${reason}), then routes the next`, async () => {
      const proxy = await startProxy(hostileRouter(code, echo.port), { limits: { routerTimeoutMs: timeoutMs, memoryMb: 16 } });
      try {
        const bad = await exchange(proxy.port, ['bad']);
        assert.equal(bad.data, '');
        const rejected = await proxy.log.waitFor((r) => r.msg === 'connection rejected' && r.client === bad.client);
        assert.equal(rejected.reason, reason, String(rejected.detail));
        if (detail !== undefined) assert.match(String(rejected.detail), new RegExp(detail));
        const good = await exchange(proxy.port, ['good']);
        assert.equal(good.data, `${echo.port}:good`);
      } finally {
        await proxy.close();
      }
    });
  }

  it('a hostile router does not disturb another tenant', async () => {
    const hostile = await startProxy(hostileRouter('for (;;) {}', echo.port), { tenant: 'hostile' });
    const good = await startProxy(hostileRouter('', echo.port), { tenant: 'good' });
    try {
      const attacks = Array.from({ length: 8 }, () => exchange(hostile.port, ['bad']));
      const served = await Promise.all(Array.from({ length: 20 }, (_, i) => exchange(good.port, [`req${i}`])));
      served.forEach((r, i) => assert.equal(r.data, `${echo.port}:req${i}`));
      for (const r of await Promise.all(attacks)) assert.equal(r.data, '');
      assert.equal(good.log.find('connection rejected').length, 0);
      assert.equal(hostile.listener.stats.rejections.get('router_timeout'), 8);
    } finally {
      await hostile.close();
      await good.close();
    }
  });
});

describe('nothing of the host is reachable', () => {
  const probes: Record<string, string> = {
    process: 'typeof process',
    require: 'typeof require',
    module: 'typeof module',
    globalProcess: 'typeof globalThis.process',
    Buffer: 'typeof Buffer',
    setTimeout: 'typeof setTimeout',
    setInterval: 'typeof setInterval',
    queueMicrotask: 'typeof fetch',
    WebAssembly: 'typeof WebAssembly',
    SharedArrayBuffer: 'typeof SharedArrayBuffer',
    Atomics: 'typeof Atomics',
    ivm: "typeof globalThis.ivm + typeof globalThis._ivm + typeof globalThis.__switchyard",
    constructorEscape: "typeof (function () {}).constructor.constructor('return this.process')()",
    functionConstructor: "(function () {}).constructor('return typeof require + typeof process')() === 'undefinedundefined' ? undefined : 'reached'",
    prepareStackTrace: "(() => { try { Error.prepareStackTrace = () => 'hooked'; } catch (e) {} return typeof Error.prepareStackTrace; })()",
    consoleHostless: 'typeof console.log.constructor.constructor("return process")()',
  };

  it('sees no process, require, timers, host objects or unmetered memory', async () => {
    const proxy = await startProxy(`
      const results = {};
      ${Object.entries(probes)
        .map(([k, e]) => `try { results[${JSON.stringify(k)}] = ${e}; } catch (err) { results[${JSON.stringify(k)}] = 'threw ' + err.name; }`)
        .join('\n      ')}
      proxy(() => ({ close: JSON.stringify(results) }));`);
    try {
      const result = JSON.parse((await exchange(proxy.port, ['x'])).data) as Record<string, string>;
      for (const key of Object.keys(probes)) {
        if (key === 'ivm') assert.equal(result[key], 'undefinedundefinedundefined', key);
        else assert.match(String(result[key]), /^(undefined|threw \w+)$/, `${key}: ${result[key]}`);
      }
    } finally {
      await proxy.close();
    }
  });

  it('cannot import modules', async () => {
    const proxy = await startProxy(`
      let imported = 'pending';
      import('fs').then((m) => { imported = 'loaded ' + typeof m; }, (e) => { imported = 'rejected: ' + e.message; });
      proxy(() => ({ close: imported }));`);
    try {
      assert.match((await exchange(proxy.port, ['x'])).data, /^rejected: /);
    } finally {
      await proxy.close();
    }
  });

  it('caps console lines per call and carries the tenant on each', async () => {
    const proxy = await startProxy(`proxy(() => { for (let i = 0; i < 10000; i++) console.log('line', i); return { close: 'done' }; });`, {
      tenant: 'chatty',
    });
    try {
      assert.equal((await exchange(proxy.port, ['x'])).data, 'done');
      await proxy.log.closed();
      const lines = proxy.log.records.filter((r) => r.source === 'router' && typeof r.msg === 'string' && r.msg.startsWith('line'));
      assert.equal(lines.length, 20);
      assert.ok(lines.every((r) => r.tenant === 'chatty'));
    } finally {
      await proxy.close();
    }
  });
});
