/**
 * The transport under the router: half-close, backpressure, the pre-decision limits, connect
 * failover and retries, the PROXY protocol header, and resets. Real sockets on port 0; every
 * wait is on an event or a log record, bounded by a timeout.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { once } from 'node:events';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { createServer, type Socket } from 'node:net';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { defaultLimits } from '../src/config.js';
import { TenantListener } from '../src/listener.js';
import { bindListener, canHandOff } from '../src/node/handoff.js';
import { MissingRouter } from '../src/tenants/missing-router.js';
import {
  CapturedLog,
  deferred,
  dial,
  exchange,
  readAll,
  rss,
  sampleRss,
  startCliProxy,
  startEchoBackend,
  startProxy,
  startServer,
  within,
  type CliProcess,
  type TestProxy,
  type TestServer,
  refusingPort,
  tryConnect,
} from './helpers.js';
import { attemptChannel, type AttemptMessage } from '../src/connection/upstream.js';

const MiB = 1024 * 1024;
/** Bytes pushed through the proxy in each backpressure test. */
const TRANSFER_BYTES = 300 * MiB;
/** How much the proxy's resident set may grow over its baseline during that transfer. */
const RSS_GROWTH_LIMIT = 100 * MiB;
/** The slow reader takes at most SLOW_BURST bytes every SLOW_PERIOD_MS (about 50 MiB/s). */
const SLOW_BURST = 512 * 1024;
const SLOW_PERIOD_MS = 10;

/** A port nothing listens on (bound once, then released). */
/** A port nothing listens on, and nothing will unless the test binds it. */
const closedPort = refusingPort;

/** Resolves with the socket's error code when it closes ('' when it closed without an error). */
function closeOutcome(socket: Socket): Promise<string> {
  let code = '';
  socket.on('error', (e: NodeJS.ErrnoException) => {
    code = e.code ?? e.message;
  });
  return new Promise((resolve) => socket.once('close', () => resolve(code)));
}

/** Resolves once `socket` has received data that ends with `suffix` (everything so far, latin1). */
function receiveUntil(socket: Socket, suffix: string): Promise<string> {
  let text = '';
  return new Promise((resolve, reject) => {
    const onData = (b: Buffer): void => {
      text += b.toString('latin1');
      if (!text.endsWith(suffix)) return;
      socket.off('data', onData);
      socket.off('close', onClose);
      resolve(text);
    };
    const onClose = (): void => reject(new Error(`closed before ${JSON.stringify(suffix)}; got ${JSON.stringify(text)}`));
    socket.on('data', onData);
    socket.once('close', onClose);
  });
}

/**
 * A proxy whose router sends every client to a closed port with 1,000 connect tries: a client
 * stays in the connecting phase. `firstRefusal` resolves once the first attempt was refused.
 */
async function proxyRetryingConnects(): Promise<{ p: TestProxy; watch: ReturnType<typeof watchConnects>; firstRefusal: Promise<void> }> {
  const port = await closedPort();
  const p = await startProxy(`proxy(() => ({ remote: '127.0.0.1:${port}' }));`, {
    limits: { connectTries: 1000, connectRetryDelayMs: 20 },
  });
  const watch = watchConnects();
  const refused = deferred<void>();
  watch.onRefused((r) => {
    if (r === port) refused.resolve();
  });
  return { p, watch, firstRefusal: refused.promise };
}

describe('half-close', () => {
  let proxy: Awaited<ReturnType<typeof startProxy>>;
  let backend: TestServer;
  /** What the backend of each connection saw, in accept order. */
  const seen: { data: string; ended: Promise<string> }[] = [];

  before(async () => {
    // The backend answers only once the client's side is closed (like `wc`, or an HTTP/1.0
    // request body delimited by EOF), in two writes, then closes its side.
    backend = await startServer((socket) => {
      const ended = deferred<string>();
      const entry = { data: '', ended: ended.promise };
      seen.push(entry);
      socket.on('data', (b: Buffer) => {
        entry.data += b.toString('latin1');
      });
      socket.on('end', () => {
        ended.resolve(entry.data);
        socket.write(`got ${entry.data.length} bytes;`);
        setImmediate(() => socket.end(' bye'));
      });
    });
    proxy = await startProxy(`proxy((data) => data.endsWith('\\n') ? { remote: '127.0.0.1:${backend.port}' } : { noop: true });`);
  });
  after(async () => {
    await proxy.close();
    await backend.close();
  });

  it('forwards the client FIN while relaying; the backend still answers after it', async () => {
    const client = await dial(proxy.port);
    const answer = readAll(client);
    client.write('request\n');
    // The connection is relayed once the backend has the request; only then the FIN.
    await within(
      new Promise<void>((resolve) => backend.server.once('connection', (s: Socket) => s.once('data', () => resolve()))),
      5000,
      'backend got the request',
    );
    client.end();
    assert.equal(await within(seen.at(-1)!.ended, 5000, "backend's 'end'"), 'request\n');
    assert.equal(await within(answer, 5000, 'answer after the half-close'), 'got 8 bytes; bye');
    const closed = await proxy.log.closed(1);
    assert.equal(closed.decision, 'remote');
    assert.equal(closed.reason, undefined);
    assert.equal(closed.bytesIn, 8);
    assert.equal(closed.bytesOut, 16);
  });

  it('forwards a FIN that arrives with the request, before the router decided', async () => {
    const client = await dial(proxy.port);
    const answer = readAll(client);
    client.end('all at once\n'); // data and FIN together
    assert.equal(await within(answer, 5000, 'answer'), 'got 12 bytes; bye');
    assert.equal(await seen.at(-1)!.ended, 'all at once\n');
    const closed = await proxy.log.closed(2);
    assert.equal(closed.decision, 'remote');
    assert.equal(closed.reason, undefined);
  });

  it('forwards the backend FIN; the client keeps sending and the backend keeps receiving', async () => {
    const received = deferred<string>();
    const ended = deferred<string>();
    const server = await startServer((socket) => {
      let text = '';
      socket.once('data', () => socket.end('banner, and no more from me')); // half-closes first
      socket.on('data', (b: Buffer) => {
        text += b.toString('latin1');
        if (text.endsWith('second\n')) received.resolve(text);
      });
      socket.on('end', () => ended.resolve(text));
    });
    const p = await startProxy(`proxy(() => ({ remote: '127.0.0.1:${server.port}' }));`);
    try {
      const client = await dial(p.port);
      const clientGotEnd = once(client, 'end');
      const all = readAll(client);
      client.write('first\n');
      await within(clientGotEnd, 5000, "client's 'end' (the backend's FIN)");
      assert.equal(client.writable, true);
      client.write('second\n');
      assert.equal(await within(received.promise, 5000, 'data after the backend FIN'), 'first\nsecond\n');
      client.end('third\n');
      assert.equal(await within(ended.promise, 5000, "backend's 'end'"), 'first\nsecond\nthird\n');
      assert.equal(await within(all, 5000, 'client close'), 'banner, and no more from me');
      const closed = await p.log.closed();
      assert.equal(closed.reason, undefined);
      assert.equal(closed.bytesIn, 'first\nsecond\nthird\n'.length);
      await within(once(server.accepted[0]!, 'close'), 5000, 'backend socket close');
      assert.equal(p.listener.connectionCount, 0);
    } finally {
      await p.close();
      await server.close();
    }
  });
});



