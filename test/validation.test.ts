/**
 * Every invalid decision shape closes its client with a logged reason, and the proxy keeps
 * serving. Each case is a router-side expression, picked by what the client sends.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { exchange, startEchoBackend, startProxy, type TestProxy, type TestServer } from './helpers.js';

/** name → [expression the router returns, reason, text the logged detail must contain] */
const invalid: Record<string, [string, string, string]> = {
  undefined: ['undefined', 'router_invalid', 'got undefined'],
  null: ['null', 'router_invalid', 'got null'],
  string: ["'127.0.0.1:1'", 'router_invalid', 'got string'],
  number: ['42', 'router_invalid', 'got number'],
  true: ['true', 'router_invalid', 'got boolean'],
  array: ['[{ noop: true }]', 'router_invalid', 'not an array'],
  function: ['() => ({ noop: true })', 'router_invalid', 'got function'],
  empty: ['({})', 'router_invalid', 'none of remote, noop, close'],
  twoKinds: ["({ remote: '127.0.0.1:1', noop: true })", 'router_invalid', 'more than one'],
  threeKinds: ["({ remote: '127.0.0.1:1', noop: true, close: true })", 'router_invalid', 'more than one'],
  unknownKey: ['({ noop: true, extra: 1 })', 'router_invalid', 'unknown key "extra"'],
  closeWithReply: ["({ close: true, reply: 'x' })", 'router_invalid', 'unknown key "reply"'],
  noopWithData: ["({ noop: true, data: 'x' })", 'router_invalid', 'unknown key "data"'],
  noopOne: ['({ noop: 1 })', 'router_invalid', 'noop must be true'],
  noopFalse: ['({ noop: false })', 'router_invalid', 'noop must be true'],
  noopString: ["({ noop: 'true' })", 'router_invalid', 'noop must be true'],
  closeOne: ['({ close: 1 })', 'router_invalid', 'close must be true or a string'],
  closeFalse: ['({ close: false })', 'router_invalid', 'close must be true or a string'],
  closeNull: ['({ close: null })', 'router_invalid', 'close must be true or a string'],
  remoteEmpty: ["({ remote: '' })", 'router_invalid', 'is not host:port'],
  remoteNoPort: ["({ remote: 'localhost' })", 'router_invalid', 'is not host:port'],
  remotePortZero: ["({ remote: '127.0.0.1:0' })", 'router_invalid', 'out of range'],
  remotePortBig: ["({ remote: '127.0.0.1:65536' })", 'router_invalid', 'out of range'],
  remotePortSign: ["({ remote: '127.0.0.1:+80' })", 'router_invalid', 'not a port number'],
  remotePortFraction: ["({ remote: '127.0.0.1:80.5' })", 'router_invalid', 'not a port number'],
  remoteV6Bare: ["({ remote: '::1:80' })", 'router_invalid', 'needs brackets'],
  remoteV6Bad: ["({ remote: '[not-v6]:80' })", 'router_invalid', 'not an IPv6 address'],
  remoteBadHost: ["({ remote: 'bad host:80' })", 'router_invalid', 'not a valid host name'],
  remoteNumber: ['({ remote: 80 })', 'router_invalid', 'remote must be'],
  remoteObject: ["({ remote: { host: '127.0.0.1', port: 1 } })", 'router_invalid', 'got an object'],
  remoteListEmpty: ['({ remote: [] })', 'router_invalid', '1 to 16'],
  remoteList17: ["({ remote: Array.from({ length: 17 }, () => '127.0.0.1:1') })", 'router_invalid', 'more than 16'],
  remoteListNumber: ['({ remote: [80] })', 'router_invalid', 'must be a string'],
  remoteListHole: ["({ remote: [, '127.0.0.1:1'] })", 'router_invalid', 'missing'],
  remoteTooLong: ["({ remote: 'a'.repeat(300) + ':80' })", 'router_invalid', 'longer than 262'],
  dataNumber: ["({ remote: '127.0.0.1:1', data: 5 })", 'router_invalid', 'data must be a string'],
  replyUnicode: ["({ noop: true, reply: '\\u0100' })", 'router_invalid', 'above U+00FF'],
  closeUnicode: ["({ close: 'caf\\u00e9 \\u2603' })", 'router_invalid', 'above U+00FF'],
  closeHuge: ["({ close: 'x'.repeat(65537) })", 'router_invalid', 'longer than 65536'],
  dataHuge: ["({ remote: '127.0.0.1:1', data: 'x'.repeat(65537) })", 'router_invalid', 'longer than 65536'],
  timeoutZero: ["({ remote: '127.0.0.1:1', connectTimeout: 0 })", 'router_invalid', 'connectTimeout must be'],
  timeoutNegative: ["({ remote: '127.0.0.1:1', inactivityTimeout: -1 })", 'router_invalid', 'inactivityTimeout must be'],
  timeoutInfinite: ["({ remote: '127.0.0.1:1', connectTimeout: Infinity })", 'router_invalid', 'finite number'],
  timeoutNaN: ["({ remote: '127.0.0.1:1', connectTimeout: NaN })", 'router_invalid', 'finite number'],
  timeoutString: ["({ remote: '127.0.0.1:1', connectTimeout: '5' })", 'router_invalid', 'connectTimeout must be'],
  timeoutBigInt: ["({ remote: '127.0.0.1:1', connectTimeout: 5n })", 'router_invalid', 'got bigint'],
  proxyProtocol3: ["({ remote: '127.0.0.1:1', proxyProtocol: 3 })", 'router_invalid', 'proxyProtocol must be 1 or 2'],
  proxyProtocolString: ["({ remote: '127.0.0.1:1', proxyProtocol: '1' })", 'router_invalid', 'proxyProtocol must be 1 or 2'],
  proxyProtocolTrue: ["({ remote: '127.0.0.1:1', proxyProtocol: true })", 'router_invalid', 'proxyProtocol must be 1 or 2'],
  getter: ["({ get remote() { return '127.0.0.1:1'; } })", 'router_invalid', 'getter or setter'],
  setter: ["({ noop: true, set reply(v) {} })", 'router_invalid', 'getter or setter'],
  proxy: ['new Proxy({ noop: true }, {})', 'router_invalid', 'Proxy'],
  proxyTraps: [
    "new Proxy({}, { ownKeys: () => ['noop'], getOwnPropertyDescriptor: () => ({ value: true, enumerable: true, configurable: true }) })",
    'router_invalid',
    'Proxy',
  ],
  proxyRemoteList: ["({ remote: new Proxy(['127.0.0.1:1'], {}) })", 'router_invalid', 'got an object'],
  classInstance: ['new (class { constructor() { this.noop = true; } })()', 'router_invalid', 'plain object'],
  boxedDecision: ["new String('x')", 'router_invalid', 'plain object'],
  boxedValue: ["({ close: new String('bye') })", 'router_invalid', 'got an object'],
  promise: ['Promise.resolve({ noop: true })', 'router_invalid', 'plain object'],
  asyncResult: ['(async () => ({ noop: true }))()', 'router_invalid', 'plain object'],
  thenable: ['({ noop: true, then(resolve) { resolve({ close: true }); } })', 'router_invalid', 'got function'],
  symbolKey: ["({ noop: true, [Symbol('x')]: 1 })", 'router_invalid', 'symbol key'],
  inherited: ['Object.create({ noop: true })', 'router_invalid', 'plain object'],
  protoKey: ['JSON.parse(\'{"noop":true,"__proto__":"x"}\')', 'router_invalid', 'unknown key "__proto__"'],
  protoKeyObject: ['JSON.parse(\'{"noop":true,"__proto__":{"x":1}}\')', 'router_invalid', 'must be a plain value'],
  undefinedValue: ['({ noop: true, reply: undefined })', 'router_invalid', 'is undefined'],
  tooManyKeys: ['Object.fromEntries(Array.from({ length: 20 }, (_, i) => ["k" + i, 1]))', 'router_invalid', 'more than 16 keys'],
  accessorInList: ["({ remote: Object.defineProperty(['127.0.0.1:1'], 0, { get: () => '127.0.0.1:2', enumerable: true }) })", 'router_invalid', 'accessor'],
  throws: ["(() => { throw new TypeError('nope'); })()", 'router_throw', 'TypeError: nope'],
  throwsString: ["(() => { throw 'plain string'; })()", 'router_throw', 'plain string'],
  throwsObject: ['(() => { throw { code: 1 }; })()', 'router_throw', 'Error'],
  throwsNull: ['(() => { throw null; })()', 'router_throw', 'a thrown null'],
  getterThrows: ["({ get remote() { throw new Error('from a getter'); } })", 'router_invalid', 'getter or setter'],
  proxyTrapThrows: ["new Proxy({}, { ownKeys() { throw new Error('trap'); } })", 'router_invalid', 'Proxy'],
};

