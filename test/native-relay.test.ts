/**
 * The native relay (src/native/splice-relay.c) on its own: the handover from net.Socket, the
 * order of the bytes owed to each side, its bookkeeping, and that it leaves no file
 * descriptor behind. The proxy's own tests (transport, ProxyMachine parity, real clients) run
 * through it too; test/transport-node-relay.test.ts runs the transport tests without it.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { NativeRelay, type RelayOwner } from '../src/connection/native-relay.js';
import { ConnectCancel } from '../src/connection/upstream.js';
import { deferred, eventually, readAll, refusingPort, spawnCli, startCliProxy, startServer, within, writeRouterFile, type TestServer } from './helpers.js';

// Two pipes at most, so that the tests below also run the copying path (past the cap).
process.env['SWITCHYARD_RELAY_PIPES'] = '2';

interface Ended {
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly errno: number;
}

/** A front server whose connections are handed to the native relay once their backend connects. */
interface Front {
  readonly port: number;
  /** Settles per accepted connection, in order: the relay's id, and how it ended. */
  readonly relays: { id: Promise<number | undefined>; ended: Promise<Ended> }[];
  close(): Promise<void>;
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

async function startFront(
  relay: NativeRelay,
  backendPort: number,
  owed: { toUpstream?: Buffer; toClient?: Buffer } = {},
  /** Runs on the accepted socket before its backend is connected. */
  onAccept: (client: Socket) => void = () => undefined,
): Promise<Front> {
  const relays: Front['relays'] = [];
  const server: Server = createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
    const id = deferred<number | undefined>();
    const ended = deferred<Ended>();
    relays.push({ id: id.promise, ended: ended.promise });
    client.on('error', () => undefined);
    onAccept(client);
    const upstream = connect({ port: backendPort, host: '127.0.0.1', allowHalfOpen: true, noDelay: true });
    upstream.on('error', () => undefined);
    upstream.once('connect', () => {
      const owner: RelayOwner = { relayClosed: (bytesIn, bytesOut, errno) => ended.resolve({ bytesIn, bytesOut, errno }) };
      id.resolve(relay.adopt(client, upstream, owed.toUpstream, owed.toClient, owner));
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  return {
    port,
    relays,
    close: async () => {
      server.close();
      await once(server, 'close');
    },
  };
}

/** Sends `payload` and half-closes, reading everything back until the other side closes. */
async function roundTrip(port: number, payload: Buffer): Promise<Buffer> {
  const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  const chunks: Buffer[] = [];
  socket.on('data', (b: Buffer) => chunks.push(b));
  socket.on('end', () => socket.end());
  await once(socket, 'connect');
  socket.end(payload);
  await once(socket, 'close');
  return Buffer.concat(chunks);
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

describe('native relay', { skip: process.platform !== 'linux' && 'splice(2) is Linux only' }, () => {
  let relay: NativeRelay;
  let echo: TestServer;

  before(async () => {
    const r = NativeRelay.get();
    assert.ok(r, `the native relay must load on Linux: ${NativeRelay.unavailableReason}`);
    relay = r;
    echo = await startServer((socket) => socket.pipe(socket));
  });
  after(() => echo.close());

  it('is what the command line relays with, and says so; SWITCHYARD_RELAY=node turns it off', async () => {
    const native = await startCliProxy(`proxy(() => ({ remote: '127.0.0.1:${echo.port}' }));`);
    const listening = await native.log.waitFor((r) => r.msg === 'listening');
    native.child.kill('SIGTERM');
    await native.exited;
    assert.equal(listening.relay, 'splice');
    assert.equal(listening.relayFallback, undefined);

    const file = writeRouterFile(`proxy(() => ({ remote: '127.0.0.1:${echo.port}' }));`);
    const fallback = spawnCli(['-c', file, '-h', '127.0.0.1', '-p', '0'], { env: { SWITCHYARD_RELAY: 'node' } });
    const record = await within(fallback.log.waitFor((r) => r.msg === 'listening'), 20_000, 'listening');
    fallback.child.kill('SIGTERM');
    await fallback.exited;
    assert.equal(record.relay, 'node');
    assert.equal(record.relayFallback, 'SWITCHYARD_RELAY=node');
  });

  it('sends what is owed to each side first, then what Node had read, then the rest', async () => {
    const front = await startFront(relay, echo.port, { toUpstream: Buffer.from('HEADER|'), toClient: Buffer.from('REPLY|') });
    const socket = connect({ port: front.port, host: '127.0.0.1', allowHalfOpen: true });
    const received = readAll(socket);
    socket.on('end', () => socket.end());
    await once(socket, 'connect');
    socket.write('early|'); // likely read by Node before the handover
    const id = await front.relays[0]!.id;
    assert.equal(typeof id, 'number');
    socket.end('late');
    assert.equal(await received, 'REPLY|HEADER|early|late');
    const ended = await front.relays[0]!.ended;
    assert.equal(ended.errno, 0);
    // Node read 'early|' itself; the relay counts what it moved: 'late' in, everything out.
    assert.equal(ended.bytesOut, 'REPLY|HEADER|early|late'.length);
    assert.ok(ended.bytesIn === 'late'.length || ended.bytesIn === 'early|late'.length, `bytesIn ${ended.bytesIn}`);
    await front.close();
  });

  it('carries 64 MiB each way, byte for byte, with several relays at once', async () => {
    const front = await startFront(relay, echo.port);
    const payloads = [0, 1, 2].map(() => randomBytes(64 * 1024 * 1024));
    const results = await within(Promise.all(payloads.map((p) => roundTrip(front.port, p))), 60_000, 'three 64 MiB round trips');
    results.forEach((r, i) => assert.equal(sha(r), sha(payloads[i]!), `relay ${i} changed the bytes`));
    for (const r of front.relays) {
      // Node may have read a chunk from the client before the handover; the relay moved the rest.
      const { bytesIn, errno } = await r.ended;
      assert.equal(errno, 0);
      assert.ok(bytesIn <= 64 * 1024 * 1024 && bytesIn >= 63 * 1024 * 1024, `bytesIn ${bytesIn}`);
    }
    await front.close();
  });

  it('declines sockets with bytes still queued in Node, and leaves them working', async () => {
    // A backend that does not read until told: the front's write to it queues in Node.
    const release = deferred();
    const stalled = await startServer((socket) => {
      socket.pause();
      void release.promise.then(() => socket.pipe(socket));
    });
    const server = createServer({ allowHalfOpen: true });
    const outcome = deferred<{ id: number | undefined; upstream: Socket; client: Socket }>();
    server.on('connection', (client) => {
      const upstream = connect({ port: stalled.port, host: '127.0.0.1', allowHalfOpen: true });
      upstream.once('connect', () => {
        upstream.write(Buffer.alloc(32 * 1024 * 1024)); // more than the kernel buffers hold
        const id = relay.adopt(client, upstream, undefined, undefined, { relayClosed: () => assert.fail('not relayed') });
        outcome.resolve({ id, upstream, client });
      });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const outer = connect({ port: (server.address() as { port: number }).port, host: '127.0.0.1' });
    const { id, upstream, client } = await outcome.promise;
    assert.equal(id, undefined);
    assert.ok(upstream.writableLength > 0);
    // Both are still Node's: the backend echoes the 32 MiB once it reads, and the client talks.
    const echoed = deferred<number>();
    let n = 0;
    upstream.on('data', (b: Buffer) => {
      n += b.length;
      if (n === 32 * 1024 * 1024) echoed.resolve(n);
    });
    release.resolve();
    assert.equal(await within(echoed.promise, 20_000, 'the echo of the queued bytes'), 32 * 1024 * 1024);
    client.write('still mine');
    const [got] = (await once(outer, 'data')) as [Buffer];
    assert.equal(got.toString(), 'still mine');
    outer.destroy();
    client.destroy();
    upstream.destroy();
    server.close();
    await stalled.close();
  });

  it('reports bytes and idle time while open, and destroy() closes both sides at once', async () => {
    const front = await startFront(relay, echo.port);
    const socket = connect({ port: front.port, host: '127.0.0.1', allowHalfOpen: true });
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    const id = await front.relays[0]!.id;
    assert.ok(id !== undefined);
    socket.write('12345');
    await once(socket, 'data');
    const [bytesIn, bytesOut] = relay.bytes(id);
    assert.equal(bytesOut, 5);
    assert.ok(bytesIn === 5 || bytesIn === 0);
    const idleBefore = relay.idleMs(id);
    await new Promise((r) => setTimeout(r, 30));
    assert.ok(relay.idleMs(id) >= idleBefore + 20, `idle ${relay.idleMs(id)} after ${idleBefore}`);
    const ended = once(socket, 'end');
    assert.deepEqual(relay.destroy(id), [bytesIn, bytesOut]);
    await within(ended, 5_000, 'the client to see the FIN');
    assert.throws(() => relay.bytes(id), /no such relay/);
    await front.close();
  });

  it('passes a reset on as a reset', async () => {
    const resetting = await startServer((socket) => socket.once('data', () => socket.resetAndDestroy()));
    const front = await startFront(relay, resetting.port);
    const socket = connect({ port: front.port, host: '127.0.0.1', allowHalfOpen: true });
    const error = deferred<string>();
    socket.on('error', (e: NodeJS.ErrnoException) => error.resolve(e.code ?? ''));
    await once(socket, 'connect');
    await front.relays[0]!.id;
    socket.write('boom');
    assert.equal(await within(error.promise, 5_000, 'the reset'), 'ECONNRESET');
    assert.equal((await front.relays[0]!.ended).errno > 0, true);
    await front.close();
    await resetting.close();
  });

  it('leaves no file descriptor behind once its relays have ended', async () => {
    // One relay first, so that whatever Node opens lazily is open before the count.
    const warm = await startFront(relay, echo.port);
    await roundTrip(warm.port, Buffer.from('warm'));
    await warm.relays[0]!.ended;
    await warm.close();
    const baseline = openFds() - 2 * relay.stats().sparePipes;

    const front = await startFront(relay, echo.port);
    await Promise.all(Array.from({ length: 100 }, (_, i) => roundTrip(front.port, randomBytes(i % 2 === 0 ? 300_000 : 10))));
    await Promise.all(front.relays.map((r) => r.ended));
    await front.close();
    assert.equal(relay.stats().relays, 0);
    assert.ok(relay.stats().sparePipes <= 64);
    assert.equal(openFds() - 2 * relay.stats().sparePipes, baseline);
  });
  it('dials a backend itself: a refusal rejects as Node words it, a cancel stops the attempt', async () => {
    const port = await refusingPort();
    await assert.rejects(relay.dial({ host: '127.0.0.1', port }, 5_000, new ConnectCancel()), {
      code: 'ECONNREFUSED',
      message: `connect ECONNREFUSED 127.0.0.1:${port}`,
    });
    const cancel = new ConnectCancel();
    const attempt = relay.dial({ host: '127.0.0.1', port: echo.port }, 5_000, cancel);
    cancel.cancel(new Error('client went away'));
    await assert.rejects(attempt, /client went away/);
    assert.throws(() => relay.bytes(0), /no such relay/, 'nothing left open');
    assert.equal(relay.stats().relays, 0);
  });

  it('relays a dialed backend with its client, or gives it back as a net.Socket', async () => {
    const server = createServer({ allowHalfOpen: true });
    const accepted: Socket[] = [];
    server.on('connection', (s) => accepted.push(s));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    const clientOf = async (): Promise<{ outer: Socket; inner: Socket }> => {
      const outer = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
      await once(outer, 'connect');
      await new Promise<void>((r) => (accepted.length > 0 ? r() : server.once('connection', () => r())));
      return { outer, inner: accepted.shift()! };
    };

    // Adopted: the relay carries it.
    const a = await clientOf();
    const dialed = await relay.dial({ host: '127.0.0.1', port: echo.port }, 5_000, new ConnectCancel());
    const ended = deferred<Ended>();
    const owner: RelayOwner = { relayClosed: (bytesIn, bytesOut, errno) => ended.resolve({ bytesIn, bytesOut, errno }) };
    assert.equal(relay.adoptDialed(a.inner, dialed.id, Buffer.from('>'), Buffer.from('<'), owner), true);
    const received = readAll(a.outer);
    a.outer.on('end', () => a.outer.end());
    a.outer.end('ping');
    assert.equal(await received, '<>ping');
    assert.deepEqual(await ended.promise, { bytesIn: 4, bytesOut: 6, errno: 0 });

    // Declined (the client has bytes queued in Node): the dial becomes a net.Socket.
    const b = await clientOf();
    b.outer.pause(); // reads nothing, so the inner socket's write queues
    b.inner.write(Buffer.alloc(32 * 1024 * 1024));
    const second = await relay.dial({ host: '127.0.0.1', port: echo.port }, 5_000, new ConnectCancel());
    assert.equal(relay.adoptDialed(b.inner, second.id, undefined, undefined, owner), false);
    const upstream = relay.socketFor(second.id);
    upstream.end('plain socket');
    const [echoed] = (await once(upstream, 'data')) as [Buffer];
    assert.equal(echoed.toString(), 'plain socket');
    upstream.destroy();
    b.outer.destroy();
    b.inner.destroy();
    a.inner.destroy();
    server.close();
    assert.equal(relay.stats().relays, 0);
  });

  it('holds at most SWITCHYARD_RELAY_PIPES pipes for clients that do not read; the rest copy, and no byte is lost', async () => {
    // More than the kernel's socket buffers hold on the way (several MiB on loopback).
    const payload = randomBytes(32 * 1024 * 1024);
    const blaster = await startServer((socket) => socket.end(payload));
    const front = await startFront(relay, blaster.port);
    const clients = await Promise.all(
      Array.from({ length: 6 }, async () => {
        const socket = connect({ port: front.port, host: '127.0.0.1', allowHalfOpen: true });
        await once(socket, 'connect');
        socket.pause(); // reads nothing yet: every relay backs up
        return socket;
      }),
    );
    await eventually(() => relay.stats().lentPipes === 2, 'the pipes to be taken by stuck directions');
    const received = clients.map((socket) => {
      const hash = createHash('sha256');
      socket.on('data', (b: Buffer) => hash.update(b));
      socket.on('end', () => socket.end());
      return once(socket, 'close').then(() => hash.digest('hex'));
    });
    assert.equal(relay.stats().lentPipes, 2, 'never more than the cap');
    for (const socket of clients) socket.resume();
    const expected = sha(payload);
    for (const got of await within(Promise.all(received), 60_000, 'every client to get its 32 MiB')) assert.equal(got, expected);
    await Promise.all(front.relays.map((r) => r.ended));
    assert.deepEqual([relay.stats().relays, relay.stats().lentPipes], [0, 0]);
    await front.close();
    await blaster.close();
  });
});
