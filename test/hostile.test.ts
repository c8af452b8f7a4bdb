/**
 * The hostile-router suite: scripts an attacker would upload, each with the safe outcome it
 * must get. Escape attempts aim at a canary backend that must never hear from any of them;
 * bombs must close only their own client; after each, the same router serves a good
 * connection (from a fresh isolate or a restarted worker if need be). All tenants share one
 * worker pool, as in service.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { SandboxPool } from '../src/sandbox/pool.js';
import { CapturedLog, exchange, startEchoBackend, startProxy, startServer, type TestServer } from './helpers.js';

type Outcome =
  /** the "bad" connection is closed with one of these reasons */
  | { rejected: string[] }
  /** the "bad" connection receives exactly this, and the canary nothing */
  | { receives: string | RegExp }
  /** the script is refused at load with this code */
  | { load: string };

interface Case {
  /** Top-level code of the script (runs at load). */
  top?: string;
  /** Body run when the client sends "bad"; CANARY and ECHO are the canary's and the echo's host:port. */
  bad?: string;
  /** A whole script instead of the template. */
  script?: string;
  outcome: Outcome;
  timeoutMs?: number;
  memoryMb?: number;
}

const timeout = ['router_timeout'];
const thrown = ['router_throw'];
const invalid = ['router_invalid'];
/** A heap bomb is stopped by the isolate's limit, or, when V8 gives up inside the worker, by the worker's death. */
const memory = ['router_memory', 'router_throw', 'router_unavailable'];

