/**
 * routers/tls-sni.js with Node's TLS client through the proxy to two real TLS servers.
 * The proxy never terminates TLS: the client verifies the backend's own certificate (each
 * backend has a self-signed one for its name) and talks to the backend end to end.
 *
 * Fixtures, generated once (valid for 100 years):
 *   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500 \
 *     -keyout test/fixtures/alpha.test.key -out test/fixtures/alpha.test.crt \
 *     -subj /CN=alpha.test -addext subjectAltName=DNS:alpha.test        (and the same for beta)
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { Duplex } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { connect as tlsConnect, createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { dial, exchange, routerSource, startProxy, waitForDecisions, type TestProxy } from './helpers.js';

const fixture = (name: string): string => readFileSync(new URL(`../../test/fixtures/${name}`, import.meta.url), 'utf8');
const certs = { alpha: fixture('alpha.test.crt'), beta: fixture('beta.test.crt') };

interface Backend {
  readonly port: number;
  readonly server: TlsServer;
  readonly sockets: TLSSocket[];
}

/** A TLS server that greets with its name and the SNI it got, then echoes prefixed with its name. */
async function startTlsBackend(name: 'alpha' | 'beta'): Promise<Backend> {
  const sockets: TLSSocket[] = [];
  const server = createTlsServer({ key: fixture(`${name}.test.key`), cert: certs[name] }, (socket) => {
    sockets.push(socket);
    socket.on('error', () => undefined);
    socket.write(`backend ${name} servername=${String(socket.servername)}\n`);
    socket.on('data', (d: Buffer) => socket.write(`${name}:${d.toString('utf8')}`));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as AddressInfo).port, server, sockets };
}

interface Session {
  readonly data: string;
  readonly subject: string | undefined;
  readonly authorized: boolean;
  readonly protocol: string | null;
}

/** Completes the handshake on `socket`, sends "ping", half-closes, and reads until the end. */
async function ping(socket: TLSSocket): Promise<Session> {
  const received: Buffer[] = [];
  socket.on('data', (d: Buffer) => received.push(d));
  const closed = once(socket, 'close');
  await once(socket, 'secureConnect');
  const cert = socket.getPeerCertificate();
  const session = { subject: cert.subject === undefined ? undefined : String(cert.subject.CN), authorized: socket.authorized, protocol: socket.getProtocol() };
  // Wait for the greeting before the echo, so the two arrive in a known order.
  while (!Buffer.concat(received).includes('\n')) await once(socket, 'data');
  socket.end('ping');
  await closed;
  return { ...session, data: Buffer.concat(received).toString('utf8') };
}

/** A TLS client that trusts both backends' certificates (and nothing else). */
function tlsClient(port: number, servername: string): TLSSocket {
  return tlsConnect({ host: '127.0.0.1', port, servername, ca: [certs.alpha, certs.beta] });
}

