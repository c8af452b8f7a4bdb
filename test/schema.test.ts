/** The declared shapes of admin API bodies: each wrong body is refused naming the field. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { check, schemas } from '../src/admin/schema.js';

describe('admin body schemas', () => {
  it('POST /v1/tenants: a name, and an integer port if any; nothing else', () => {
    assert.deepEqual(check(schemas.createTenant, { name: 'acme' }), { name: 'acme' });
    assert.deepEqual(check(schemas.createTenant, { name: 'acme', port: 20001 }), { name: 'acme', port: 20001 });
    for (const [body, reason] of [
      [[], /the body must be a JSON object/],
      [null, /the body must be a JSON object/],
      ['acme', /the body must be a JSON object/],
      [{}, /^name is required$/],
      [{ name: 5 }, /^name must be a string$/],
      [{ name: 'a', port: 1.5 }, /^port must be an integer$/],
      [{ name: 'a', port: '20001' }, /^port must be an integer$/],
      [{ name: 'a', extra: 1 }, /^unknown field "extra"; known: name, port$/],
    ] as const) {
      assert.match(String(check(schemas.createTenant, body)), reason, JSON.stringify(body));
    }
  });

  it('POST …/route: exactly one of data (latin1) or base64', () => {
    assert.deepEqual(check(schemas.route, { data: 'GET /' }), { data: 'GET /' });
    assert.deepEqual(check(schemas.route, { base64: 'R0VUIC8=' }), { base64: 'R0VUIC8=' });
    for (const [body, reason] of [
      [{}, /exactly one of "data" or "base64"/],
      [{ data: 'a', base64: 'YQ==' }, /exactly one of "data" or "base64"/],
      [{ data: 'é€' }, /^data has a character above U\+00FF; send bytes as base64$/],
      [{ base64: '***' }, /^base64 must be a base64 string$/],
      [{ data: 1 }, /^data must be a string$/],
    ] as const) {
      assert.match(String(check(schemas.route, body)), reason, JSON.stringify(body));
    }
  });

  it('a table is any JSON object', () => {
    assert.deepEqual(check(schemas.table, { any: { thing: [1] } }), { any: { thing: [1] } });
    assert.match(String(check(schemas.table, [1], 'the table')), /^the table must be a JSON object$/);
  });
});