/** Block `i` of a transfer: 1 MiB of fixed random bytes, stamped with its index. */
const pattern = randomBytes(MiB);
function block(i: number): Buffer {
  const b = Buffer.from(pattern);
  b.writeUInt32BE(i, 0);
  b.writeUInt32BE(i, MiB / 2);
  return b;
}

/** Writes `total` bytes as fast as `socket` takes them (respecting backpressure), then ends. */
async function pump(socket: Socket, total: number, hash: Hash): Promise<void> {
  for (let i = 0; i * MiB < total; i++) {
    const chunk = block(i).subarray(0, Math.min(MiB, total - i * MiB));
    hash.update(chunk);
    if (!socket.write(chunk)) {
      await new Promise<void>((resolve, reject) => {
        const onClose = (): void => reject(new Error(`closed after ${i} MiB`));
        socket.once('close', onClose);
        socket.once('drain', () => {
          socket.off('close', onClose);
          resolve();
        });
      });
    }
  }
  socket.end();
}

/**
 * Reads `socket` slowly: at most SLOW_BURST bytes per SLOW_PERIOD_MS, paused in between.
 * Resolves with the byte count and digest at 'end'.
 */
function readSlowly(socket: Socket): Promise<{ bytes: number; digest: string }> {
  const hash = createHash('sha256');
  let bytes = 0;
  let budget = SLOW_BURST;
  socket.on('data', (b: Buffer) => {
    bytes += b.length;
    hash.update(b);
    budget -= b.length;
    if (budget <= 0) socket.pause();
  });
  const timer = setInterval(() => {
    budget = SLOW_BURST;
    socket.resume();
  }, SLOW_PERIOD_MS);
  return new Promise((resolve, reject) => {
    socket.once('end', () => {
      clearInterval(timer);
      resolve({ bytes, digest: hash.digest('hex') });
    });
    socket.once('close', () => {
      clearInterval(timer);
      reject(new Error(`closed before 'end' after ${bytes} bytes`));
    });
  });
}

