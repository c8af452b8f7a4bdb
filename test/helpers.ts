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
import { SandboxPool } from '../src/sandbox/pool.js';
import { type CooldownPolicy, ProcessRouter } from '../src/sandbox/process-router.js';
import type { Router } from '../src/sandbox/router.js';

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
  readonly router: Router;
  /** The sandbox worker pool, when the router runs in worker processes. */
  readonly pool: SandboxPool | undefined;
  close(): Promise<void>;
}

export interface ProxyOptions {
  limits?: Partial<Limits>;
  tenant?: string;
  table?: unknown;
  /** Where the router runs: a sandbox worker process (the default, as in service) or this process. */
  sandbox?: 'process' | 'in-process';
  /** Options of the worker pool, in process mode. */
  pool?: Omit<ConstructorParameters<typeof SandboxPool>[0], 'log'>;
  /** A worker pool to load the router into, shared with other proxies (not closed by this one). */
  sharedPool?: SandboxPool;
  /** Hosting mode's backend policy; absent, any backend is allowed. */
  gate?: ConstructorParameters<typeof TenantListener>[0]['gate'];
  /** CPU cool-down policy of a process-sandboxed router. */
  cooldown?: CooldownPolicy;
}

/** Starts a single-router proxy on 127.0.0.1, port 0, with its log captured. */
export async function startProxy(source: string, options: ProxyOptions = {}): Promise<TestProxy> {
  const log = new CapturedLog();
  const limits: Limits = { ...defaultLimits, ...options.limits };
  const tenant = options.tenant ?? 'test';
  const spec = {
    source,
    filename: `${tenant}.js`,
    routerTimeoutMs: limits.routerTimeoutMs,
    memoryMb: limits.memoryMb,
    ...(options.table === undefined ? {} : { table: JSON.stringify(options.table) }),
  };
  const console = new RouterConsole(log.logger, tenant);
  let pool: SandboxPool | undefined;
  let router: Router;
  if (options.sandbox === 'in-process') {
    router = await IsolateRouter.load({ ...spec, console });
  } else if (options.sharedPool !== undefined) {
    router = await ProcessRouter.load(options.sharedPool, { ...spec, tenant }, console, options.cooldown);
  } else {
    pool = new SandboxPool({ workers: 1, ...options.pool, log: log.logger });
    try {
      router = await ProcessRouter.load(pool, { ...spec, tenant }, console, options.cooldown);
    } catch (err) {
      await pool.close();
      throw err;
    }
  }
  const listener = new TenantListener({ tenant, router, limits, log: log.logger, gate: options.gate });
  const { port } = await listener.listen(0, '127.0.0.1');
  return {
    port,
    log,
    listener,
    router,
    pool: pool ?? options.sharedPool,
    close: async () => {
      listener.destroy();
      await listener.close();
      router.dispose();
      await pool?.close();
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
  /** The client's `address:port` as the proxy logs it. */
  readonly client: string;
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
  const local = socket.localPort;
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
  const client = `127.0.0.1:${local}`;
  return error === undefined ? { data, client, clean: true } : { data, client, clean: false, error };
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

// Helpers for the example routers' tests (routers/*.js driven by real clients).
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';

/**
 * The source of routers/`file`, with its hardcoded backend addresses replaced by the test's
 * (`{ '127.0.0.1:9418': '127.0.0.1:PORT' }`). Each address must occur in the file, so a test
 * fails loudly instead of routing to a stale port when the router changes.
 */
export function routerSource(file: string, substitutions: Record<string, string> = {}): string {
  let source = readFileSync(new URL(`../../routers/${file}`, import.meta.url), 'utf8');
  for (const [from, to] of Object.entries(substitutions)) {
    if (!source.includes(from)) throw new Error(`routers/${file} does not contain ${from}`);
    source = source.split(from).join(to);
  }
  return source;
}

export interface CommandResult {
  /** The exit code, or null when killed by a signal (e.g. the timeout). */
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a real client program (curl, psql, git) to completion; never rejects on a non-zero exit. */
export function runCommand(
  file: string,
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      { env: options.env ?? process.env, cwd: options.cwd, timeout: options.timeoutMs ?? 20_000, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err !== null && typeof err.code !== 'number' && err.signal == null) {
          reject(err); // could not run at all (ENOENT)
          return;
        }
        resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : null, stdout, stderr });
      },
    );
  });
}