const cases: Record<string, Case> = {
  // --- escape attempts: nothing of the host is reachable -------------------------------------
  'require net': { bad: "require('net').connect(CANARY_PORT, '127.0.0.1');", outcome: { rejected: thrown } },
  'process.binding': { bad: "process.binding('tcp_wrap');", outcome: { rejected: thrown } },
  'Function constructor to process': { bad: "(function () {}).constructor('return process')().mainModule.require('net');", outcome: { rejected: thrown } },
  'console method constructor': { bad: "console.log.constructor('return process')().exit(1);", outcome: { rejected: thrown } },
  'proxy function constructor': { bad: "proxy.constructor('return process')().exit(1);", outcome: { rejected: thrown } },
  'dynamic import': {
    bad: "import('net').then((net) => net.connect(CANARY_PORT, '127.0.0.1')); return { close: 'tried' };",
    outcome: { rejected: thrown },
  },
  'prelude handle': { bad: 'return globalThis.__switchyard.route("x");', outcome: { rejected: thrown } },
  'prepareStackTrace hook': {
    bad: "'use strict'; Error.prepareStackTrace = (e, frames) => frames.map((f) => f.getThis()); return { close: String(new Error().stack) };",
    outcome: { receives: /^Error/ },
  },
  'stack frames getThis': {
    bad: 'const e = {}; Error.captureStackTrace(e); return { close: typeof e.stack };',
    outcome: { receives: 'string' },
  },
  'WebAssembly memory': { bad: 'new WebAssembly.Memory({ initial: 65536 });', outcome: { rejected: thrown } },
  SharedArrayBuffer: { bad: 'new SharedArrayBuffer(1024);', outcome: { rejected: thrown } },
  'Atomics.wait': { bad: 'Atomics.wait(new Int32Array(4), 0, 0);', outcome: { rejected: thrown } },
  'timers': { bad: "setTimeout(() => {}, 1); return { close: 'no' };", outcome: { rejected: thrown } },
  'fetch': { bad: "fetch('http://CANARY');", outcome: { rejected: thrown } },
  'getter switching backends (TOCTOU)': {
    bad: "let n = 0; return { get remote() { return n++ === 0 ? 'ECHO' : 'CANARY'; } };",
    outcome: { rejected: invalid },
  },
  'Proxy switching backends': {
    bad: "let n = 0; return new Proxy({ remote: 'ECHO' }, { get: () => (n++ === 0 ? 'ECHO' : 'CANARY') });",
    outcome: { rejected: invalid },
  },
  'toJSON on the decision': { bad: "return { remote: 'ECHO', toJSON() { return { remote: 'CANARY' }; } };", outcome: { rejected: invalid } },
  'Object.prototype.toJSON pollution': {
    bad: "Object.prototype.toJSON = function () { return { remote: 'CANARY' }; }; return { close: 'polluted' };",
    outcome: { receives: 'polluted' },
  },
  'inherited remote': { bad: "Object.prototype.remote = 'CANARY'; return { close: 'own keys only' };", outcome: { receives: 'own keys only' } },
  'JSON.stringify replaced': {
    bad: "JSON.stringify = () => '{\"remote\":\"CANARY\"}'; return { close: 'intrinsics captured' };",
    outcome: { receives: 'intrinsics captured' },
  },
  'Reflect and Object replaced': {
    bad: "Reflect.ownKeys = () => ['remote']; Reflect.getOwnPropertyDescriptor = () => ({ value: 'CANARY', enumerable: true }); Object.getPrototypeOf = () => null; return { close: 'still plain' };",
    outcome: { receives: 'still plain' },
  },
  'Symbol.toPrimitive remote': { bad: "return { remote: { [Symbol.toPrimitive]: () => 'CANARY' } };", outcome: { rejected: invalid } },
  'boxed string remote': { bad: "return { remote: new String('CANARY') };", outcome: { rejected: invalid } },
  'array subclass remote': { bad: "class A extends Array {} const a = new A(); a.push('CANARY'); return { remote: a };", outcome: { rejected: invalid } },
  'thenable decision': { bad: "return { then(resolve) { resolve({ remote: 'CANARY' }); } };", outcome: { rejected: invalid } },
  'Promise decision': { bad: "return Promise.resolve({ remote: 'CANARY' });", outcome: { rejected: invalid } },
  'typed array over a shrunk resizable buffer': {
    bad: 'const ab = new ArrayBuffer(8, { maxByteLength: 16 }); const v = new Uint8Array(ab); ab.resize(0); return { close: v };',
    outcome: { rejected: invalid },
  },
  '__proto__ key from JSON': { bad: 'return JSON.parse(\'{"close":"x","__proto__":"CANARY"}\');', outcome: { rejected: invalid } },

  // --- CPU ------------------------------------------------------------------------------------
  'infinite loop': { bad: 'for (;;) {}', outcome: { rejected: timeout } },
  'loop in finally': { bad: 'for (;;) { try { for (;;) {} } finally { continue; } }', outcome: { rejected: timeout } },
  'catastrophic regex': { bad: "/^(a|aa)+$/.test('a'.repeat(64) + 'b');", outcome: { rejected: timeout } },
  'regex on the buffer': { bad: "/^(\\w+\\s?)*$/.test('an attacker controls this buffer of words!'.repeat(3));", outcome: { rejected: timeout } },
  'sort with a looping comparator': { bad: '[3, 2, 1].sort(() => { for (;;) {} });', outcome: { rejected: timeout } },
  'recursive microtasks': { bad: 'const f = () => Promise.resolve().then(f); f(); return { noop: true };', outcome: { rejected: timeout } },
  'async loop': { bad: '(async () => { for (;;) await null; })(); return { noop: true };', outcome: { rejected: timeout } },
  'infinite generator spread': { bad: 'return { close: [...(function* () { for (;;) yield 1; })()].length };', outcome: { rejected: [...timeout, ...memory] } },
  'replaceAll that ignores termination': {
    bad: "'ab'.repeat(1e7).replaceAll('a', 'cc');",
    outcome: { rejected: ['router_timeout', 'router_memory', 'router_unavailable'] },
    memoryMb: 64,
  },
  'deep recursion': { bad: 'const f = (n) => f(n + 1) + 1; f(0);', outcome: { rejected: thrown }, timeoutMs: 5000 },

  // --- memory -----------------------------------------------------------------------------------
  'array bomb': { bad: 'const a = []; for (let i = 0; ; i++) a.push(new Array(100000).fill(i));', outcome: { rejected: memory }, timeoutMs: 5000 },
  'string doubling': { bad: "let s = 'x'; const keep = []; for (;;) { s += s; keep.push(s.slice(1)); }", outcome: { rejected: memory }, timeoutMs: 5000 },
  'typed array bomb': { bad: 'const a = []; for (;;) a.push(new Uint8Array(1e6));', outcome: { rejected: memory }, timeoutMs: 5000 },
  'one huge ArrayBuffer': { bad: 'new ArrayBuffer(4e9);', outcome: { rejected: memory } },
  'Map growth': { bad: 'const m = new Map(); for (let i = 0; ; i++) m.set(i, { i });', outcome: { rejected: memory }, timeoutMs: 5000 },
  // A memory case: filling 24 MB takes ~15 ms of CPU, past 50 ms of wall time on a loaded
  // machine, so it gets the memory cases' time limit and the limit under test is the heap's.
  'memory kept across calls': {
    top: 'const keep = [];',
    bad: 'keep.push(new Array(3e6).fill(1)); return { close: String(keep.length) };',
    outcome: { receives: /^\d+$/ },
    timeoutMs: 5000,
  },
  'eval of a large literal': { bad: "eval('[' + '1,'.repeat(3e6) + ']');", outcome: { rejected: [...thrown, ...timeout, ...memory] }, timeoutMs: 2000 },

  // --- malformed and huge results ----------------------------------------------------------------
  'huge close string': { bad: "return { close: 'x'.repeat(1e7) };", outcome: { rejected: invalid } },
  'huge remote': { bad: "return { remote: 'a'.repeat(1e6) + ':80' };", outcome: { rejected: invalid } },
  'a million keys': { bad: 'const o = { noop: true }; for (let i = 0; i < 1e6; i++) o["k" + i] = i; return o;', outcome: { rejected: [...invalid, ...timeout] } },
  'a million remotes': { bad: "return { remote: new Array(1e6).fill('ECHO') };", outcome: { rejected: invalid } },
  'console flood': { bad: "for (let i = 0; i < 1e5; i++) console.log('x'.repeat(1e4)); return { close: 'quiet' };", outcome: { receives: 'quiet' }, timeoutMs: 2000 },
  'throw a looping Proxy': { bad: 'throw new Proxy({}, { getOwnPropertyDescriptor() { for (;;) {} }, getPrototypeOf() { for (;;) {} } });', outcome: { rejected: timeout } },
  'throw with a looping getter': { bad: 'throw { get message() { for (;;) {} } };', outcome: { rejected: thrown } },
  'Error subclass with a looping name getter': { bad: 'class E extends Error { get name() { for (;;) {} } } throw new E("x");', outcome: { rejected: thrown } },
  'unhandled rejection with a looping getter': {
    bad: 'Promise.reject({ get message() { for (;;) {} } }); return { noop: true };',
    outcome: { rejected: ['router_timeout', 'router_unavailable'] },
  },

  // --- refused at load --------------------------------------------------------------------------
  'script over 256 KiB': { script: `// ${'x'.repeat(256 * 1024)}\nproxy(() => ({ noop: true }));`, outcome: { load: 'ERR_ROUTER_TOO_LARGE' } },
  'loops while loading': { script: 'for (;;) {}', outcome: { load: 'ERR_ROUTER_TIMEOUT' } },
  'allocates while loading': { script: 'const a = []; for (;;) a.push(new Array(1e5).fill(1));', outcome: { load: 'ERR_ROUTER_MEMORY' }, memoryMb: 16 },
  'never calls proxy': { script: 'const x = 1;', outcome: { load: 'ERR_ROUTER_NO_PROXY' } },
  'calls proxy with a string': { script: "proxy('CANARY');", outcome: { load: 'ERR_ROUTER_THROW' } },
  'syntax error': { script: 'proxy(() => {', outcome: { load: 'ERR_ROUTER_SYNTAX' } },
};