describe('backpressure (switchyard as a separate process)', { timeout: 90_000 }, () => {
  let backend: TestServer;
  /** A fresh proxy process per test: RSS a previous transfer left behind would hide growth. */
  let proxy: CliProcess & { port: number };
  /** Set by each test: what the backend does with a connection after its first line. */
  let onRequest: (socket: Socket, line: string) => void = () => undefined;

  before(async () => {
    backend = await startServer((socket) => {
      socket.once('data', (b: Buffer) => onRequest(socket, b.toString('latin1')));
    });
  });
  beforeEach(async () => {
    proxy = await startCliProxy(`proxy((data) => data.endsWith('\\n') ? { remote: '127.0.0.1:${backend.port}' } : { noop: true });`);
    // Warm up (isolate, first connection), so the baseline is the proxy at rest.
    onRequest = (socket) => socket.end('ok');
    const warm = await exchange(proxy.port, ['warmup\n']);
    assert.equal(warm.data, 'ok');
  });
  afterEach(async () => {
    proxy.child.kill('SIGTERM');
    await within(proxy.exited, 15_000, 'proxy exit');
  });
  after(async () => {
    await backend.close();
  });

  it(`holds a fast backend back for a slow client (${TRANSFER_BYTES / MiB} MiB), with bounded memory`, async () => {
    const sent = createHash('sha256');
    const pumped = deferred<void>();
    onRequest = (socket, line) => {
      assert.equal(line, 'download\n');
      pump(socket, TRANSFER_BYTES, sent).then(pumped.resolve, pumped.reject);
    };
    const baseline = rss(proxy.pid);
    const sampler = sampleRss(proxy.pid);
    const client = await dial(proxy.port);
    const started = Date.now();
    client.write('download\n');
    const result = await within(readSlowly(client), 60_000, 'slow download');
    client.end();
    await within(pumped.promise, 5000, 'backend done');
    sampler.stop();
    const seconds = (Date.now() - started) / 1000;
    const growth = sampler.max - baseline;
    console.log(
      `download: ${TRANSFER_BYTES / MiB} MiB in ${seconds.toFixed(1)} s; proxy RSS ${(baseline / MiB).toFixed(0)} MiB at rest, max ${(sampler.max / MiB).toFixed(0)} MiB (+${(growth / MiB).toFixed(1)} MiB)`,
    );
    assert.equal(result.bytes, TRANSFER_BYTES);
    assert.equal(result.digest, sent.digest('hex'));
    assert.ok(growth < RSS_GROWTH_LIMIT, `proxy RSS grew by ${(growth / MiB).toFixed(1)} MiB (limit ${RSS_GROWTH_LIMIT / MiB})`);
    const closed = await proxy.log.waitFor((r) => r.msg === 'connection closed' && r.bytesOut === TRANSFER_BYTES, 15_000);
    assert.equal(closed.bytesIn, 'download\n'.length);
    assert.equal(closed.reason, undefined);
  });

  it(`holds a fast client back for a slow backend (${TRANSFER_BYTES / MiB} MiB), with bounded memory`, async () => {
    const received = deferred<{ bytes: number; digest: string }>();
    onRequest = (socket, line) => {
      assert.equal(line, 'upload\n'); // the client streams only after the answer below
      readSlowly(socket).then(received.resolve, received.reject);
      socket.write('go\n');
    };
    const baseline = rss(proxy.pid);
    const sampler = sampleRss(proxy.pid);
    const client = await dial(proxy.port);
    const allAnswers = readAll(client);
    const started = Date.now();
    const go = receiveUntil(client, 'go\n');
    client.write('upload\n');
    await within(go, 5000, 'go');
    const sent = createHash('sha256');
    await within(pump(client, TRANSFER_BYTES, sent), 60_000, 'fast upload');
    const result = await within(received.promise, 60_000, 'slow backend read');
    sampler.stop();
    const seconds = (Date.now() - started) / 1000;
    const growth = sampler.max - baseline;
    console.log(
      `upload: ${TRANSFER_BYTES / MiB} MiB in ${seconds.toFixed(1)} s; proxy RSS ${(baseline / MiB).toFixed(0)} MiB at rest, max ${(sampler.max / MiB).toFixed(0)} MiB (+${(growth / MiB).toFixed(1)} MiB)`,
    );
    assert.equal(result.bytes, TRANSFER_BYTES);
    assert.equal(result.digest, sent.digest('hex'));
    assert.ok(growth < RSS_GROWTH_LIMIT, `proxy RSS grew by ${(growth / MiB).toFixed(1)} MiB (limit ${RSS_GROWTH_LIMIT / MiB})`);
    // The backend closes its side once it has everything; the client then sees the FIN.
    for (const s of backend.accepted) if (!s.destroyed) s.end();
    assert.equal(await within(allAnswers, 5000, 'client close'), 'go\n');
    const closed = await proxy.log.waitFor((r) => r.msg === 'connection closed' && r.bytesIn === TRANSFER_BYTES + 'upload\n'.length, 15_000);
    assert.equal(closed.reason, undefined);
  });
});

