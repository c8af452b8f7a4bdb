/**
 * routers/socks4.js (ProxyMachine's README SOCKS4 example) with real curl as the SOCKS client,
 * through the proxy to a real Node HTTP backend, plus raw clients for the edge cases.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import {
  dial,
  exchange,
  readAll,
  routerSource,
  runCommand,
  startEchoBackend,
  startProxy,
  waitForDecisions,
  type TestProxy,
  type TestServer,
} from './helpers.js';

const granted = '\0\x5a\0\0\0\0\0\0';
const rejected = '\0\x5b\0\0\0\0\0\0';

/** A SOCKS4 CONNECT request for 127.0.0.1:port. */
function request(port: number, userId = 'alice', version = 4, command = 1): Buffer {
  return Buffer.concat([Buffer.from([version, command, port >> 8, port & 255, 127, 0, 0, 1]), Buffer.from(`${userId}\0`, 'latin1')]);
}

describe('routers/socks4.js', () => {
  let web: Server;
  let webPort: number;
  let echo: TestServer;
  let proxy: TestProxy;

  before(async () => {
    web = createServer((req, res) => res.end(`web backend ${req.method} ${req.url} host=${req.headers.host ?? ''}\n`));
    web.listen(0, '127.0.0.1');
    await once(web, 'listening');
    webPort = (web.address() as AddressInfo).port;
    echo = await startEchoBackend();
    proxy = await startProxy(routerSource('socks4.js'), { tenant: 'socks4' });
  });
  after(async () => {
    await proxy.close();
    await echo.close();
    web.closeAllConnections();
    web.close();
    await once(web, 'close');
  });

  it('lets curl --socks4 reach the destination it names', async () => {
    const result = await runCommand('curl', ['-s', '-S', '--socks4', `127.0.0.1:${proxy.port}`, `http://127.0.0.1:${webPort}/through/socks`]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, `web backend GET /through/socks host=127.0.0.1:${webPort}\n`);
    const closed = await proxy.log.waitFor((r) => r.msg === 'connection closed' && r.backend === `127.0.0.1:${webPort}`);
    assert.equal(closed.decision, 'remote');
  });

  it('lets curl --socks4a name the destination by host name', async () => {
    const result = await runCommand('curl', ['-s', '-S', '--socks4a', `127.0.0.1:${proxy.port}`, `http://localhost:${webPort}/by-name`]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, `web backend GET /by-name host=localhost:${webPort}\n`);
    await proxy.log.waitFor((r) => r.msg === 'connection closed' && r.backend === `localhost:${webPort}`);
  });

  it('replies granted, and forwards only what followed the request', async () => {
    const result = await exchange(proxy.port, [Buffer.concat([request(echo.port), Buffer.from('hello')])]);
    assert.equal(result.data, `${granted}${echo.port}:hello`);
  });

  it('waits (noop) until the user id is complete', async () => {
    const socket = await dial(proxy.port);
    socket.on('end', () => socket.end());
    const received = readAll(socket);
    const req = request(echo.port, 'a-rather-long-user-id');
    let noops = proxy.listener.stats.decisions.noop;
    socket.write(req.subarray(0, 4)); // shorter than 9 bytes
    await waitForDecisions(proxy, 'noop', ++noops);
    socket.write(req.subarray(4, 14)); // no NUL yet
    await waitForDecisions(proxy, 'noop', ++noops);
    socket.write(req.subarray(14));
    await waitForDecisions(proxy, 'remote', proxy.listener.stats.decisions.remote + 1);
    socket.write('after');
    assert.equal(await received, `${granted}${echo.port}:after`);
  });

  it('rejects another version or command with status 0x5b', async () => {
    const v5 = await exchange(proxy.port, [request(echo.port, 'bob', 5)]);
    assert.equal(v5.data, rejected);
    assert.equal(v5.clean, true);
    const bind = await exchange(proxy.port, [request(echo.port, 'bob', 4, 2)]);
    assert.equal(bind.data, rejected);
    const closed = await proxy.log.waitFor((r) => r.msg === 'connection closed' && r.reason === 'router_close');
    assert.equal(closed.backend, undefined);
  });
});
