/**
 * routers/http-host.js with real HTTP clients (curl and Node's http client) through the proxy
 * to two real Node HTTP backends that answer with their own name.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { request, createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { dial, exchange, readAll, routerSource, runCommand, startProxy, waitForDecisions, type TestProxy } from './helpers.js';

interface Backend {
  readonly port: number;
  readonly server: Server;
  /** Host headers of the requests it served. */
  readonly hosts: string[];
}

async function startHttpBackend(name: string): Promise<Backend> {
  const hosts: string[] = [];
  const server = createServer((req, res) => {
    hosts.push(req.headers.host ?? '');
    const body: Buffer[] = [];
    req.on('data', (c: Buffer) => body.push(c));
    req.on('end', () => {
      const text = Buffer.concat(body).toString('utf8');
      res.setHeader('Content-Type', 'text/plain');
      res.end(`backend ${name} ${req.method} ${req.url} host=${req.headers.host ?? ''}${text === '' ? '' : ` body=${text}`}\n`);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as AddressInfo).port, server, hosts };
}

interface Response {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
}

/** Node's HTTP client, on a fresh connection per request (no keep-alive agent). */
function get(port: number, host: string, path = '/'): Promise<Response> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers: { Host: host }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('routers/http-host.js', () => {
  let alpha: Backend;
  let beta: Backend;
  let proxy: TestProxy;

  before(async () => {
    alpha = await startHttpBackend('alpha');
    beta = await startHttpBackend('beta');
    proxy = await startProxy(
      routerSource('http-host.js', {
        '127.0.0.1:8081': `127.0.0.1:${alpha.port}`,
        '127.0.0.1:8082': `127.0.0.1:${beta.port}`,
      }),
      { tenant: 'http-host' },
    );
  });
  after(async () => {
    await proxy.close();
    for (const b of [alpha, beta]) {
      b.server.closeAllConnections();
      b.server.close();
      await once(b.server, 'close');
    }
  });

  it('routes curl by its Host header', async () => {
    const a = await runCommand('curl', ['-s', '-S', '-H', 'Host: alpha.example', `http://127.0.0.1:${proxy.port}/hello`]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(a.stdout, 'backend alpha GET /hello host=alpha.example\n');
    const b = await runCommand('curl', ['-s', '-S', '-H', 'Host: beta.example:8080', `http://127.0.0.1:${proxy.port}/there`]);
    assert.equal(b.code, 0, b.stderr);
    assert.equal(b.stdout, 'backend beta GET /there host=beta.example:8080\n');
  });

  it('replays the request body that came with the headers', async () => {
    const post = await runCommand('curl', ['-s', '-S', '-H', 'Host: beta.example', '--data-binary', 'hello=world', `http://127.0.0.1:${proxy.port}/form`]);
    assert.equal(post.code, 0, post.stderr);
    assert.equal(post.stdout, 'backend beta POST /form host=beta.example body=hello=world\n');
  });

  it('routes Node http requests, host names case-insensitively', async () => {
    const a = await get(proxy.port, 'ALPHA.example', '/x?y=1');
    assert.equal(a.status, 200);
    assert.equal(a.body, 'backend alpha GET /x?y=1 host=ALPHA.example\n');
    const b = await get(proxy.port, 'beta.example');
    assert.equal(b.body, 'backend beta GET / host=beta.example\n');
    assert.ok(alpha.hosts.includes('ALPHA.example'));
    assert.ok(beta.hosts.includes('beta.example'));
    assert.ok(!alpha.hosts.includes('beta.example'), 'beta request reached alpha');
  });

  it('waits (noop) for headers that arrive in pieces', async () => {
    const pieces = ['GET /slow HT', 'TP/1.1\r\nHo', 'st: beta.exam', 'ple\r\nConnection: close\r\n'];
    const socket = await dial(proxy.port);
    const response = readAll(socket);
    socket.on('end', () => socket.end());
    let noops = proxy.listener.stats.decisions.noop;
    for (const piece of pieces) {
      socket.write(piece, 'latin1');
      await waitForDecisions(proxy, 'noop', ++noops); // the router saw this piece alone and waited
    }
    socket.write('\r\n');
    const data = await response;
    assert.match(data, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(data, /\r\n\r\nbackend beta GET \/slow host=beta\.example\n$/);
  });

  it('answers an unknown host with 421 from the router', async () => {
    const curl = await runCommand('curl', ['-s', '-S', '-i', '-H', 'Host: gamma.example', `http://127.0.0.1:${proxy.port}/`]);
    assert.equal(curl.code, 0, curl.stderr);
    assert.match(curl.stdout, /^HTTP\/1\.1 421 Misdirected Request\r\n/);
    assert.match(curl.stdout, /\r\n\r\nno site for host gamma\.example\n$/);
    const node = await get(proxy.port, 'gamma.example');
    assert.equal(node.status, 421);
    assert.equal(node.body, 'no site for host gamma.example\n');
    assert.equal(node.headers.connection, 'close');
    const closed = await proxy.log.waitFor((r) => r.msg === 'connection closed' && r.reason === 'router_close');
    assert.equal(closed.decision, 'close');
    assert.equal(closed.backend, undefined);
  });

  it('answers garbage, a missing Host and two Hosts with 400', async () => {
    const tls = await exchange(proxy.port, [Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])]);
    assert.match(tls.data, /^HTTP\/1\.1 400 Bad Request\r\n[^]*\r\n\r\nbad request\n$/);
    const noHost = await exchange(proxy.port, ['GET / HTTP/1.0\r\nAccept: */*\r\n\r\n']);
    assert.match(noHost.data, /^HTTP\/1\.1 400 Bad Request\r\n[^]*\r\n\r\nno Host header\n$/);
    const twoHosts = await exchange(proxy.port, ['GET / HTTP/1.1\r\nHost: alpha.example\r\nHost: beta.example\r\n\r\n']);
    assert.match(twoHosts.data, /\r\n\r\nmore than one Host header\n$/);
    const badLine = await exchange(proxy.port, ['GET /\r\nHost: alpha.example\r\n\r\n']);
    assert.match(badLine.data, /^HTTP\/1\.1 400 Bad Request\r\n[^]*\r\n\r\nbad request line\n$/);
    const length = /Content-Length: (\d+)\r\n/.exec(noHost.data);
    assert.equal(Number(length?.[1]), 'no Host header\n'.length);
  });
});