describe('buffer cap before a decision', () => {
  it('closes a client whose router says noop on a full buffer (maxBufferBytes 1024); the router never sees more', async () => {
    const p = await startProxy(`proxy((data) => { console.log('len ' + data.length); return { noop: true }; });`, {
      limits: { maxBufferBytes: 1024 },
    });
    try {
      // Up to the limit the router asks for more, and the client stays.
      const client = await dial(p.port);
      const outcome = readAll(client);
      client.on('end', () => client.end());
      client.write(Buffer.alloc(1000, 'a'));
      await p.log.waitFor((r) => r.msg === 'len 1000');
      assert.equal(p.log.find('connection rejected').length, 0);
      client.write(Buffer.alloc(100, 'b')); // past the limit: the router sees 1024 bytes, and noop closes
      const rejected = await p.log.waitFor((r) => r.msg === 'connection rejected');
      assert.equal(rejected.reason, 'buffer_limit');
      assert.equal(await within(outcome, 5000, 'client closed'), '');
      const closed = await p.log.closed();
      assert.equal(closed.reason, 'buffer_limit');
      assert.equal(closed.decision, 'noop');

      // One large write: the router sees at most the limit.
      const big = await exchange(p.port, [Buffer.alloc(5000, 'c')]);
      assert.equal(big.data, '');
      assert.equal((await p.log.closed(2)).reason, 'buffer_limit');
      assert.equal(p.listener.rejections.at(-1)?.reason, 'buffer_limit');
      assert.equal(p.listener.rejections.at(-1)?.firstBytes.toString('latin1'), 'c'.repeat(256));
      const lengths = p.log.records.filter((r) => r.msg.startsWith('len ')).map((r) => Number(r.msg.slice(4)));
      assert.equal(Math.max(...lengths), 1024, `the router saw ${lengths.join(', ')}`);
    } finally {
      await p.close();
    }
  });

  it('a new limit applies to the clients accepted after it, from their first read', async () => {
    const p = await startProxy(`proxy((data) => { console.log('len ' + data.length); return { noop: true }; });`);
    try {
      p.listener.limits = { ...p.listener.limits, maxBufferBytes: 512 };
      const big = await exchange(p.port, [Buffer.alloc(5000, 'd')]);
      assert.equal(big.data, '');
      assert.equal((await p.log.closed()).reason, 'buffer_limit');
      const lengths = p.log.records.filter((r) => r.msg.startsWith('len ')).map((r) => Number(r.msg.slice(4)));
      assert.equal(Math.max(...lengths), 512, `the router saw ${lengths.join(', ')}`);
    } finally {
      await p.close();
    }
  });

  it('applies the default limit of 65536 bytes', async () => {
    const p = await startProxy(`proxy((data) => { console.log('len ' + data.length); return { noop: true }; });`);
    try {
      const client = await dial(p.port);
      const outcome = readAll(client);
      client.on('end', () => client.end());
      client.write(Buffer.alloc(65536 + 1000, 'x'));
      assert.equal(await within(outcome, 5000, 'client closed'), '');
      const closed = await p.log.closed();
      assert.equal(closed.reason, 'buffer_limit');
      const lengths = p.log.records.filter((r) => r.msg.startsWith('len ')).map((r) => Number(r.msg.slice(4)));
      assert.equal(Math.max(...lengths), 65536, `the router saw ${lengths.join(', ')}`);
    } finally {
      await p.close();
    }
  });

  it('holds back a client that sends more than the limit at once, and relays every byte once the router decides', async () => {
    const received = deferred<{ bytes: number; digest: string }>();
    const backend = await startServer((socket) => {
      const hash = createHash('sha256');
      let bytes = 0;
      socket.on('data', (b: Buffer) => {
        bytes += b.length;
        hash.update(b);
      });
      socket.on('end', () => {
        received.resolve({ bytes, digest: hash.digest('hex') });
        socket.end();
      });
    });
    // A router that takes 15 ms to decide, while the client's bytes keep coming.
    const p = await startProxy(
      `proxy((data) => {
        console.log('len ' + data.length);
        const until = Date.now() + 15; while (Date.now() < until) {}
        return data.includes('\\n') ? { remote: '127.0.0.1:${backend.port}' } : { noop: true };
      });`,
      { limits: { maxBufferBytes: 1024 } },
    );
    try {
      const body = randomBytes(4 * MiB);
      const request = Buffer.concat([Buffer.from('PUT /x\n'), body]);
      const client = await dial(p.port);
      const answer = readAll(client);
      client.end(request); // the header and the whole body in one write
      const got = await within(received.promise, 30_000, 'the backend to get everything');
      assert.equal(got.bytes, request.length);
      assert.equal(got.digest, createHash('sha256').update(request).digest('hex'));
      assert.equal(await within(answer, 5000, 'client closed'), '');
      const closed = await p.log.closed();
      assert.equal(closed.decision, 'remote');
      assert.equal(closed.reason, undefined);
      assert.equal(closed.bytesIn, request.length);
      const lengths = p.log.records.filter((r) => r.msg.startsWith('len ')).map((r) => Number(r.msg.slice(4)));
      assert.ok(Math.max(...lengths) <= 1024, `the router saw ${lengths.join(', ')}`);
    } finally {
      await p.close();
      await backend.close();
    }
  });
});

describe('decision deadline', () => {
  it('closes a slowloris client at decisionTimeoutMs', async () => {
    const p = await startProxy(`proxy(() => ({ noop: true }));`, { limits: { decisionTimeoutMs: 300 } });
    try {
      const client = await dial(p.port);
      const started = Date.now();
      const outcome = readAll(client);
      client.on('end', () => client.end());
      let sent = 0;
      const trickle = setInterval(() => {
        if (client.writable) {
          client.write('.');
          sent++;
        }
      }, 40);
      await within(outcome, 5000, 'slowloris closed');
      clearInterval(trickle);
      const elapsed = Date.now() - started;
      const closed = await p.log.closed();
      assert.equal(closed.reason, 'decision_timeout');
      assert.equal(closed.decision, 'noop'); // the router kept answering; the deadline still holds
      assert.ok((closed.durationMs as number) >= 300 - 1, `closed after ${String(closed.durationMs)} ms`); // timers may fire 1 ms early by Date.now()
      assert.ok(elapsed < 3000, `closed only after ${elapsed} ms`);
      assert.ok(sent >= 3, `sent ${sent} bytes`);
      assert.equal((await p.log.waitFor((r) => r.msg === 'connection rejected')).reason, 'decision_timeout');
      assert.equal(p.listener.connectionCount, 0);
    } finally {
      await p.close();
    }
  });

  it('closes a client that sends nothing at decisionTimeoutMs', async () => {
    const p = await startProxy(`proxy(() => ({ noop: true }));`, { limits: { decisionTimeoutMs: 300 } });
    try {
      const client = await dial(p.port);
      const started = Date.now();
      const outcome = readAll(client);
      client.on('end', () => client.end());
      assert.equal(await within(outcome, 5000, 'silent client closed'), '');
      const elapsed = Date.now() - started;
      assert.ok(elapsed >= 250 && elapsed < 3000, `closed after ${elapsed} ms`);
      const closed = await p.log.closed();
      assert.equal(closed.reason, 'decision_timeout');
      assert.equal(closed.decision, 'none');
      assert.equal(closed.bytesIn, 0);
    } finally {
      await p.close();
    }
  });

  it('destroys a client that ignores the FIN after the deadline (linger)', { timeout: 20_000 }, async () => {
    const p = await startProxy(`proxy(() => ({ noop: true }));`, { limits: { decisionTimeoutMs: 100 } });
    try {
      const client = await dial(p.port); // never ends its side
      const gotEnd = once(client, 'end');
      client.resume();
      await within(gotEnd, 5000, 'FIN from the proxy');
      assert.equal(p.listener.connectionCount, 1, 'the connection lingers while the client has not closed');
      // The proxy gives up on the client after its linger time (5 s) and destroys its socket.
      const closed = await p.log.waitFor((r) => r.msg === 'connection closed', 10_000);
      assert.equal(closed.reason, 'decision_timeout');
      // Node's timers run on the event loop's cached clock, so each may fire up to a millisecond
      // early by Date.now(): two of them, 2 ms.
      assert.ok((closed.durationMs as number) >= 100 + 5000 - 2, `closed after ${String(closed.durationMs)} ms`);
      assert.equal(p.listener.connectionCount, 0);
      client.destroy();
    } finally {
      await p.close();
    }
  });
});

