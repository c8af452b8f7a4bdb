/**
 * The native data path (src/native/splice-relay.c) on its own: accepting, receiving before a
 * decision, replies and closing, joining a client with its backend, the order of the bytes
 * owed to each side, its bookkeeping, and that it leaves no file descriptor behind. The
 * proxy's own tests (transport, ProxyMachine parity, real clients) run through it too;
 * test/transport-node-relay.test.ts runs the transport tests without it.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { connect, type Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import { after, before, describe, it } from 'node:test';
import type { Client, ClientHandler, Peer } from '../src/connection/client.js';
import { NativeRelay } from '../src/connection/native-relay.js';
import { ConnectCancel, type ConnectPlan, resolving } from '../src/connection/upstream.js';
import { deferred, eventually, readAll, refusingPort, spawnCli, startCliProxy, startServer, within, writeRouterFile, type TestServer } from './helpers.js';

// Two pipes at most, so that the tests below also run the copying path (past the cap).
process.env['SWITCHYARD_RELAY_PIPES'] = '2';

interface Ended {
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly errno: number;
}

/** One accepted client, as its handler heard it. */
interface Accepted {
  readonly client: Client;
  readonly peer: Peer;
  /** Chunks before the relay, in order, and whether FIN came. */
  readonly chunks: Buffer[];
  readonly fin: Promise<void>;
  /** The first onDrained: everything owed to the client is written. */
  readonly drained: Promise<void>;
  readonly ended: Promise<Ended>;
}

/** A port accepted by the native path; each client is handed to `onClient` once it is heard. */
interface Front {
  readonly port: number;
  readonly accepted: Accepted[];
  /** Settles with the next client accepted. */
  next(): Promise<Accepted>;
  close(): void;
}

async function startFront(relay: NativeRelay, onClient: (a: Accepted) => void = () => undefined): Promise<Front> {
  const accepted: Accepted[] = [];
  const waiting: ((a: Accepted) => void)[] = [];
  const acceptor = await relay.listen(
    { host: '127.0.0.1', port: 0 },
    {
      firstRead: 65536,
      onError: (err) => assert.fail(err),
      onClient: (client, peer) => {
        const ended = deferred<Ended>();
        const fin = deferred();
        const drained = deferred();
        const a: Accepted = { client, peer, chunks: [], fin: fin.promise, drained: drained.promise, ended: ended.promise };
        const handler: ClientHandler = {
          received: (chunk) => a.chunks.push(chunk),
          ended: () => fin.resolve(),
          drained: () => drained.resolve(),
          closed: (bytesIn, bytesOut, errno) => ended.resolve({ bytesIn, bytesOut, errno }),
        };
        client.listen(handler);
        accepted.push(a);
        waiting.shift()?.(a);
        onClient(a);
      },
    },
  );
  let next = 0;
  return {
    port: acceptor.address.port,
    accepted,
    next: () => {
      const i = next++;
      return i < accepted.length ? Promise.resolve(accepted[i]!) : new Promise((resolve) => waiting.push(resolve));
    },
    close: () => acceptor.close(),
  };
}

/** One candidate, one try. */
function only(host: string, port: number): ConnectPlan {
  return { remotes: [{ host, port }], tries: 1, retryDelayMs: 0, timeoutMs: 5_000 };
}

/** A front that relays every client to `backendPort` as soon as it is accepted, dialed natively. */
function relayingTo(backendPort: number, owed: { toUpstream?: Buffer; toClient?: Buffer } = {}): (a: Accepted) => void {
  return (a) => {
    a.client.pause();
    void a.client.connect(only('127.0.0.1', backendPort), new ConnectCancel()).then((upstream) => {
      const early = a.chunks.length > 0 ? Buffer.concat(a.chunks) : undefined;
      const toUpstream = owed.toUpstream === undefined ? early : early === undefined ? owed.toUpstream : Buffer.concat([owed.toUpstream, early]);
      upstream.relay(toUpstream, owed.toClient);
    });
  };
}

/**
 * The ports of the net.Sockets that `net.connect` creates while `work` runs: Node publishes each
 * on the `net.client.socket` diagnostics channel as it creates it.
 */
async function socketsCreatedDuring<T>(work: () => Promise<T>): Promise<{ result: T; ports: number[] }> {
  const ports: number[] = [];
  const onSocket = (message: unknown): void => {
    const { socket } = message as { socket: Socket };
    socket.once('connect', () => ports.push(socket.remotePort ?? -1));
    ports.push(0); // counted at creation; the port is added once it connects
  };
  subscribe('net.client.socket', onSocket);
  try {
    return { result: await work(), ports };
  } finally {
    unsubscribe('net.client.socket', onSocket);
  }
}

