/**
 * ProxyMachine's own suite (spec/proxymachine_spec.rb and its router), ported: two echo
 * backends answering `<port>:<data>`, and a router that picks an outcome by the first bytes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { exchange, startEchoBackend, startProxy, startServer, type TestProxy, type TestServer } from './helpers.js';

describe('ProxyMachine parity', () => {
  let a: TestServer;
  let b: TestServer;
  let refused: number;
  let proxy: TestProxy;

  before(async () => {
    a = await startEchoBackend();
    b = await startEchoBackend();
    const gone = await startServer(() => undefined);
    refused = gone.port;
    await gone.close();
    proxy = await startProxy(
      `
      proxyConnectError((remote) => console.log('connect error for ' + remote));
      proxyInactivityError((remote) => console.log('inactivity error for ' + remote));
      proxy((data) => {
        if (data === 'a') return { remote: '127.0.0.1:${a.port}' };
        if (data === 'b') return { remote: '127.0.0.1:${b.port}' };
        if (data === 'c') return { remote: '127.0.0.1:${a.port}', data: 'ccc' };
        if (data === 'd') return { remote: '127.0.0.1:${b.port}', data: 'ddd', reply: 'g' };
        if (data === 'e' + 'e'.repeat(2048)) return { remote: '127.0.0.1:${a.port}' };
        if (data.startsWith('e')) return { noop: true };
        if (data === 'f') return { close: true };
        if (data === 'g') return { close: 'ggg' };
        if (data === 'connect reject') return { remote: '127.0.0.1:${refused}' };
        if (data === 'inactivity') return { remote: '127.0.0.1:${a.port}', data: 'sleep 3', inactivityTimeout: 0.2 };
        return { close: true };
      });`,
      { limits: { connectTries: 3, connectRetryDelayMs: 10 } },
    );
  });
  after(async () => {
    await proxy.close();
    await a.close();
    await b.close();
  });

  it('handles connection closing', async () => {
    const r = await exchange(proxy.port, ['f']);
    assert.equal(r.data, '');
    assert.equal(r.clean, true);
  });

  it('handles rewrite routing', async () => {
    assert.equal((await exchange(proxy.port, ['a'])).data, `${a.port}:a`);
    assert.equal((await exchange(proxy.port, ['b'])).data, `${b.port}:b`);
  });

  it('handles rewrite routing with data', async () => {
    assert.equal((await exchange(proxy.port, ['c'])).data, `${a.port}:ccc`);
  });

  it('handles rewrite routing with data and reply', async () => {
    assert.equal((await exchange(proxy.port, ['d'])).data, `g${b.port}:ddd`);
  });

  it('handles noop, then more data', async () => {
    const data = 'e'.repeat(2048);
    assert.equal((await exchange(proxy.port, [data, 'e'])).data, `${a.port}:${data}e`);
  });

  it('closes with a reply', async () => {
    const r = await exchange(proxy.port, ['g']);
    assert.equal(r.data, 'ggg');
    assert.equal(r.clean, true);
  });

  it('runs the connect error hook and sends EOF when the backend refuses', async () => {
    const result = await exchange(proxy.port, ['connect reject']);
    assert.equal(result.data, '');
    assert.equal(result.clean, true);
    const line = await proxy.log.waitFor((r) => r.source === 'router' && r.msg === `connect error for 127.0.0.1:${refused}`);
    assert.equal(line.tenant, 'test');
    const closed = await proxy.log.waitFor((r) => r.msg === 'connection closed' && r.reason === 'connect_failed');
    assert.equal(closed.backend, `127.0.0.1:${refused}`);
  });

  it('runs the inactivity hook when the relay goes quiet', async () => {
    const slow = await startServer(() => undefined); // accepts and never answers
    const p = await startProxy(
      `proxyInactivityError((remote) => console.log('inactive: ' + remote));
       proxy(() => ({ remote: '127.0.0.1:${slow.port}', inactivityTimeout: 0.1 }));`,
    );
    try {
      const result = await exchange(p.port, ['hello']);
      assert.equal(result.data, '');
      await p.log.waitFor((r) => r.msg === `inactive: 127.0.0.1:${slow.port}`);
      const closed = await p.log.closed();
      assert.equal(closed.reason, 'inactivity_timeout');
    } finally {
      await p.close();
      await slow.close();
    }
  });

  it('does not run the inactivity hook when the client closes first', async () => {
    const before = proxy.log.records.filter((r) => r.source === 'router').length;
    const result = await exchange(proxy.port, ['a']);
    assert.equal(result.data, `${a.port}:a`);
    const inactive = await startProxy(
      `proxyInactivityError(() => console.log('inactive'));
       proxy(() => ({ remote: '127.0.0.1:${b.port}', inactivityTimeout: 30 }));`,
    );
    try {
      assert.equal((await exchange(inactive.port, ['x'])).data, `${b.port}:x`);
      await inactive.log.closed();
      assert.equal(inactive.log.records.filter((r) => r.msg === 'inactive').length, 0);
    } finally {
      await inactive.close();
    }
    assert.equal(proxy.log.records.filter((r) => r.source === 'router').length, before);
  });
});