describe('routers/tls-sni.js', () => {
  let alpha: Backend;
  let beta: Backend;
  let proxy: TestProxy;

  before(async () => {
    alpha = await startTlsBackend('alpha');
    beta = await startTlsBackend('beta');
    proxy = await startProxy(
      routerSource('tls-sni.js', {
        '127.0.0.1:8443': `127.0.0.1:${alpha.port}`,
        '127.0.0.1:9443': `127.0.0.1:${beta.port}`,
      }),
      { tenant: 'tls-sni' },
    );
  });
  after(async () => {
    await proxy.close();
    for (const b of [alpha, beta]) {
      for (const s of b.sockets) s.destroy();
      b.server.close();
      await once(b.server, 'close');
    }
  });

  it('routes by server name, end to end with the backend certificate', async () => {
    const a = await ping(tlsClient(proxy.port, 'alpha.test'));
    assert.equal(a.subject, 'alpha.test');
    assert.equal(a.authorized, true); // the certificate verified against the name asked for
    assert.equal(a.data, 'backend alpha servername=alpha.test\nalpha:ping');
    const b = await ping(tlsClient(proxy.port, 'beta.test'));
    assert.equal(b.subject, 'beta.test');
    assert.equal(b.authorized, true);
    assert.equal(b.data, 'backend beta servername=beta.test\nbeta:ping');
  });

  it('routes TLS 1.2 as well as 1.3, and names case-insensitively', async () => {
    const socket = tlsConnect({ host: '127.0.0.1', port: proxy.port, servername: 'BETA.test', ca: [certs.beta], maxVersion: 'TLSv1.2' });
    const b = await ping(socket);
    assert.equal(b.protocol, 'TLSv1.2');
    assert.equal(b.subject, 'beta.test');
    assert.equal(b.data, 'backend beta servername=BETA.test\nbeta:ping');
  });

  it('waits for a ClientHello that arrives in pieces and spans two records', async () => {
    const raw = await dial(proxy.port);
    const noopsBefore = proxy.listener.stats.decisions.noop;
    let first = true;
    let pieces = 0;
    // The TLS client writes through this stream; its first write (the ClientHello record) is
    // re-framed into two handshake records and sent in four pieces, each seen by the router alone.
    const wire = new Duplex({
      read: () => raw.resume(),
      write: (chunk: Buffer, _encoding, done) => {
        if (!first) {
          raw.write(chunk, () => done());
          return;
        }
        first = false;
        const send = async (): Promise<void> => {
          const parts = splitClientHello(chunk);
          for (const [i, part] of parts.entries()) {
            raw.write(part);
            if (i < parts.length - 1) await waitForDecisions(proxy, 'noop', noopsBefore + ++pieces);
          }
        };
        send().then(() => done(), done);
      },
      final: (done) => {
        raw.end();
        done();
      },
    });
    raw.on('data', (d: Buffer) => {
      if (!wire.push(d)) raw.pause();
    });
    raw.on('end', () => wire.push(null));
    raw.on('close', () => wire.destroy());
    const a = await ping(tlsConnect({ socket: wire, servername: 'alpha.test', ca: [certs.alpha] }));
    assert.equal(pieces, 3);
    assert.equal(a.subject, 'alpha.test');
    assert.equal(a.data, 'backend alpha servername=alpha.test\nalpha:ping');
  });

  it('refuses an unknown name with an unrecognized_name alert', async () => {
    const socket = tlsClient(proxy.port, 'gamma.test');
    const [err] = (await once(socket, 'error')) as [NodeJS.ErrnoException];
    assert.equal(err.code, 'ERR_SSL_TLSV1_UNRECOGNIZED_NAME', err.message);
    socket.destroy();
    const raw = await exchange(proxy.port, [clientHelloFor('gamma.test')]);
    assert.equal(raw.data, '\x15\x03\x01\x00\x02\x02\x70');
    assert.equal(raw.clean, true);
    assert.equal(alpha.sockets.length + beta.sockets.length, 4, 'no backend saw the unknown name');
  });

  it('closes on data that is not TLS, without waiting for more', async () => {
    const closedBefore = proxy.listener.stats.decisions.close;
    const http = await exchange(proxy.port, ['GET / HTTP/1.1\r\n']);
    assert.equal(http.data, '');
    assert.equal(http.clean, true);
    const serverHello = await exchange(proxy.port, ['\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00']);
    assert.equal(serverHello.data, '');
    assert.equal(proxy.listener.stats.decisions.close, closedBefore + 2);
  });
});

/** Splits one TLS handshake record into two records, cut into four pieces. */
function splitClientHello(record: Buffer): Buffer[] {
  assert.equal(record[0], 22, 'the first write is a handshake record');
  const length = record.readUInt16BE(3);
  assert.equal(record.length, 5 + length, 'the first write is exactly one record');
  const fragment = record.subarray(5);
  const frame = (f: Buffer): Buffer => Buffer.concat([Buffer.from([22, record[1]!, record[2]!, f.length >> 8, f.length & 255]), f]);
  const one = frame(fragment.subarray(0, 40));
  const two = frame(fragment.subarray(40));
  return [one.subarray(0, 3), one.subarray(3), two.subarray(0, 20), two.subarray(20)];
}

/** A minimal TLS 1.2 ClientHello record carrying one server name. */
function clientHelloFor(name: string): Buffer {
  const host = Buffer.from(name, 'latin1');
  const sni = Buffer.concat([u16(host.length + 3), Buffer.from([0]), u16(host.length), host]);
  const extensions = Buffer.concat([u16(0), u16(sni.length), sni]);
  const body = Buffer.concat([
    Buffer.from([3, 3]),
    Buffer.alloc(32, 7), // random
    Buffer.from([0]), // session id
    u16(2),
    Buffer.from([0x00, 0x2f]), // TLS_RSA_WITH_AES_128_CBC_SHA
    Buffer.from([1, 0]), // compression: null
    u16(extensions.length),
    extensions,
  ]);
  const handshake = Buffer.concat([Buffer.from([1, body.length >> 16, (body.length >> 8) & 255, body.length & 255]), body]);
  return Buffer.concat([Buffer.from([22, 3, 1]), u16(handshake.length), handshake]);
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}