/** name → [expression, what the client must receive] for unusual but valid decisions. */
const valid: Record<string, [string, string]> = {
  nullPrototype: ["Object.assign(Object.create(null), { close: 'np' })", 'np'],
  frozen: ["Object.freeze({ close: 'frozen' })", 'frozen'],
  nonEnumerableIgnored: ["Object.defineProperty({ close: 'ne' }, 'extra', { value: 1, enumerable: false })", 'ne'],
  latin1: ["({ close: '\\u00ff\\u0000\\u0080' })", '\u00ff\u0000\u0080'],
};

function routerSource(echoPort: number): string {
  const cases = [...Object.entries(invalid).map(([k, [e]]) => [k, e]), ...Object.entries(valid).map(([k, [e]]) => [k, e])];
  return `
    const cases = {
      ${cases.map(([k, e]) => `${JSON.stringify(k)}: () => ${e},`).join('\n      ')}
    };
    proxy((data) => {
      if (data === 'ok') return { remote: '127.0.0.1:${echoPort}' };
      return Object.hasOwn(cases, data) ? cases[data]() : { close: 'unknown case' };
    });`;
}

describe('decision validation through the proxy', () => {
  let echo: TestServer;
  let proxy: TestProxy;

  before(async () => {
    echo = await startEchoBackend();
    proxy = await startProxy(routerSource(echo.port));
  });
  after(async () => {
    await proxy.close();
    await echo.close();
  });

  for (const [name, [, reason, detail]] of Object.entries(invalid)) {
    it(`rejects ${name}: ${reason}, "${detail}"`, async () => {
      const result = await exchange(proxy.port, [name]);
      assert.equal(result.data, '', 'the client gets nothing but EOF');
      assert.equal(result.clean, true);
      const rejected = await proxy.log.waitFor((r) => r.msg === 'connection rejected' && r.client === result.client);
      assert.equal(rejected.reason, reason);
      assert.ok(String(rejected.detail).includes(detail), `detail "${String(rejected.detail)}" should contain "${detail}"`);
      assert.equal(rejected.tenant, 'test');
      const closed = await proxy.log.waitFor((r) => r.msg === 'connection closed' && r.client === result.client);
      assert.equal(closed.decision, 'error');
      assert.equal(closed.reason, reason);
    });
  }

  for (const [name, [, expected]] of Object.entries(valid)) {
    it(`accepts ${name}`, async () => {
      const result = await exchange(proxy.port, [name]);
      assert.equal(result.data, expected);
    });
  }

  it('keeps serving after every invalid decision', async () => {
    assert.equal((await exchange(proxy.port, ['ok'])).data, `${echo.port}:ok`);
    assert.equal(proxy.listener.stats.rejections.get('router_invalid'), Object.values(invalid).filter(([, r]) => r === 'router_invalid').length);
  });
});