function script(c: Case, canary: number, echo: number): string {
  const source =
    c.script ??
    `${c.top ?? ''}
proxy((data, conn) => {
  if (data === 'good') return { remote: 'ECHO' };
  ${c.bad ?? ''}
});`;
  return source.replaceAll('CANARY_PORT', String(canary)).replaceAll('CANARY', `127.0.0.1:${canary}`).replaceAll('ECHO', `127.0.0.1:${echo}`);
}

describe('hostile routers', () => {
  let canary: TestServer;
  let echo: TestServer;
  let pool: SandboxPool;
  const poolLog = new CapturedLog();

  before(async () => {
    canary = await startServer(() => undefined);
    echo = await startEchoBackend();
    pool = new SandboxPool({ log: poolLog.logger, workers: 2 });
  });
  after(async () => {
    await pool.close();
    await echo.close();
    await canary.close();
  });

  it(`has at least 40 scripts`, () => {
    assert.ok(Object.keys(cases).length >= 40);
  });

  for (const [name, c] of Object.entries(cases)) {
    it(name, async () => {
      const source = script(c, canary.port, echo.port);
      const limits = { routerTimeoutMs: c.timeoutMs ?? 50, memoryMb: c.memoryMb ?? 32 };
      const tenant = name.toLowerCase().replace(/[^a-z0-9]+/g, '-').slice(0, 40);
      if ('load' in c.outcome) {
        await assert.rejects(startProxy(source, { sharedPool: pool, limits, tenant }), (err: Error & { code?: string }) => {
          assert.equal(err.code, (c.outcome as { load: string }).load, err.message);
          return true;
        });
        return;
      }
      const proxy = await startProxy(source, { sharedPool: pool, limits, tenant });
      const told = (client: string): string => proxy.log.records.filter((r) => r.client === client).map((r) => JSON.stringify(r)).join('\n');
      try {
        const bad = await exchange(proxy.port, ['bad']);
        const outcome = c.outcome;
        if ('rejected' in outcome) {
          assert.equal(bad.data, '', 'a rejected client gets nothing but EOF');
          const rejected = await proxy.log.waitFor((r) => r.msg === 'connection rejected' && r.client === bad.client, 20_000);
          assert.ok(outcome.rejected.includes(String(rejected.reason)), `reason ${String(rejected.reason)}: ${String(rejected.detail)}`);
        } else if (typeof outcome.receives === 'string') {
          assert.equal(bad.data, outcome.receives, `its log:\n${told(bad.client)}`);
        } else {
          assert.match(bad.data, outcome.receives, `its log:\n${told(bad.client)}`);
        }
        const good = await exchange(proxy.port, ['good']);
        assert.equal(good.data, `${echo.port}:good`, `the router serves the next connection; its log:\n${told(good.client)}`);
      } finally {
        await proxy.close();
      }
    });
  }

  it('the canary never heard from any of them', () => {
    assert.equal(canary.accepted.length, 0);
  });
});
