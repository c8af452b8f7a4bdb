/**
 * Test fixtures: real sockets on port 0, real backends, a proxy started in-process with its
 * log captured as parsed JSON records, and waits on events (never on sleeps).
 */
import { EventEmitter, once } from 'node:events';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { defaultLimits, type Limits } from '../src/config.js';
import type { ListenOn } from '../src/connection/data-path.js';
import { TenantListener } from '../src/listener.js';
import type { Logger } from '../src/log.js';
import { RouterConsole } from '../src/sandbox/console.js';
import { IsolateRouter } from '../src/sandbox/isolate-router.js';
import { SandboxPool } from '../src/sandbox/pool.js';
import { ProcessRouter } from '../src/sandbox/process-router.js';
import type { Router } from '../src/sandbox/router.js';
import { execFile, spawn as spawnProcess, type ChildProcess } from 'node:child_process';
import {
  mkdtempSync as makeTempDir,
  readdirSync as readDirNow,
  readFileSync,
  readFileSync as readFileNow,
  rmSync as removeNow,
  statSync as statNow,
  writeFileSync as writeFileNow,
} from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { tmpdir as osTmpdir } from 'node:os';
import { join as joinPath } from 'node:path';

export type LogRecord = Record<string, unknown> & { msg: string; level: number };

/** Parsed log records that can be waited for: what a test reads of a log. */
export class LogRecords {
  readonly records: LogRecord[] = [];
  readonly #events = new EventEmitter();

  protected add(record: LogRecord): void {
    this.records.push(record);
    this.#events.emit('record', record);
  }

  /** What a failed wait shows of the log. */
  protected describe(): string {
    return this.records.map((r) => JSON.stringify(r)).join('\n');
  }

