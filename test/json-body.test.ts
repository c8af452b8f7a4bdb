/** JSON request bodies: nesting past the limit is refused before JSON.parse, without recursion. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { jsonBodyDefaults, nestingDepth, parseJsonBody } from '../src/admin/json-body.js';

const nested = (depth: number, open = '[', close = ']'): string => open.repeat(depth) + close.repeat(depth);

describe('parseJsonBody', () => {
  it('parses JSON up to the depth limit, 64 by default', () => {
    assert.equal(jsonBodyDefaults.maxDepth, 64);
    assert.deepEqual(parseJsonBody('{"backends":{"a":"10.0.0.1:80"},"n":[1,2,3]}'), { ok: true, value: { backends: { a: '10.0.0.1:80' }, n: [1, 2, 3] } });
    assert.equal(parseJsonBody(nested(64)).ok, true);
    assert.equal(parseJsonBody('{"a":'.repeat(64) + '1' + '}'.repeat(64)).ok, true);
    assert.deepEqual(parseJsonBody('"text"'), { ok: true, value: 'text' });
    assert.deepEqual(parseJsonBody('3'), { ok: true, value: 3 });
  });

  it('refuses deeper bodies with a reason, including 5,000 and 1,000,000 deep', () => {
    assert.deepEqual(parseJsonBody(nested(65)), { ok: false, reason: 'JSON nested deeper than 64 levels (at character 65)' });
    assert.deepEqual(parseJsonBody('{"a":'.repeat(5000) + '1' + '}'.repeat(5000)), { ok: false, reason: 'JSON nested deeper than 64 levels (at character 321)' });
    const huge = parseJsonBody(nested(1_000_000));
    assert.equal(huge.ok, false);
    assert.deepEqual(parseJsonBody(nested(3), { maxDepth: 2 }), { ok: false, reason: 'JSON nested deeper than 2 levels (at character 3)' });
    assert.equal(parseJsonBody(nested(2), { maxDepth: 2 }).ok, true);
  });

  it('does not count brackets inside strings, escaped quotes included', () => {
    const text = JSON.stringify({ s: '[[[[{{{{', t: 'say \\"[[[[ "\\\\" {{{{' });
    assert.equal(nestingDepth(text).max, 1);
    assert.equal(parseJsonBody(text, { maxDepth: 1 }).ok, true);
    assert.equal(nestingDepth('["\\\\", [[]]]').max, 3, 'an escaped backslash ends before the quote');
  });

  it('says why a body is not JSON', () => {
    const r = parseJsonBody('{"a":');
    assert.ok(!r.ok && r.reason.startsWith('not valid JSON: '), JSON.stringify(r));
  });

  it('measures the depth JSON.stringify would recurse to, for any JSON value', () => {
    const depthOf = (v: unknown): number => (typeof v === 'object' && v !== null ? 1 + Math.max(0, ...Object.values(v).map(depthOf)) : 0);
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 8 }), (value) => {
        const text = JSON.stringify(value);
        assert.equal(nestingDepth(text).max, depthOf(value), text);
      }),
      { numRuns: 500 },
    );
  });
});