/**
 * Watches the proxy's connect attempts in this process (each is published on
 * `attemptChannel`, whichever relay makes it), counting refusals and connects per port.
 */
function watchConnects(): { refused: Map<number, number>; connected: Map<number, number>; onRefused(f: (port: number) => void): void; stop(): void } {
  const refused = new Map<number, number>();
  const connected = new Map<number, number>();
  const listeners: ((port: number) => void)[] = [];
  const onAttempt = (message: unknown): void => {
    const { endpoint, error } = message as AttemptMessage;
    if (error === undefined) connected.set(endpoint.port, (connected.get(endpoint.port) ?? 0) + 1);
    else if (error.code === 'ECONNREFUSED') {
      refused.set(endpoint.port, (refused.get(endpoint.port) ?? 0) + 1);
      for (const f of listeners) f(endpoint.port);
    }
  };
  attemptChannel.subscribe(onAttempt);
  return {
    refused,
    connected,
    onRefused: (f) => listeners.push(f),
    stop: () => attemptChannel.unsubscribe(onAttempt),
  };
}

describe('connect: failover, retries, timeout', () => {
  let echo: TestServer;
  before(async () => {
    echo = await startEchoBackend();
  });
  after(async () => {
    await echo.close();
  });

  it('fails over to the next candidate after connectTries refusals of the first', async () => {
    const refusedPort = await closedPort();
    const p = await startProxy(`proxy(() => ({ remote: ['127.0.0.1:${refusedPort}', '127.0.0.1:${echo.port}'] }));`, {
      limits: { connectTries: 2, connectRetryDelayMs: 150 },
    });
    const watch = watchConnects();
    try {
      const started = Date.now();
      const result = await exchange(p.port, ['hello']);
      const elapsed = Date.now() - started;
      assert.deepEqual({ data: result.data, clean: result.clean }, { data: `${echo.port}:hello`, clean: true });
      assert.equal(watch.refused.get(refusedPort), 2, 'the refused candidate is tried connectTries times');
      assert.equal(watch.connected.get(echo.port), 1);
      assert.ok(elapsed >= 150 - 1, `the retry waits connectRetryDelayMs (took ${elapsed} ms)`); // timers may fire 1 ms early by Date.now()
      const closed = await p.log.closed();
      assert.equal(closed.backend, `127.0.0.1:${echo.port}`);
      assert.equal(closed.decision, 'remote');
      assert.equal(closed.reason, undefined);
    } finally {
      watch.stop();
      await p.close();
    }
  });

  it('gives up after every candidate failed: connect_failed naming the last, proxyConnectError runs', async () => {
    const [a, b] = [await closedPort(), await closedPort()];
    const p = await startProxy(
      `proxyConnectError((remote) => console.log('failed: ' + remote));
       proxy(() => ({ remote: ['127.0.0.1:${a}', '127.0.0.1:${b}'] }));`,
      { limits: { connectTries: 3, connectRetryDelayMs: 5 } },
    );
    const watch = watchConnects();
    try {
      const result = await exchange(p.port, ['hello']);
      assert.deepEqual({ data: result.data, clean: result.clean }, { data: '', clean: true });
      assert.equal(watch.refused.get(a), 3);
      assert.equal(watch.refused.get(b), 3);
      await p.log.waitFor((r) => r.msg === `failed: 127.0.0.1:${b}`);
      const closed = await p.log.closed();
      assert.equal(closed.reason, 'connect_failed');
      assert.equal(closed.backend, `127.0.0.1:${b}`);
    } finally {
      watch.stop();
      await p.close();
    }
  });

  it('retries the same backend: one that starts listening after the first attempt failed is reached', async () => {
    const port = await closedPort();
    const late = createServer((socket) => socket.once('data', (d) => socket.end(`late:${d.toString('latin1')}`)));
    late.on('error', () => undefined);
    const p = await startProxy(`proxy(() => ({ remote: '127.0.0.1:${port}' }));`, {
      limits: { connectTries: 3, connectRetryDelayMs: 100 },
    });
    const watch = watchConnects();
    // The first refusal starts the backend. Its listen() runs on the next tick, long before the
    // retry's timer (connectRetryDelayMs) fires, so there is no race.
    let started = false;
    watch.onRefused((refusedPort) => {
      if (refusedPort !== port || started) return;
      started = true;
      late.listen(port, '127.0.0.1');
    });
    try {
      const result = await exchange(p.port, ['knock']);
      assert.equal(result.data, 'late:knock');
      assert.equal(watch.refused.get(port), 1);
      assert.equal(watch.connected.get(port), 1);
      const closed = await p.log.closed();
      assert.equal(closed.reason, undefined);
      assert.equal(closed.backend, `127.0.0.1:${port}`);
    } finally {
      watch.stop();
      await p.close();
      if (late.listening) {
        late.close();
        await once(late, 'close');
      }
    }
  });

  it('forwards, after the replayed buffer, what the client sends (and its FIN) while the proxy is still connecting', async () => {
    const port = await closedPort();
    const got = deferred<string>();
    const late = createServer({ allowHalfOpen: true }, (socket) => {
      let text = '';
      socket.on('data', (b: Buffer) => {
        text += b.toString('latin1');
      });
      socket.on('end', () => {
        got.resolve(text);
        socket.end('done');
      });
    });
    late.on('error', () => undefined);
    const p = await startProxy(`proxy((data) => data.endsWith('\\n') ? { remote: '127.0.0.1:${port}' } : { noop: true });`, {
      limits: { connectTries: 3, connectRetryDelayMs: 100 },
    });
    const watch = watchConnects();
    try {
      const client = await dial(p.port);
      const answer = readAll(client);
      watch.onRefused((refusedPort) => {
        if (refusedPort !== port || late.listening) return;
        // The first attempt failed; the next is connectRetryDelayMs away. Meanwhile:
        client.end('second part, sent while connecting');
        late.listen(port, '127.0.0.1');
      });
      client.write('first line\n');
      assert.equal(await within(got.promise, 5000, 'backend end'), 'first line\nsecond part, sent while connecting');
      assert.equal(await within(answer, 5000, 'answer'), 'done');
      assert.equal(watch.refused.get(port), 1);
      assert.equal((await p.log.closed()).reason, undefined);
    } finally {
      watch.stop();
      await p.close();
      if (late.listening) {
        late.close();
        await once(late, 'close');
      }
    }
  });

  it("times out a connect attempt after the decision's connectTimeout (a backend whose accept queue is full)", async () => {
    // A listener with backlog 1 in a process that never accepts: two handshakes fill its
    // accept queue, and Linux then drops further SYNs, so a connect hangs until timed out.
    const stuck: ChildProcess = spawn(
      process.execPath,
      [
        '-e',
        `const s = require('net').createServer();
         s.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
           process.stdout.write(s.address().port + '\\n');
           Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0); // never returns to the loop
         });`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const fillers: Socket[] = [];
    let p: Awaited<ReturnType<typeof startProxy>> | undefined;
    try {
      const [first] = (await within(once(stuck.stdout!, 'data'), 10_000, 'stuck listener port')) as [Buffer];
      const stuckPort = Number(first.toString().trim());
      for (let i = 0; i < 2; i++) fillers.push(await within(dial(stuckPort), 5000, 'filling the accept queue'));
      p = await startProxy(
        `proxyConnectError((remote) => console.log('connect error: ' + remote));
         proxy(() => ({ remote: '127.0.0.1:${stuckPort}', connectTimeout: 0.25 }));`,
        { limits: { connectTries: 2, connectRetryDelayMs: 10 } },
      );
      const started = Date.now();
      const result = await within(exchange(p.port, ['hello']), 10_000, 'client closed after the connect timeouts');
      const elapsed = Date.now() - started;
      assert.equal(result.data, '');
      assert.ok(elapsed >= 2 * 250 + 10 - 3, `two attempts of 250 ms each, took ${elapsed} ms`); // three timers, each may fire 1 ms early by Date.now()
      assert.ok(elapsed < 5000, `took ${elapsed} ms`);
      const rejected = await p.log.waitFor((r) => r.msg === 'connection rejected');
      assert.equal(rejected.reason, 'connect_failed');
      assert.match(String(rejected.detail), /timed out after 250 ms/);
      await p.log.waitFor((r) => r.msg === `connect error: 127.0.0.1:${stuckPort}`);
      assert.equal((await p.log.closed()).reason, 'connect_failed');
    } finally {
      for (const s of fillers) s.destroy();
      await p?.close();
      stuck.kill('SIGKILL');
    }
  });
});

describe('PROXY protocol', () => {
  let backend: TestServer;
  /** Everything each backend connection received, resolved at its 'end'. */
  let captured: Promise<Buffer>;
  let proxy: Awaited<ReturnType<typeof startProxy>>;

  before(async () => {
    backend = await startServer((socket) => {
      const chunks: Buffer[] = [];
      const done = deferred<Buffer>();
      captured = done.promise;
      socket.on('data', (b: Buffer) => chunks.push(b));
      socket.on('end', () => {
        done.resolve(Buffer.concat(chunks));
        socket.end('ok');
      });
    });
    proxy = await startProxy(
      `proxy((data) => {
         if (data.startsWith('v1 ')) return { remote: '127.0.0.1:${backend.port}', proxyProtocol: 1 };
         if (data.startsWith('v2 ')) return { remote: '127.0.0.1:${backend.port}', proxyProtocol: 2 };
         if (data.startsWith('d2 ')) return { remote: '127.0.0.1:${backend.port}', proxyProtocol: 2, data: 'rewritten' };
         return { close: true };
       });`,
    );
  });
  after(async () => {
    await proxy.close();
    await backend.close();
  });

  /** Every byte value, so the replay is checked to be binary-safe. */
  const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

  async function send(prefix: string): Promise<{ clientPort: number; bytes: Buffer }> {
    const client = await dial(proxy.port);
    const clientPort = client.localPort!;
    const answer = readAll(client);
    client.end(Buffer.concat([Buffer.from(prefix, 'latin1'), binary]));
    assert.equal(await within(answer, 5000, 'answer'), 'ok');
    return { clientPort, bytes: await captured };
  }

  it('sends the v1 line, then replays the buffer', async () => {
    const { clientPort, bytes } = await send('v1 ');
    const header = `PROXY TCP4 127.0.0.1 127.0.0.1 ${clientPort} ${proxy.port}\r\n`;
    assert.deepEqual(bytes, Buffer.concat([Buffer.from(header, 'latin1'), Buffer.from('v1 ', 'latin1'), binary]));
  });

  it('sends the v2 binary header, then replays the buffer', async () => {
    const { clientPort, bytes } = await send('v2 ');
    const header = Buffer.alloc(28);
    Buffer.from('0D0A0D0A000D0A515549540A', 'hex').copy(header, 0);
    header[12] = 0x21; // version 2, PROXY
    header[13] = 0x11; // TCP over IPv4
    header.writeUInt16BE(12, 14);
    Buffer.from([127, 0, 0, 1, 127, 0, 0, 1]).copy(header, 16);
    header.writeUInt16BE(clientPort, 24);
    header.writeUInt16BE(proxy.port, 26);
    assert.equal(bytes.subarray(0, 28).toString('hex'), header.toString('hex'));
    assert.deepEqual(bytes.subarray(28), Buffer.concat([Buffer.from('v2 ', 'latin1'), binary]));
  });

  it("sends the header before the router's data in place of the buffer", async () => {
    const { clientPort, bytes } = await send('d2 ');
    assert.equal(bytes.readUInt16BE(24), clientPort);
    assert.equal(bytes.subarray(28).toString('latin1'), 'rewritten');
  });
});

describe('resets', () => {
  it("passes a backend's reset mid-relay on to the client; nothing stays open", async () => {
    const backendSocket = deferred<Socket>();
    const backend = await startServer((socket) => {
      socket.once('data', () => {
        socket.write('partial');
        backendSocket.resolve(socket);
      });
    });
    const p = await startProxy(`proxy(() => ({ remote: '127.0.0.1:${backend.port}' }));`);
    try {
      const client = await dial(p.port);
      const outcome = closeOutcome(client);
      const partial = receiveUntil(client, 'partial');
      client.write('go');
      await within(partial, 5000, 'partial answer');
      (await backendSocket.promise).resetAndDestroy();
      const code = await within(outcome, 5000, 'client closed');
      assert.ok(code === 'ECONNRESET' || code === '', `client error ${code}`);
      assert.equal(code, 'ECONNRESET', 'the reset is passed on as a reset');
      await p.log.closed();
      assert.equal(p.listener.connectionCount, 0);
    } finally {
      await p.close();
      await backend.close();
    }
  });

  it("passes a client's reset mid-relay on to the backend; nothing stays open", async () => {
    const backendClosed = deferred<string>();
    const backend = await startServer((socket) => {
      void closeOutcome(socket).then(backendClosed.resolve);
      socket.once('data', () => socket.write('partial'));
    });
    const p = await startProxy(`proxy(() => ({ remote: '127.0.0.1:${backend.port}' }));`);
    try {
      const client = await dial(p.port);
      const partial = receiveUntil(client, 'partial');
      client.write('go');
      await within(partial, 5000, 'partial answer');
      client.resetAndDestroy();
      const code = await within(backendClosed.promise, 5000, 'backend socket closed');
      assert.ok(code === 'ECONNRESET' || code === '', `backend error ${code}`);
      await p.log.closed();
      assert.equal(p.listener.connectionCount, 0);
    } finally {
      await p.close();
      await backend.close();
    }
  });

  it('cleans up a client that resets before a decision', async () => {
    const p = await startProxy(`proxy((data) => { console.log('seen ' + data.length); return { noop: true }; });`);
    try {
      const client = await dial(p.port);
      client.write('partial request');
      await p.log.waitFor((r) => r.msg === 'seen 15');
      client.resetAndDestroy();
      const closed = await p.log.closed();
      assert.equal(closed.reason, 'client_closed');
      assert.equal(p.listener.connectionCount, 0);
    } finally {
      await p.close();
    }
  });

  it('cleans up a client that resets while the backend connect is retrying', async () => {
    const { p, watch, firstRefusal } = await proxyRetryingConnects();
    try {
      const client = await dial(p.port);
      client.write('x');
      await within(firstRefusal, 5000, 'first connect attempt refused');
      client.resetAndDestroy();
      const closed = await p.log.closed();
      assert.equal(closed.reason, 'client_closed');
      assert.equal(p.listener.connectionCount, 0);
    } finally {
      watch.stop();
      await p.close();
    }
  });
});

/** Echoes every chunk; closes its side when the client does. */
function startEcho(): Promise<TestServer> {
  return startServer((socket) => {
    socket.on('data', (b: Buffer) => socket.write(b));
    socket.on('end', () => socket.end());
  });
}

describe('listener: connection limit, close, destroy', () => {
  let echo: TestServer;
  before(async () => {
    echo = await startEcho();
  });
  after(async () => {
    await echo.close();
  });

  /** A relayed connection through `port`, proven by one echoed round trip. */
  async function relayed(port: number): Promise<Socket> {
    const client = await dial(port);
    const echoed = receiveUntil(client, 'hello\n');
    client.write('hello\n');
    await within(echoed, 5000, 'echo');
    return client;
  }

  it('accepts and closes at once a client over maxConnections', async () => {
    const p = await startProxy(`proxy(() => ({ remote: '127.0.0.1:${echo.port}' }));`, { limits: { maxConnections: 1 } });
    try {
      const first = await relayed(p.port);
      const second = await exchange(p.port, []);
      assert.equal(second.data, '');
      const rejected = await p.log.waitFor((r) => r.msg === 'connection rejected');
      assert.equal(rejected.reason, 'connection_limit');
      assert.equal(p.listener.connectionCount, 1);
      const echoed = receiveUntil(first, 'still\n');
      first.write('still\n'); // the first one is unaffected
      await within(echoed, 5000, 'echo on the first connection');
      first.end();
      await p.log.closed();
      assert.equal(p.listener.connectionCount, 0);
    } finally {
      await p.close();
    }
  });

  it('close(): refuses new clients, resolves once the open ones finish — every caller', async () => {
    const p = await startProxy(`proxy(() => ({ remote: '127.0.0.1:${echo.port}' }));`);
    try {
      const client = await relayed(p.port);
      let firstDone = false;
      let secondDone = false;
      const first = p.listener.close().then(() => {
        firstDone = true;
      });
      const second = p.listener.close().then(() => {
        secondDone = true;
      });
      await assert.rejects(dial(p.port).then((s) => s.destroy()), { code: 'ECONNREFUSED' });
      const echoed = receiveUntil(client, 'still\n');
      client.write('still\n');
      await within(echoed, 5000, 'echo while closing');
      assert.equal(firstDone || secondDone, false, 'not before the connection is done');
      client.end();
      await p.log.closed();
      await within(second, 5000, 'second close() call');
      await within(first, 5000, 'first close() call');
    } finally {
      await p.close();
    }
  });

  it('destroy(): a relayed connection is closed on both sides, reason shutdown', async () => {
    const p = await startProxy(`proxy(() => ({ remote: '127.0.0.1:${echo.port}' }));`);
    try {
      const client = await relayed(p.port);
      const backendSide = echo.accepted.at(-1)!;
      const clientClosed = closeOutcome(client);
      client.on('end', () => client.end());
      const backendClosed = closeOutcome(backendSide);
      assert.equal(p.listener.destroy(), 1);
      await within(clientClosed, 5000, 'client closed');
      await within(backendClosed, 5000, 'backend closed');
      const closed = await p.log.closed();
      assert.equal(closed.reason, 'shutdown');
      assert.equal(p.listener.connectionCount, 0);
    } finally {
      await p.close();
    }
  });

  it('destroy(): a connection still connecting is closed with reason shutdown, not recorded as a connect failure', async () => {
    const { p, watch, firstRefusal } = await proxyRetryingConnects();
    try {
      const client = await dial(p.port);
      const clientClosed = closeOutcome(client);
      client.on('end', () => client.end());
      client.write('x');
      await within(firstRefusal, 5000, 'first connect attempt refused'); // now connecting
      assert.equal(p.listener.destroy(), 1);
      await within(clientClosed, 5000, 'client closed');
      const closed = await p.log.closed();
      assert.equal(p.listener.connectionCount, 0);
      assert.deepEqual(
        { reason: closed.reason, rejections: p.listener.rejections.map((r) => r.reason), rejectedLines: p.log.find('connection rejected').length },
        { reason: 'shutdown', rejections: [], rejectedLines: 0 },
      );
    } finally {
      watch.stop();
      await p.close();
    }
  });
});

describe('listener: where it accepts, and backends named by host names', () => {
  let echo: TestServer;
  before(async () => {
    echo = await startEcho();
  });
  after(async () => {
    await echo.close();
  });

  it('serves clients on a listening socket it is handed, and closes that socket when it stops', { skip: !canHandOff() && 'no descriptor hand-off here' }, async () => {
    // Bound elsewhere, as a master process binds a tenant's port for its proxy processes.
    const bound = bindListener('127.0.0.1', 0);
    const p = await startProxy(`proxy(() => ({ remote: '127.0.0.1:${echo.port}' }));`, { listenOn: { fd: bound.fd } });
    try {
      assert.equal(p.port, bound.port);
      assert.deepEqual(p.listener.address, { address: '127.0.0.1', family: 'IPv4', port: bound.port });
      const results = await Promise.all([1, 2, 3].map((i) => exchange(p.port, [`hello ${i}\n`], { end: true })));
      assert.deepEqual(
        results.map((r) => [r.data, r.clean]),
        [1, 2, 3].map((i) => [`hello ${i}\n`, true]),
      );
      await p.listener.close();
      assert.equal(await tryConnect(p.port), 'ECONNREFUSED', 'the handed socket is closed with the listener');
    } finally {
      await p.close();
    }
  });

  it('binds a host name, resolved first; a port in use fails with EADDRINUSE, as Node words it', async () => {
    const log = new CapturedLog();
    const listener = (): TenantListener => new TenantListener({ tenant: 't', router: new MissingRouter(), limits: defaultLimits, log: log.logger });
    const first = listener();
    const second = listener();
    try {
      const address = await first.listen({ host: 'localhost', port: 0 });
      assert.equal(address.address, '127.0.0.1');
      await assert.rejects(second.listen(address.port, '127.0.0.1'), {
        code: 'EADDRINUSE',
        message: `listen EADDRINUSE: address already in use 127.0.0.1:${address.port}`,
      });
      assert.equal(second.listening, false);
    } finally {
      first.destroy();
      second.destroy();
    }
  });

  it('relays a backend named by a host name; the native data path builds no net.Socket for it', async () => {
    const p = await startProxy(`proxy(() => ({ remote: 'localhost:${echo.port}' }));`);
    // Node publishes every socket net.connect creates on this channel: the ones to the backend count.
    const toBackend: Socket[] = [];
    const onSocket = (message: unknown): void => {
      const { socket } = message as { socket: Socket };
      socket.once('connect', () => {
        if (socket.remotePort === echo.port) toBackend.push(socket);
      });
    };
    subscribe('net.client.socket', onSocket);
    try {
      const result = await exchange(p.port, ['by name\n'], { end: true });
      assert.deepEqual([result.data, result.clean], ['by name\n', true]);
      const closed = await p.log.closed();
      assert.equal(closed.backend, `localhost:${echo.port}`);
      // Node's path (SWITCHYARD_RELAY=node, test/transport-node-relay.test.ts) connects it with a net.Socket.
      assert.equal(toBackend.length, p.listener.dataPath.kind === 'splice' ? 0 : 1);
    } finally {
      unsubscribe('net.client.socket', onSocket);
      await p.close();
    }
  });
});