  /** Resolves with the first record (already logged or still to come) that matches. */
  waitFor(match: (r: LogRecord) => boolean, timeoutMs = 10_000): Promise<LogRecord> {
    const found = this.records.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#events.off('record', onRecord);
        reject(new Error(`no matching log record within ${timeoutMs} ms; the log so far:\n${this.describe()}`));
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

/** A pino logger whose records are kept, parsed, and can be waited for. */
export class CapturedLog extends LogRecords {
  readonly logger: Logger;

  constructor(level = 'debug') {
    super();
    const stream = new Writable({
      write: (chunk: Buffer, _enc, done) => {
        for (const line of chunk.toString('utf8').split('\n')) {
          if (line !== '') this.add(JSON.parse(line) as LogRecord);
        }
        done();
      },
    });
    this.logger = pino({ level }, stream);
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
  /** Where the listener accepts (default 127.0.0.1, port 0). */
  listenOn?: ListenOn;
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
    router = await ProcessRouter.load(options.sharedPool, { ...spec, tenant }, console);
  } else {
    pool = new SandboxPool({ workers: 1, ...options.pool, log: log.logger });
    try {
      router = await ProcessRouter.load(pool, { ...spec, tenant }, console);
    } catch (err) {
      await pool.close();
      throw err;
    }
  }
  const listener = new TenantListener({ tenant, router, limits, log: log.logger, gate: options.gate });
  const { port } = await listener.listen(options.listenOn ?? { host: '127.0.0.1', port: 0 });
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

/** A TCP server on `host` (127.0.0.1), port 0, that hands each socket to `onSocket`. */
export async function startServer(onSocket: (socket: Socket, server: TestServer) => void, host = '127.0.0.1'): Promise<TestServer> {
  const accepted: Socket[] = [];
  const server = createServer({ allowHalfOpen: true });
  server.listen(0, host);
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
 * Connects to `port` (from the loopback address `from`, default 127.0.0.1), sends `chunks` in
 * order (each written after the previous), half-closes if asked, and collects everything until
 * the connection closes.
 */
export async function exchange(port: number, chunks: (string | Buffer)[], options: { end?: boolean; from?: string; host?: string } = {}): Promise<Exchange> {
  const from = options.from ?? '127.0.0.1';
  // Bound only when asked: a socket bound before it connects gets its port from bind(), which
  // hands out recently used ports again, and tests tell connections apart by their port.
  const socket = connect({ port, host: options.host ?? '127.0.0.1', allowHalfOpen: true, ...(options.from === undefined ? {} : { localAddress: options.from }) });
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
  const client = `${from}:${local}`;
  return error === undefined ? { data, client, clean: true } : { data, client, clean: false, error };
}

/** Opens a client socket and resolves once connected. */
export async function dial(port: number, host = '127.0.0.1'): Promise<Socket> {
  const socket = connect({ port, host, allowHalfOpen: true });
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
/** dist/src/cli.js, the `switchyard` executable. */
export const cliPath = new URL('../src/cli.js', import.meta.url).pathname;

/** Lines a process printed: JSON lines parsed as records, everything else kept as text. */
export class ProcessLog extends LogRecords {
  #text = '';
  #partial = '';

  /** Feeds a chunk of the process's output. */
  push(chunk: string): void {
    this.#text += chunk;
    const lines = (this.#partial + chunk).split('\n');
    this.#partial = lines.pop() ?? '';
    for (const line of lines) {
      if (!line.startsWith('{')) continue;
      try {
        this.add(JSON.parse(line) as LogRecord);
      } catch {
        // not a log line
      }
    }
  }

  get text(): string {
    return this.#text;
  }

  protected override describe(): string {
    return this.#text;
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
export function spawnCli(args: readonly string[], options: { executable?: boolean; env?: NodeJS.ProcessEnv } = {}): CliProcess {
  const spawnOptions = { stdio: ['ignore', 'pipe', 'pipe'] as ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...options.env } };
  const child =
    options.executable === true
      ? spawnProcess(cliPath, args, spawnOptions)
      : spawnProcess(process.execPath, ['--no-node-snapshot', cliPath, ...args], spawnOptions);
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
  options: { args?: readonly string[]; executable?: boolean; env?: NodeJS.ProcessEnv } = {},
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

// Helpers for the hosting-mode tests (admin.test.ts, hosting.test.ts): a free range of tenant
// ports, the admin API over real HTTP, and `switchyard serve` in-process or as a process.

/**
 * A port that refuses connections, and stays so: picked below every range the tests bind from
 * (port 0 takes ephemeral ports, 32768 and up here; freePortRange takes 21000–32700), and
 * checked to refuse now. A port bound on port 0 and then released could be handed to the next
 * bind(0), of this test or of another test file running beside it.
 */
export async function refusingPort(attempts = 50): Promise<number> {
  for (let attempt = 0; attempt < attempts; attempt++) {
    const port = 1024 + Math.floor(Math.random() * (21000 - 1024));
    const refused = await new Promise<boolean>((resolve) => {
      const probe = connect({ port, host: '127.0.0.1' });
      probe.once('connect', () => {
        probe.destroy();
        resolve(false);
      });
      probe.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
    });
    if (refused) return port;
  }
  throw new Error('no refusing port found');
}

/**
 * A range of `count` consecutive ports free on 127.0.0.1 right now: a random base is tried by
 * binding every port of the range, and another base is tried when one is taken. The range is
 * kept below the kernel's ephemeral ports (32768+ on Linux) so that outgoing connections of
 * other tests cannot land in it. The only exception to "port 0" in the tests.
 */
export async function freePortRange(count: number, attempts = 100): Promise<[number, number]> {
  const lo = 21000;
  const hi = 32700;
  for (let attempt = 0; attempt < attempts; attempt++) {
    const base = lo + Math.floor(Math.random() * (hi - lo - count));
    const servers: Server[] = [];
    let free = true;
    for (let port = base; port < base + count && free; port++) {
      const server = createServer();
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(port, '127.0.0.1', () => resolve());
        });
        servers.push(server);
      } catch {
        free = false;
      }
    }
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    if (free) return [base, base + count - 1];
  }
  throw new Error(`no ${count} consecutive free ports found`);
}

/** Binds a plain TCP server on 127.0.0.1:`port` (something else holding a port of the range). */
export async function occupyPort(port: number): Promise<Server> {
  const server = createServer((s) => s.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return server;
}

export interface HttpReply {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly text: string;
  /** The body parsed, when it is JSON; undefined otherwise. */
  readonly json: any;
}

export interface HttpCall {
  /** A bearer token (sent as `Authorization: Bearer TOKEN`). */
  readonly token?: string;
  /** The raw Authorization header, instead of `token`. */
  readonly authorization?: string;
  /** A string or Buffer is sent as is; anything else as JSON. */
  readonly body?: unknown;
  /** Send the body with chunked transfer encoding (no Content-Length), in pieces of this size. */
  readonly chunkSize?: number;
  readonly headers?: Record<string, string>;
  /** The address to call (default 127.0.0.1). */
  readonly host?: string;
}

/**
 * One HTTP request to 127.0.0.1:`port` on a fresh connection (no keep-alive pool). Rejects on a
 * socket error before the response (a reset), so a refused body must be answered to pass.
 */
export function httpCall(port: number, method: string, path: string, call: HttpCall = {}): Promise<HttpReply> {
  const body =
    call.body === undefined ? undefined : typeof call.body === 'string' || Buffer.isBuffer(call.body) ? Buffer.from(call.body as string | Buffer) : Buffer.from(JSON.stringify(call.body));
  const headers: Record<string, string> = { ...call.headers };
  if (call.authorization !== undefined) headers.authorization = call.authorization;
  else if (call.token !== undefined) headers.authorization = `Bearer ${call.token}`;
  if (body !== undefined && call.chunkSize === undefined) headers['content-length'] = String(body.length);
  // Node's client frames a body as chunked by default only for some methods (not GET or DELETE).
  if (body !== undefined && call.chunkSize !== undefined) headers['transfer-encoding'] = 'chunked';
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: call.host ?? '127.0.0.1', port, method, path, headers, agent: false });
    let answered = false;
    req.on('error', (err) => {
      if (!answered) reject(err);
    });
    req.on('response', (res) => {
      answered = true;
      const chunks: Buffer[] = [];
      res.on('data', (b: Buffer) => chunks.push(b));
      res.on('error', reject);
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: unknown;
        if (/json/.test(res.headers['content-type'] ?? '')) {
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
    });
    if (body === undefined) {
      req.end();
    } else if (call.chunkSize === undefined) {
      req.end(body);
    } else {
      const size = call.chunkSize;
      let offset = 0;
      const pump = (): void => {
        while (offset < body.length) {
          const piece = body.subarray(offset, offset + size);
          offset += piece.length;
          if (!req.write(piece)) {
            req.once('drain', pump);
            return;
          }
        }
        req.end();
      };
      pump();
    }
  });
}

/** The admin API of one service, called with the operator token unless told otherwise. */
export class AdminApi {
  constructor(
    readonly port: number,
    readonly token: string,
    readonly host = '127.0.0.1',
  ) {}

  call(method: string, path: string, call: HttpCall = {}): Promise<HttpReply> {
    return httpCall(this.port, method, path, { token: this.token, host: this.host, ...call });
  }

  /** POST /v1/tenants; asserts 201 and resolves with { name, port, token }. */
  async createTenant(name: string, port?: number): Promise<{ name: string; port: number; token: string }> {
    const r = await this.call('POST', '/v1/tenants', { body: port === undefined ? { name } : { name, port } });
    if (r.status !== 201) throw new Error(`creating ${name}: ${r.status} ${r.text}`);
    return r.json as { name: string; port: number; token: string };
  }

  /** PUT …/router; asserts 200 and resolves with the version. */
  async putRouter(name: string, source: string, token = this.token): Promise<number> {
    const r = await this.call('PUT', `/v1/tenants/${name}/router`, { body: source, token });
    if (r.status !== 200) throw new Error(`uploading ${name}'s router: ${r.status} ${r.text}`);
    return (r.json as { version: number }).version;
  }

  async show(name: string): Promise<any> {
    const r = await this.call('GET', `/v1/tenants/${name}`);
    if (r.status !== 200) throw new Error(`GET ${name}: ${r.status} ${r.text}`);
    return r.json;
  }

  async rejections(name: string): Promise<any[]> {
    const r = await this.call('GET', `/v1/tenants/${name}/rejections`);
    if (r.status !== 200) throw new Error(`GET ${name}/rejections: ${r.status} ${r.text}`);
    return (r.json as { rejections: unknown[] }).rejections;
  }
}

/** Resolves once the async `condition()` holds, polling every `everyMs`; rejects naming `what` after `timeoutMs`. */
export async function eventually(condition: () => Promise<boolean> | boolean, what: string, timeoutMs = 10_000, everyMs = 10): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

export interface TestHosting {
  readonly adminPort: number;
  readonly dataDir: string;
  readonly ports: readonly [number, number];
  readonly operatorToken: string;
  readonly api: AdminApi;
  readonly log: CapturedLog;
  /** Lines passed to `announce` (the generated operator token, on first start). */
  readonly announced: string[];
  /** Tenant ports that could not be bound at start and wait to be tried again. */
  pendingRebinds(): number;
  /** With a PostgreSQL store: `up` or `down`. */
  storeState(): 'up' | 'down' | undefined;
  /** Closes every connection and the service (the data directory is kept). */
  close(): Promise<void>;
}

/**
 * Starts `switchyard serve` in this process (startHosting) on 127.0.0.1: a fresh temporary data
 * directory unless one is given, the admin API on port 0, one sandbox worker, the log captured.
 * `allow` is a list of `--allow` rules.
 */
export async function startTestHosting(
  options: {
    dataDir?: string;
    ports?: readonly [number, number];
    portCount?: number;
    allow?: readonly string[];
    limits?: Partial<Limits>;
    rebindAfterMs?: number;
    adminConnections?: Partial<import('../src/admin/connections.js').AdminConnectionOptions>;
    quotas?: Partial<import('../src/tenants/service.js').Quotas>;
    /** A PostgreSQL URL: the node of a cluster (SWITCHYARD_ADMIN_TOKEN must be set). */
    store?: string;
    /** Where tenant ports and the admin API are bound (default 127.0.0.1). */
    host?: string;
    changeFeed?: { backoffMs?: readonly [number, number]; pollMs?: number };
  } = {},
): Promise<TestHosting> {
  const { startHosting } = await import('../src/serve.js');
  const { parseAllowRule } = await import('../src/routing/policy.js');
  const dataDir = options.dataDir ?? makeTempDir(joinPath(osTmpdir(), 'switchyard-hosting-'));
  const ports = options.ports ?? (await freePortRange(options.portCount ?? 8));
  const allow = (options.allow ?? []).map((text) => {
    const rule = parseAllowRule(text);
    if (typeof rule === 'string') throw new Error(rule);
    return rule;
  });
  const log = new CapturedLog();
  const announced: string[] = [];
  const host = options.host ?? '127.0.0.1';
  const service = await startHosting({
    dataDir,
    admin: { host, port: 0 },
    ports,
    bindHost: host,
    ...(options.store === undefined ? {} : { store: { url: options.store, poolSize: 4 } }),
    ...(options.changeFeed === undefined ? {} : { changeFeed: options.changeFeed }),
    allow,
    defaults: { ...defaultLimits, ...options.limits },
    workers: 1,
    maxWarmIsolates: 1000,
    log: log.logger,
    announce: (line) => announced.push(line),
    ...(options.rebindAfterMs === undefined ? {} : { rebindAfterMs: options.rebindAfterMs }),
    ...(options.adminConnections === undefined ? {} : { adminConnections: options.adminConnections }),
    ...(options.quotas === undefined ? {} : { quotas: options.quotas }),
  });
  const fromEnv = process.env.SWITCHYARD_ADMIN_TOKEN;
  const operatorToken = fromEnv !== undefined && fromEnv !== '' ? fromEnv : readFileNow(joinPath(dataDir, 'admin-token'), 'utf8').trim();
  return {
    adminPort: service.adminPort,
    dataDir,
    ports,
    operatorToken,
    api: new AdminApi(service.adminPort, operatorToken, host),
    log,
    announced,
    pendingRebinds: () => service.pendingRebinds(),
    storeState: () => service.storeState(),
    close: async () => {
      service.destroy();
      await service.close();
    },
  };
}

/** Every regular file under `dir`, recursively, with its contents. */
export function filesUnder(dir: string): { path: string; content: Buffer }[] {
  const out: { path: string; content: Buffer }[] = [];
  for (const entry of readDirNow(dir, { withFileTypes: true })) {
    const path = joinPath(dir, entry.name);
    if (entry.isDirectory()) out.push(...filesUnder(path));
    else if (entry.isFile()) out.push({ path, content: readFileNow(path) });
  }
  return out;
}

/** The permission bits of a file. */
export function fileMode(path: string): number {
  return statNow(path).mode & 0o777;
}

/** Removes a directory tree (a test's data directory). */
export function removeDir(dir: string): void {
  removeNow(dir, { recursive: true, force: true });
}


/**
 * Starts `switchyard serve args…` as a process and waits for its "serving" line; resolves with
 * the process and the admin port it bound (from the line's `admin`, "127.0.0.1:PORT").
 */
export async function startCliServe(args: readonly string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 20_000): Promise<CliProcess & { adminPort: number }> {
  const proc = spawnCli(['serve', ...args], { env });
  const exitedEarly = proc.exited.then(({ code, signal }): never => {
    throw new Error(`switchyard serve exited (${code ?? signal}) before serving:\n${proc.stderr()}\n${proc.log.text}`);
  });
  exitedEarly.catch(() => undefined);
  const serving = await Promise.race([proc.log.waitFor((r) => r.msg === 'serving', timeoutMs), exitedEarly]);
  const admin = String(serving.admin);
  return { ...proc, adminPort: Number(admin.slice(admin.lastIndexOf(':') + 1)) };
}

/** Resolves with the error code of a connection attempt to 127.0.0.1:port, or 'connected'. */
export async function tryConnect(port: number, host = '127.0.0.1'): Promise<string> {
  const socket = connect({ port, host });
  try {
    await once(socket, 'connect');
    return 'connected';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err);
  } finally {
    socket.destroy();
  }
}

/** Resident set size of a process, in bytes. */
export function rss(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileNow(`/proc/${pid}/status`, 'utf8'));
  if (m === null) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

/** Samples a process's RSS until stopped; `max` is the largest seen. */
export function sampleRss(pid: number, everyMs = 20): { readonly max: number; stop(): void } {
  let max = rss(pid);
  const timer = setInterval(() => {
    max = Math.max(max, rss(pid));
  }, everyMs);
  return {
    get max() {
      return max;
    },
    stop: () => {
      clearInterval(timer);
      max = Math.max(max, rss(pid));
    },
  };
}

/** Runs `switchyard args…` to completion (bounded) and returns its exit code and output. */
export async function runCli(args: readonly string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 60_000): Promise<CommandResult> {
  const proc = spawnCli(args, { env });
  const { code } = await within(proc.exited, timeoutMs, `switchyard ${args.join(' ')}`);
  return { code, stdout: proc.log.text, stderr: proc.stderr() };
}

/** Whether a process exists (signal 0). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