// Helpers for the transport and CLI tests: `switchyard` run as a separate process.
import { spawn as spawnProcess, type ChildProcess } from 'node:child_process';
import { mkdtempSync as makeTempDir, writeFileSync as writeFileNow } from 'node:fs';
import { tmpdir as osTmpdir } from 'node:os';
import { join as joinPath } from 'node:path';

/** dist/src/cli.js, the `switchyard` executable. */
export const cliPath = new URL('../src/cli.js', import.meta.url).pathname;

/** Lines a process printed: JSON lines parsed as records, everything else kept as text. */
export class ProcessLog {
  readonly records: LogRecord[] = [];
  readonly #events = new EventEmitter();
  #text = '';
  #partial = '';

  /** Feeds a chunk of the process's output. */
  push(chunk: string): void {
    this.#text += chunk;
    const lines = (this.#partial + chunk).split('\n');
    this.#partial = lines.pop() ?? '';
    for (const line of lines) {
      if (!line.startsWith('{')) continue;
      let record: LogRecord;
      try {
        record = JSON.parse(line) as LogRecord;
      } catch {
        continue;
      }
      this.records.push(record);
      this.#events.emit('record', record);
    }
  }

  get text(): string {
    return this.#text;
  }

  /** Resolves with the first record (already printed or still to come) that matches. */
  waitFor(match: (r: LogRecord) => boolean, timeoutMs = 10_000): Promise<LogRecord> {
    const found = this.records.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#events.off('record', onRecord);
        reject(new Error(`no matching log line within ${timeoutMs} ms; output so far:\n${this.#text}`));
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
}

export interface CliProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  /** stdout: the service log. */
  readonly log: ProcessLog;
  /** Everything on stderr so far. */
  stderr(): string;
  /** Resolves when the process has exited (and its output is fully read). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Starts `switchyard args…`: by default as `node --no-node-snapshot dist/src/cli.js`, or with
 * `executable: true` as the file itself, so its shebang line is what starts Node.
 */
export function spawnCli(args: readonly string[], options: { executable?: boolean } = {}): CliProcess {
  const child =
    options.executable === true
      ? spawnProcess(cliPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawnProcess(process.execPath, ['--no-node-snapshot', cliPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = new ProcessLog();
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => log.push(s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    stderr += s;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  return { child, pid: child.pid ?? -1, log, stderr: () => stderr, exited };
}

/** Writes `source` as `<name>` in a new temporary directory; returns its path. */
export function writeRouterFile(source: string, name = 'router.js'): string {
  const file = joinPath(makeTempDir(joinPath(osTmpdir(), 'switchyard-test-')), name);
  writeFileNow(file, source);
  return file;
}

/** Starts `switchyard -c <router> -h 127.0.0.1 -p 0` and waits for its "listening" line. */
export async function startCliProxy(
  routerSource: string,
  options: { args?: readonly string[]; executable?: boolean } = {},
): Promise<CliProcess & { port: number; file: string }> {
  const file = writeRouterFile(routerSource);
  const proc = spawnCli(['-c', file, '-h', '127.0.0.1', '-p', '0', '--log-level', 'info', ...(options.args ?? [])], options);
  const exitedEarly = proc.exited.then(({ code }): never => {
    throw new Error(`switchyard exited with ${code} before listening:\n${proc.stderr()}`);
  });
  exitedEarly.catch(() => undefined); // it only matters while racing
  const listening = await Promise.race([proc.log.waitFor((r) => r.msg === 'listening'), exitedEarly]);
  return { ...proc, port: listening.port as number, file };
}

/** Rejects with a message naming `what` unless `promise` settles within `ms`. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Resolves once `condition()` holds, checking on every turn of the event loop: for state that
 * has no event to wait on. Rejects naming `what` after `timeoutMs`.
 */
export async function until(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/**
 * Resolves once the proxy's router has made `count` decisions of `kind` in all. Lets a test
 * send a message in pieces and know the router saw each piece on its own.
 */
export function waitForDecisions(proxy: TestProxy, kind: 'remote' | 'noop' | 'close', count: number, timeoutMs = 10_000): Promise<void> {
  return until(() => proxy.listener.stats.decisions[kind] >= count, `${count} ${kind} decisions`, timeoutMs);
}