function hasIPv6Loopback(): boolean {
  return Object.values(networkInterfaces()).some((addresses) => addresses?.some((a) => a.address === '::1'));
}

/** An interface's index, as the kernel numbers it. */
function interfaceIndex(name: string): number {
  return Number(readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8').trim());
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
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

describe('native data path', { skip: process.platform !== 'linux' && 'splice(2) is Linux only' }, () => {
  let relay: NativeRelay;
  let echo: TestServer;

  before(async () => {
    const r = NativeRelay.load();
    assert.ok(r instanceof NativeRelay, `the native relay must load on Linux: ${'reason' in r ? r.reason : ''}`);
    relay = r;
    echo = await startServer((socket) => socket.pipe(socket));
  });
  after(() => echo.close());

  it('is what the command line accepts and relays with, and says so; SWITCHYARD_RELAY=node turns it off', async () => {
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

  it('accepts with the addresses and the first bytes; a reply goes out before the relay, then what is owed, then the rest', async () => {
    const front = await startFront(relay);
    const socket = connect({ port: front.port, host: '127.0.0.1', allowHalfOpen: true });
    const received = readAll(socket);
    socket.on('end', () => socket.end());
    await once(socket, 'connect');
    socket.write('first|');
    const a = await front.next();
    await eventually(() => a.chunks.length > 0, 'the first bytes');
    assert.deepEqual(a.peer, { remoteAddress: '127.0.0.1', remotePort: socket.localPort, localAddress: '127.0.0.1', localPort: front.port });
    a.client.write('NOOP|');
    a.client.pause();
    socket.write('paused|'); // waits in the kernel, and is relayed after what is owed
    const upstream = await a.client.connect(only('127.0.0.1', echo.port), new ConnectCancel());
    upstream.relay(Buffer.concat([Buffer.from('HEADER|'), ...a.chunks]), Buffer.from('REPLY|'));
    socket.end('late');
    assert.equal(await received, 'NOOP|REPLY|HEADER|first|paused|late');
    assert.deepEqual(await a.ended, { bytesIn: 'first|paused|late'.length, bytesOut: 'NOOP|REPLY|HEADER|first|paused|late'.length, errno: 0 });
    assert.equal(Buffer.concat(a.chunks).toString(), 'first|', 'a paused client is not read');
    front.close();
  });

  it('hears a FIN before any decision, and end() sends the reply and FIN, drops what follows, and reports once the client closes', async () => {
    const front = await startFront(relay);
    const socket = connect({ port: front.port, host: '127.0.0.1', allowHalfOpen: true });
    const received = readAll(socket);
    await once(socket, 'connect');
    const a = await front.next();
    socket.write('hello');
    await eventually(() => a.chunks.length > 0, 'the chunk');
    a.client.end('0015ERR unknown user\n');
    const ended = once(socket, 'end');
    await within(ended, 5_000, 'the FIN after the reply');
    socket.write('ignored after the close');
    socket.end();
    assert.equal(await received, '0015ERR unknown user\n');
    const result = await within(a.ended, 5_000, 'the report');
    assert.equal(result.errno, 0);
    assert.equal(result.bytesOut, '0015ERR unknown user\n'.length);
    assert.equal(Buffer.concat(a.chunks).toString(), 'hello', 'nothing is handed up after end()');

    const quitter = connect({ port: front.port, host: '127.0.0.1', allowHalfOpen: true });
    await once(quitter, 'connect');
    quitter.end('bye');
    const b = await front.next();
    await within(b.fin, 5_000, 'the FIN before a decision');
    assert.equal(Buffer.concat(b.chunks).toString(), 'bye');
    b.client.end();
    await within(b.ended, 5_000, 'the report');
    front.close();
  });

  it('reads a client only as far as read() allows; the rest waits in the kernel until allowed', async () => {
    const front = await startFront(relay);
    const socket = connect({ port: front.port, host: '127.0.0.1', allowHalfOpen: true });
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    const a = await front.next();
    a.client.read(10);
    socket.write(Buffer.alloc(100, 'x'));
    const total = (): number => a.chunks.reduce((n, c) => n + c.length, 0);
    await eventually(() => total() === 10, 'the first 10 bytes');
    // A round trip through the client and back: had more been read, it would be here by now.
    a.client.write('ping');
    await once(socket, 'data');
    assert.equal(total(), 10, 'no more than allowed');
    a.client.read(1000);
    await eventually(() => total() === 100, 'the rest once allowed');
    assert.equal(Buffer.concat(a.chunks).toString(), 'x'.repeat(100));
    assert.deepEqual(a.client.bytes(), [100, 4]);
    a.client.destroy();
    socket.destroy();
    front.close();
  });

  it('send() returns the bytes it could not write yet; onDrained follows once they are all written', async () => {
    const front = await startFront(relay);
    const socket = connect({ port: front.port, host: '127.0.0.1', allowHalfOpen: true });
    socket.on('error', () => undefined);
    try {
      await once(socket, 'connect');
      socket.pause(); // reads nothing: the kernel's buffers fill, then the addon keeps the rest
      const a = await front.next();
      // What had been written when onDrained came (read at once, before the addon runs again).
      let writtenAtDrain = -1;
      void a.drained.then(() => {
        writtenAtDrain = a.client.bytes()[1];
      });
      const reply = 'R'.repeat(65536);
      let sent = 0;
      let owed = 0;
      while (owed === 0) {
        owed = a.client.write(reply);
        sent += reply.length;
        assert.ok(sent < 256 * 1024 * 1024, 'the kernel took everything');
      }
      assert.ok(owed > 0 && owed <= reply.length, `owed ${owed}`);
      assert.equal(a.client.write(reply), owed + reply.length, 'kept behind what waits, in order');
      sent += reply.length;
      // An event on the client (a byte from it) while bytes are owed: the addon's turn runs.
      socket.write('!');
      await eventually(() => a.chunks.length > 0, 'the byte from the client');
      let received = 0;
      socket.on('data', (b: Buffer) => {
        received += b.length;
      });
      socket.resume();
      await within(a.drained, 10_000, 'onDrained');
      await eventually(() => received === sent, 'the client to read it all');
      assert.equal(writtenAtDrain, sent, 'onDrained came before everything was written');
      a.client.destroy();
    } finally {
      socket.destroy();
      front.close();
    }
  });

  it('carries 64 MiB each way, byte for byte, with several relays at once', async () => {
    const front = await startFront(relay, relayingTo(echo.port));
    const payloads = [0, 1, 2].map(() => randomBytes(64 * 1024 * 1024));
    const results = await within(Promise.all(payloads.map((p) => roundTrip(front.port, p))), 60_000, 'three 64 MiB round trips');
    results.forEach((r, i) => assert.equal(sha(r), sha(payloads[i]!), `relay ${i} changed the bytes`));
    for (const a of front.accepted) assert.deepEqual(await a.ended, { bytesIn: 64 * 1024 * 1024, bytesOut: 64 * 1024 * 1024, errno: 0 });
    front.close();
  });

  it('dials a host name itself, resolved first: no net.Socket, and what the backend says first reaches the client', async () => {
    const greeter = await startServer((socket) => {
      socket.write('220 hello|');
      socket.pipe(socket);
    });
    const front = await startFront(relay);
    const socket = connect({ port: front.port, host: '127.0.0.1', allowHalfOpen: true });
    const received = readAll(socket);
    socket.on('end', () => socket.end());
    await once(socket, 'connect');
    const a = await front.next();
    const { result: upstream, ports } = await socketsCreatedDuring(() => a.client.connect(only('localhost', greeter.port), new ConnectCancel()));
    assert.deepEqual(ports, [], 'no net.Socket was created for the backend');
    assert.deepEqual(upstream.endpoint, { host: 'localhost', port: greeter.port });
    await eventually(() => greeter.accepted.length === 1, 'the backend to accept');
    upstream.relay(undefined, Buffer.from('REPLY|'));
    socket.end('ping');
    assert.equal(await received, 'REPLY|220 hello|ping');
    assert.equal((await a.ended).errno, 0);
    front.close();
    await greeter.close();
  });

  it("tries each of a name's addresses in turn, within the attempt's timeout; a name that does not resolve fails as Node says it", async () => {
    const refusing = await refusingPort();
    const listening = await startServer((s) => s.end());
    // A resolver with two answers for the name: the first refuses, the second listens.
    const twoAnswers = resolving(relay.dial, async () => ['127.0.0.2', '127.0.0.1']);
    const both = await startServer((s) => s.end());
    const id = await twoAnswers({ host: 'backend.test', port: both.port }, 5_000, new ConnectCancel());
    assert.equal(typeof id, 'number');
    relay.destroy(id);
    const none = resolving(relay.dial, () => Promise.reject(Object.assign(new Error('getaddrinfo ENOTFOUND backend.test'), { code: 'ENOTFOUND' })));
    await assert.rejects(none({ host: 'backend.test', port: listening.port }, 5_000, new ConnectCancel()), { code: 'ENOTFOUND' });
    const refused = resolving(relay.dial, async () => ['127.0.0.1']);
    await assert.rejects(refused({ host: 'backend.test', port: refusing }, 5_000, new ConnectCancel()), { code: 'ECONNREFUSED' });
    const silent = resolving(relay.dial, () => new Promise<readonly string[]>(() => undefined));
    await assert.rejects(silent({ host: 'backend.test', port: listening.port }, 50, new ConnectCancel()), /connect timed out after 50 ms/);
    assert.equal(relay.stats().connections, 0, 'nothing left open');
    await listening.close();
    await both.close();
  });

  it('dials an IPv6 address with its zone', { skip: !hasIPv6Loopback() && 'no IPv6 loopback here' }, async () => {
    const v6 = await startServer((s) => s.end('v6'), '::1');
    for (const host of ['::1%lo', `::1%${interfaceIndex('lo')}`]) {
      const id = await relay.dial({ host, port: v6.port }, 5_000, new ConnectCancel());
      relay.destroy(id);
    }
    // A zone that names no interface: a link-local address without its scope, which the kernel refuses.
    await assert.rejects(relay.dial({ host: 'fe80::1%no-such-interface', port: v6.port }, 5_000, new ConnectCancel()));
    assert.equal(relay.stats().connections, 0, 'nothing left open');
    await v6.close();
  });

  it('reports bytes and idle time while open, and destroy() closes both sides at once', async () => {
    const front = await startFront(relay, relayingTo(echo.port));
    const socket = connect({ port: front.port, host: '127.0.0.1', allowHalfOpen: true });
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    const a = await front.next();
    socket.write('12345');
    await once(socket, 'data');
    assert.deepEqual(a.client.bytes(), [5, 5]);
    const idleBefore = a.client.idleMs();
    await new Promise((r) => setTimeout(r, 30));
    assert.ok(a.client.idleMs() >= idleBefore + 20, `idle ${a.client.idleMs()} after ${idleBefore}`);
    const ended = once(socket, 'end');
    assert.deepEqual(a.client.destroy(), [5, 5]);
    await within(ended, 5_000, 'the client to see the FIN');
    assert.throws(() => a.client.bytes(), /no such connection/);
    front.close();
  });

  it('passes a reset on as a reset', async () => {
    const resetting = await startServer((socket) => socket.once('data', () => socket.resetAndDestroy()));
    const front = await startFront(relay, relayingTo(resetting.port));
    const socket = connect({ port: front.port, host: '127.0.0.1', allowHalfOpen: true });
    const error = deferred<string>();
    socket.on('error', (e: NodeJS.ErrnoException) => error.resolve(e.code ?? ''));
    await once(socket, 'connect');
    socket.write('boom');
    assert.equal(await within(error.promise, 5_000, 'the reset'), 'ECONNRESET');
    assert.equal((await front.accepted[0]!.ended).errno > 0, true);
    front.close();
    await resetting.close();
  });

  it('refuses new clients once unlistened, and the open ones carry on', async () => {
    const front = await startFront(relay, relayingTo(echo.port));
    const open = connect({ port: front.port, host: '127.0.0.1', allowHalfOpen: true });
    await once(open, 'connect');
    await front.next();
    front.close();
    const refused = connect({ port: front.port, host: '127.0.0.1' });
    const [err] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
    assert.equal(err.code, 'ECONNREFUSED');
    const received = readAll(open);
    open.on('end', () => open.end());
    open.end('still relayed');
    assert.equal(await received, 'still relayed');
  });

  it('keeps the process alive while it listens, as a server does', async () => {
    // A process whose only handle is a native listener: it answers each client, and exits
    // once the listener is closed (after its first client).
    const script = `
      import { NativeRelay } from ${JSON.stringify(new URL('../src/connection/native-relay.js', import.meta.url).href)};
      const relay = NativeRelay.load();
      const acceptor = await relay.listen({ host: '127.0.0.1', port: 0 }, {
        firstRead: 65536,
        onError() {},
        onClient(client) {
          client.listen({ received() {}, ended() {}, drained() {}, closed() {} });
          client.end('alive');
          acceptor.close();
        },
      });
      console.log(acceptor.address.port);`;
    const child = spawn(process.execPath, ['--no-node-snapshot', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = once(child, 'close'); // after its stdio closed too: no pipe left open here
    const [line] = (await within(once(child.stdout, 'data'), 10_000, 'the port')) as [Buffer];
    await new Promise((r) => setTimeout(r, 200)); // a process with nothing holding it would be gone by now
    const socket = connect({ port: Number(line.toString().trim()), host: '127.0.0.1', allowHalfOpen: true });
    const received = readAll(socket);
    socket.on('end', () => socket.end());
    assert.equal(await received, 'alive');
    const [code] = (await within(exited, 10_000, 'the exit once nothing listens')) as [number];
    assert.equal(code, 0);
  });

  it('out of file descriptors, closes waiting clients at once rather than spin, and accepts again once some are free', async () => {
    // A process allowed 64 descriptors, which greets each client and keeps it open; "stats"
    // is answered with how many clients were shed.
    const script = `
      import { NativeRelay } from ${JSON.stringify(new URL('../src/connection/native-relay.js', import.meta.url).href)};
      const relay = NativeRelay.load();
      const acceptor = await relay.listen({ host: '127.0.0.1', port: 0 }, {
        firstRead: 65536,
        onError() {},
        onClient(client) {
          client.listen({
            received(chunk) { if (chunk.toString() === 'stats') client.end('shed=' + relay.stats().shed); },
            ended() { client.end(); },
            drained() {},
            closed() {},
          });
          client.write('hi');
        },
      });
      console.log(acceptor.address.port);`;
    const child = spawn('prlimit', ['--nofile=64:64', process.execPath, '--no-node-snapshot', '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const closed = once(child, 'close');
    try {
      const [line] = (await within(once(child.stdout, 'data'), 10_000, 'the port')) as [Buffer];
      const port = Number(line.toString().trim());
      // Each settles as greeted (accepted, holding a descriptor) or closed without a byte (shed):
      // a FIN or a reset first. A half-open probe (allowHalfOpen) sees a shed as 'end' alone.
      const outcome = (socket: Socket): Promise<'greeted' | 'shed'> =>
        new Promise((resolve) => {
          socket.on('error', () => undefined);
          socket.once('data', () => resolve('greeted'));
          socket.once('end', () => resolve('shed'));
          socket.once('close', () => resolve('shed'));
        });
      const sockets = Array.from({ length: 100 }, () => connect({ port, host: '127.0.0.1' }));
      const outcomes = await within(Promise.all(sockets.map(outcome)), 20_000, 'every client greeted or shed');
      const shed = outcomes.filter((o) => o === 'shed').length;
      assert.ok(shed > 0 && shed < 100, `greeted ${100 - shed}, shed ${shed}`);
      for (const socket of sockets) socket.destroy();
      // Until the process has closed those, a new client may be shed too: ask until greeted.
      let later = 0;
      const greeted = async (): Promise<Socket> => {
        for (;;) {
          const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
          if ((await outcome(socket)) === 'greeted') return socket;
          socket.destroy();
          later++;
        }
      };
      const asking = await within(greeted(), 10_000, 'a client greeted once descriptors are free');
      const answer = readAll(asking);
      asking.on('end', () => asking.end());
      asking.write('stats');
      assert.equal(await within(answer, 10_000, 'the stats'), `shed=${shed + later}`);
    } finally {
      child.kill();
      await closed; // its stdio too: the next test counts this process's descriptors
    }
  });

  it('leaves no file descriptor behind once its clients and relays have ended', async () => {
    // One relay first, so that whatever Node opens lazily is open before the count.
    const warm = await startFront(relay, relayingTo(echo.port));
    await roundTrip(warm.port, Buffer.from('warm'));
    await warm.accepted[0]!.ended;
    warm.close();
    const baseline = openFds() - 2 * relay.stats().sparePipes;

    const front = await startFront(relay, relayingTo(echo.port));
    await Promise.all(Array.from({ length: 100 }, (_, i) => roundTrip(front.port, randomBytes(i % 2 === 0 ? 300_000 : 10))));
    await Promise.all(front.accepted.map((a) => a.ended));
    front.close();
    assert.equal(relay.stats().connections, 0);
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
    assert.equal(relay.stats().connections, 0, 'nothing left open');
  });

  it('holds at most SWITCHYARD_RELAY_PIPES pipes for clients that do not read; the rest copy, and no byte is lost', async () => {
    // More than the kernel's socket buffers hold on the way (several MiB on loopback).
    const payload = randomBytes(32 * 1024 * 1024);
    const blaster = await startServer((socket) => socket.end(payload));
    const front = await startFront(relay, relayingTo(blaster.port));
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
    await Promise.all(front.accepted.map((a) => a.ended));
    assert.deepEqual([relay.stats().connections, relay.stats().lentPipes], [0, 0]);
    front.close();
    await blaster.close();
  });
});
