/**
 * Test fixtures: real sockets on port 0, real backends, a proxy started in-process with its
 * log captured as parsed JSON records, and waits on events (never on sleeps).
 */
import { EventEmitter, once } from 'node:events';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { defaultLimits, type Limits } from '../src/config.js';
import { TenantListener } from '../src/listener.js';
import type { Logger } from '../src/log.js';
import { RouterConsole } from '../src/sandbox/console.js';
import { IsolateRouter } from '../src/sandbox/isolate-router.js';

export type LogRecord = Record<string, unknown> & { msg: string; level: number };

/** A pino logger whose records are kept, parsed, and can be waited for. */
export class CapturedLog {
  readonly records: LogRecord[] = [];
  readonly #events = new EventEmitter();
  readonly logger: Logger;

  constructor(level = 'debug') {
    const stream = new Writable({
      write: (chunk: Buffer, _enc, done) => {
        for (const line of chunk.toString('utf8').split('\n')) {
          if (line === '') continue;
          const record = JSON.parse(line) as LogRecord;
          this.records.push(record);
          this.#events.emit('record', record);
        }
        done();
      },
    });
    this.logger = pino({ level }, stream);
  }

  /** Resolves with the first record (already logged or still to come) that matches. */
  waitFor(match: (r: LogRecord) => boolean, timeoutMs = 10_000): Promise<LogRecord> {
    const found = this.records.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#events.off('record', onRecord);
        reject(new Error(`no matching log record within ${timeoutMs} ms; have:\n${this.records.map((r) => JSON.stringify(r)).join('\n')}`));
      }, timeoutMs);
      const onRecord = (r: LogRecord): void => {
        if (!match(r)) return;
        clearTimeout(timer);
        this.#events.off('record', onRecord);
        resolve(r);
      };
      this.#events.on('record', onRecord);
    });
  }

  /** The "connection closed" record of the n-th finished connection (1-based). */
  async closed(n = 1): Promise<LogRecord> {
    let seen = 0;
    return this.waitFor((r) => r.msg === 'connection closed' && ++seen === n);
  }

  find(msg: string): LogRecord[] {
    return this.records.filter((r) => r.msg === msg);
  }
}

export interface TestProxy {
  readonly port: number;
  readonly log: CapturedLog;
  readonly listener: TenantListener;
  readonly router: IsolateRouter;
  close(): Promise<void>;
}

/** Starts a single-router proxy in this process on 127.0.0.1, port 0. */
export async function startProxy(
  source: string,
  options: { limits?: Partial<Limits>; tenant?: string; table?: unknown } = {},
): Promise<TestProxy> {
  const log = new CapturedLog();
  const limits: Limits = { ...defaultLimits, ...options.limits };
  const tenant = options.tenant ?? 'test';
  const router = await IsolateRouter.load({
    source,
    filename: `${tenant}.js`,
    routerTimeoutMs: limits.routerTimeoutMs,
    memoryMb: limits.memoryMb,
    ...(options.table === undefined ? {} : { table: JSON.stringify(options.table) }),
    console: new RouterConsole(log.logger, tenant),
  });
  const listener = new TenantListener({ tenant, router, limits, log: log.logger });
  const { port } = await listener.listen(0, '127.0.0.1');
  return {
    port,
    log,
    listener,
    router,
    close: async () => {
      listener.destroy();
      await listener.close();
      router.dispose();
    },
  };
}

export interface TestServer {
  readonly port: number;
  readonly server: Server;
  /** Sockets accepted so far. */
  readonly accepted: Socket[];
  close(): Promise<void>;
}

/** A TCP server on 127.0.0.1:0 that hands each socket to `onSocket`. */
export async function startServer(onSocket: (socket: Socket, server: TestServer) => void): Promise<TestServer> {
  const accepted: Socket[] = [];
  const server = createServer({ allowHalfOpen: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const result: TestServer = {
    port: (server.address() as AddressInfo).port,
    server,
    accepted,
    close: async () => {
      for (const s of accepted) s.destroy();
      server.close();
      await once(server, 'close');
    },
  };
  server.on('connection', (socket) => {
    accepted.push(socket);
    socket.on('error', () => undefined);
    onSocket(socket, result);
  });
  return result;
}

/** ProxyMachine's test backend: answers the first chunk with `<port>:<data>` and closes. */
export function startEchoBackend(): Promise<TestServer> {
  return startServer((socket, self) => {
    socket.once('data', (data) => {
      socket.end(`${self.port}:${data.toString('latin1')}`);
    });
  });
}

export interface Exchange {
  /** Everything received, latin1. */
  readonly data: string;
  /** Whether the proxy closed with FIN (true) or the socket errored (false). */
  readonly clean: boolean;
  readonly error?: string;
}

/**
 * Connects to `port`, sends `chunks` in order (each written after the previous), half-closes if
 * asked, and collects everything until the connection closes.
 */
export async function exchange(port: number, chunks: (string | Buffer)[], options: { end?: boolean } = {}): Promise<Exchange> {
  const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  await once(socket, 'connect');
  const received: Buffer[] = [];
  socket.on('data', (b: Buffer) => received.push(b));
  let error: string | undefined;
  socket.on('error', (e: NodeJS.ErrnoException) => {
    error = e.code ?? e.message;
  });
  const closed = once(socket, 'close');
  for (const chunk of chunks) {
    await new Promise<void>((resolve) => socket.write(typeof chunk === 'string' ? Buffer.from(chunk, 'latin1') : chunk, () => resolve()));
  }
  socket.on('end', () => socket.end());
  if (options.end === true) socket.end();
  await closed;
  const data = Buffer.concat(received).toString('latin1');
  return error === undefined ? { data, clean: true } : { data, clean: false, error };
}

/** Opens a client socket and resolves once connected. */
export async function dial(port: number): Promise<Socket> {
  const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  return socket;
}

/** Resolves with everything a socket receives until it ends or closes. */
export function readAll(socket: Socket): Promise<string> {
  const received: Buffer[] = [];
  socket.on('data', (b: Buffer) => received.push(b));
  return new Promise((resolve) => socket.once('close', () => resolve(Buffer.concat(received).toString('latin1'))));
}

/** A promise and its resolvers (Promise.withResolvers is missing on Node 20). */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
