/**
 * Fuzzing the decision decoder: the prelude's unwrapping inside the isolate and the host's
 * validation. Whatever a router returns, the answer is a well-formed Decision or a RouterError
 * with a known reason, never anything else; and for plain data the sandbox and the host agree.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { pino } from 'pino';
import { CloseReason, InvalidDecisionError, RouterError } from '../src/errors.js';
import { type Decision, validateDecision } from '../src/routing/decision.js';
import { RouterConsole } from '../src/sandbox/console.js';
import { IsolateRouter } from '../src/sandbox/isolate-router.js';

const conn = { tenant: 'fuzz', remoteAddress: '127.0.0.1', remotePort: 1, localAddress: '127.0.0.1', localPort: 2 };

/** Values shaped like decisions: the contract's keys and some others, with values of every kind. */
const value = fc.oneof(
  fc.string({ maxLength: 30 }),
  fc.constantFrom('127.0.0.1:80', '[::1]:443', 'example.com:9418', 'h:0', 'h:65536', ':80', 'é:1', 'x\u0100'),
  fc.double(),
  fc.integer({ min: -2, max: 3 }),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.constantFrom('127.0.0.1:1', 'a.b:2', 'bad', ''), { maxLength: 18 }),
);
const key = fc.constantFrom('remote', 'noop', 'close', 'data', 'reply', 'connectTimeout', 'inactivityTimeout', 'proxyProtocol', 'other', '__proto__', 'constructor');
const decisionLike = fc.dictionary(key, value, { maxKeys: 5 });

function conforms(d: Decision): void {
  switch (d.kind) {
    case 'remote':
      assert.ok(d.remotes.length >= 1 && d.remotes.length <= 16);
      for (const r of d.remotes) assert.ok(Number.isInteger(r.port) && r.port >= 1 && r.port <= 65535 && r.host.length > 0);
      for (const s of [d.data, d.reply]) if (s !== undefined) assert.ok(typeof s === 'string' && !/[^\u0000-\u00ff]/.test(s));
      for (const t of [d.connectTimeoutMs, d.inactivityTimeoutMs]) if (t !== undefined) assert.ok(Number.isFinite(t) && t > 0);
      if (d.proxyProtocol !== undefined) assert.ok(d.proxyProtocol === 1 || d.proxyProtocol === 2);
      return;
    case 'noop':
      if (d.reply !== undefined) assert.equal(typeof d.reply, 'string');
      return;
    case 'close':
      if (d.reply !== undefined) assert.equal(typeof d.reply, 'string');
      return;
  }
}

function hostOutcome(v: unknown): Decision | 'invalid' {
  try {
    return validateDecision(v);
  } catch (err) {
    assert.ok(err instanceof InvalidDecisionError, String(err));
    return 'invalid';
  }
}

function load(source: string): Promise<IsolateRouter> {
  return IsolateRouter.load({ source, filename: 'fuzz.js', routerTimeoutMs: 1000, memoryMb: 64, console: new RouterConsole(pino({ level: 'silent' }), 'fuzz') });
}

describe('fuzzing the decision decoder', () => {
  /** Returns the value of a JS expression (as fast-check prints values). */
  let evaluating: IsolateRouter;
  /** Returns parsed JSON, with JSON's semantics (an own "__proto__" key stays a key). */
  let parsing: IsolateRouter;
  before(async () => {
    evaluating = await load('proxy((data) => (0, eval)("(" + data + ")"));');
    parsing = await load('proxy((data) => JSON.parse(data));');
  });
  after(() => {
    evaluating.dispose();
    parsing.dispose();
  });

  it('host validation: anything is a conforming Decision or an InvalidDecisionError', () => {
    fc.assert(
      fc.property(fc.oneof(fc.anything(), decisionLike), (v) => {
        const outcome = hostOutcome(v);
        if (outcome !== 'invalid') conforms(outcome);
      }),
      { numRuns: 3000 },
    );
  });

  it('sandbox and host agree on plain data', async () => {
    await fc.assert(
      fc.asyncProperty(decisionLike, async (v) => {
        const expected = hostOutcome(JSON.parse(JSON.stringify(v)) as unknown);
        let actual: Decision | 'invalid';
        try {
          actual = await parsing.route(JSON.stringify(v), conn);
        } catch (err) {
          assert.ok(err instanceof RouterError, String(err));
          assert.equal(err.reason, CloseReason.routerInvalid, err.message);
          actual = 'invalid';
        }
        assert.deepEqual(actual, expected);
      }),
      { numRuns: 400 },
    );
  });

  it('sandbox: any value a router can build is a conforming Decision or a RouterError', async () => {
    const reasons = new Set<string>([CloseReason.routerInvalid, CloseReason.routerThrow]);
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.anything({ withNullPrototype: true, withBoxedValues: true, withSparseArray: true, withMap: true, withSet: true, withTypedArray: true }), decisionLike), async (v) => {
        try {
          conforms(await evaluating.route(fc.stringify(v), conn));
        } catch (err) {
          assert.ok(err instanceof RouterError, String(err));
          assert.ok(reasons.has(err.reason), `${err.reason}: ${err.message}`);
        }
      }),
      { numRuns: 400 },
    );
  });
});
