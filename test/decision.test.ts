/** Host-side validation on its own: the last line of defence, whatever the sandbox hands over. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidDecisionError } from '../src/errors.js';
import { validateDecision } from '../src/routing/decision.js';
import { formatEndpoint, parseEndpoint } from '../src/routing/endpoint.js';

describe('validateDecision', () => {
  it('accepts every shape of the contract', () => {
    assert.deepEqual(validateDecision({ remote: 'example.com:80' }), { kind: 'remote', remotes: [{ host: 'example.com', port: 80 }] });
    assert.deepEqual(validateDecision({ remote: ['10.0.0.1:1', '[::1]:2'], data: 'd', reply: 'r', connectTimeout: 0.5, inactivityTimeout: 30, proxyProtocol: 2 }), {
      kind: 'remote',
      remotes: [
        { host: '10.0.0.1', port: 1 },
        { host: '::1', port: 2 },
      ],
      data: 'd',
      reply: 'r',
      connectTimeoutMs: 500,
      inactivityTimeoutMs: 30_000,
      proxyProtocol: 2,
    });
    assert.deepEqual(validateDecision({ noop: true }), { kind: 'noop' });
    assert.deepEqual(validateDecision({ noop: true, reply: '' }), { kind: 'noop', reply: '' });
    assert.deepEqual(validateDecision({ close: true }), { kind: 'close' });
    assert.deepEqual(validateDecision({ close: 'bye' }), { kind: 'close', reply: 'bye' });
  });

  it('rejects what JSON can carry but the contract forbids', () => {
    const bad: unknown[] = [
      undefined,
      null,
      [],
      'x',
      {},
      JSON.parse('{"noop":true,"__proto__":{"remote":"a:1"}}'),
      { noop: true, constructor: 'x' },
      { remote: 'a:1', data: null },
      { remote: ['a:1', null] },
      { close: '' + '\u0100' },
      { remote: 'a:1', connectTimeout: null },
      { remote: 'a:1', connectTimeout: 1e400 },
      { remote: 'a:1', proxyProtocol: 1.0000001 },
    ];
    for (const value of bad) assert.throws(() => validateDecision(value), InvalidDecisionError, JSON.stringify(value));
  });

  it('does not let an own __proto__ key become a prototype', () => {
    const value = JSON.parse('{"close":"x","__proto__":{"noop":true}}') as object;
    assert.throws(() => validateDecision(value), /unknown key "__proto__"/);
    assert.equal(Object.getPrototypeOf({}), Object.prototype);
  });
});

describe('parseEndpoint', () => {
  it('parses names, IPv4 and bracketed IPv6', () => {
    assert.deepEqual(parseEndpoint('git.example.com:9418'), { host: 'git.example.com', port: 9418 });
    assert.deepEqual(parseEndpoint('127.0.0.1:1'), { host: '127.0.0.1', port: 1 });
    assert.deepEqual(parseEndpoint('[2001:db8::1]:65535'), { host: '2001:db8::1', port: 65535 });
    assert.equal(formatEndpoint({ host: '2001:db8::1', port: 443 }), '[2001:db8::1]:443');
  });

  it('refuses anything else with a reason', () => {
    for (const text of ['', ':80', 'host:', 'host:0', 'host:65536', 'host:08x', 'host:-1', '::1:80', '[::1]80', '[::1:80', 'a b:1', 'a/b:1', `${'a'.repeat(64)}:1`, 'host:1:2']) {
      assert.equal(typeof parseEndpoint(text), 'string', text);
    }
  });
});
