import { lookup } from 'node:dns/promises';
import { closeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isIP, type AddressInfo } from 'node:net';
import { getSystemErrorMap, getSystemErrorName } from 'node:util';
import type { NativeStats, RelayFigures } from '../metrics/stats.js';
import { bindListener, handoff } from '../node/handoff.js';
import type { Endpoint } from '../routing/endpoint.js';
import type { Client, ClientHandler, OnClient, Upstream } from './client.js';
import type { Accepting, Acceptor, DataPath, ListenOn, RelayDescription } from './data-path.js';
import { listenBacklog } from './node-relay.js';
import { type ConnectCancel, type ConnectPlan, ConnectTimeoutError, connectUpstream, type Dial, resolving } from './upstream.js';

/** The addon built from src/native/ (relay.h states its contract and how it works). */
interface Binding {
  init(
    onAccepted: (listener: number, id: number, remoteAddress: string, remotePort: number, localAddress: string, localPort: number, chunk: Buffer | null) => void,
    onReceived: (id: number, chunk: Buffer | null) => void,
    onClosed: (id: number, bytesIn: number, bytesOut: number, errno: number) => void,
    onDialed: (id: number, errno: number) => void,
    onDrained: (id: number) => void,
    maxPipes?: number,
  ): void;
  listen(fd: number, firstRead?: number): number;
  firstRead(listener: number, bytes: number): void;
  unlisten(listener: number): void;
  read(id: number, bytes: number): void;
  send(id: number, bytes: Buffer): number;
  pause(id: number): void;
  end(id: number, bytes?: Buffer): void;
  dial(ip: string, port: number): number;
  join(id: number, dialed: number, toUpstream?: Buffer, toClient?: Buffer): void;
  bytes(id: number): [number, number];
  idleMs(id: number): number;
  destroy(id: number, reset: boolean): [number, number];
  stats(): NativeStats;
}

/**
 * Where `npm ci` (node-gyp) leaves the addon, from dist/src/connection/; SWITCHYARD_ADDON names
 * another build of it (test/asan.sh loads one built with sanitizers).
 */
const addonPath = process.env['SWITCHYARD_ADDON'] ?? '../../../build/Release/splice_relay.node';

/**
 * The native data path. A tenant's port is accepted by the addon (`listen()`), each client is
 * read there and its chunks handed up until the router decides (`NativeClient`), and once the
 * backend is connected (by the addon too) the addon relays both sides with splice(2) on this
 * event loop: no net.Socket, stream or JS callback per chunk, and one report when the
 * connection ends. One per process at most (`NativeRelay.load()`).
 */
export class NativeRelay implements DataPath {
  readonly kind = 'splice';
  readonly #binding: Binding;
  readonly #listeners: (OnClient | undefined)[] = [];
  readonly #handlers: (ClientHandler | undefined)[] = [];
  /** Connects in progress, by id: what to call when each finishes. */
  readonly #dials: (((errno: number) => void) | undefined)[] = [];

  private constructor(binding: Binding, maxPipes: number) {
    this.#binding = binding;
    binding.init(this.#accepted, this.#received, this.#closed, this.#dialed, this.#drained, maxPipes);
  }

  /**
   * The process's native data path, set up on the first call (the addon is set up once per
   * process); why not, where it cannot run: not Linux, the addon not built, or
   * `SWITCHYARD_RELAY=node`. `processDataPath()` is what callers want.
   */
  static load(): NativeRelay | { readonly reason: string } {
    loaded ??= NativeRelay.#load();
    return loaded;
  }

  /** @deprecated The start-up log line's fields: the describe() of the data path in use. */
  static describe(): RelayDescription {
    const native = NativeRelay.load();
    return native instanceof NativeRelay ? native.describe() : { relay: 'node', relayFallback: native.reason };
  }

  static #load(): NativeRelay | { readonly reason: string } {
    if (process.env['SWITCHYARD_RELAY'] === 'node') return { reason: 'SWITCHYARD_RELAY=node' };
    if (process.platform !== 'linux') return { reason: `splice(2) is Linux only (this is ${process.platform})` };
    try {
      const binding = createRequire(import.meta.url)(addonPath) as Binding;
      return new NativeRelay(binding, maxPipes());
    } catch (err) {
      return { reason: `the addon did not load: ${(err as Error).message}` };
    }
  }

  /**
   * Accepts on a listening socket: one bound here (a host name resolved first, then bound
   * without Node, src/native/handoff.c) or one handed over as a descriptor. The addon accepts
   * on a duplicate; the original is closed once the addon has it (a handed one too: it is the
   * listener's), and left to the caller if that fails. Each client is read once at accept, for
   * at most `firstRead` bytes (the buffer cap; the addon reads at most 64 KiB at once).
   */
  async listen(on: ListenOn, accepting: Accepting): Promise<Acceptor> {
    const handed = 'fd' in on;
    const socket = handed ? handedSocket(on.fd) : await bind(on.host, on.port);
    let listener: number;
    try {
      listener = this.#binding.listen(socket.fd, accepting.firstRead);
    } catch (err) {
      if (!handed) closeSync(socket.fd);
      throw err;
    }
    closeSync(socket.fd);
    this.#listeners[listener] = accepting.onClient;
    return {
      address: socket.address,
      firstRead: (bytes) => this.#binding.firstRead(listener, bytes),
      close: () => {
        this.#listeners[listener] = undefined;
        this.#binding.unlisten(listener);
      },
    };
  }

  /** A connect attempt to an IP address: resolves with the dialed id, for `join()`. */
  readonly #dialAddress: Dial<number> = (endpoint, timeoutMs, cancel) =>
    new Promise((resolve, reject) => {
      const id = this.#binding.dial(endpoint.host, endpoint.port);
      const timer = setTimeout(() => fail(new ConnectTimeoutError(timeoutMs)), timeoutMs);
      const fail = (err: Error): void => {
        clearTimeout(timer);
        cancel.release();
        this.#dials[id] = undefined;
        this.#binding.destroy(id, false);
        reject(err);
      };
      cancel.hold(fail);
      this.#dials[id] = (errno) => {
        clearTimeout(timer);
        cancel.release();
        if (errno === 0) resolve(id);
        else reject(connectError(errno, endpoint));
      };
    });

  /**
   * How backends are connected: always by the addon, so that no net.Socket is built for a side
   * it relays. A host name (single-router mode) is resolved first, within the attempt's timeout;
   * an IPv6 address may carry its zone ("fe80::1%eth0"). Resolves with the dialed id.
   */
  readonly dial: Dial<number> = resolving(this.#dialAddress);

  /** `handler` hears client `id`'s chunks and its end. */
  own(id: number, handler: ClientHandler): void {
    this.#handlers[id] = handler;
  }

  /** Reads client `id` for at most `bytes` more (0: not at all) until told again. */
  read(id: number, bytes: number): void {
    this.#binding.read(id, bytes);
  }

  /** Sends a reply; returns the bytes owed to the client, not yet written. */
  send(id: number, bytes: Buffer): number {
    return this.#binding.send(id, bytes);
  }

  pause(id: number): void {
    this.#binding.pause(id);
  }

  end(id: number, bytes: Buffer | undefined): void {
    this.#binding.end(id, bytes);
  }

  /** Relays client `id` with the upstream it dialed, after the bytes owed to each side. */
  join(id: number, dialed: number, toUpstream: Buffer | undefined, toClient: Buffer | undefined): void {
    this.#binding.join(id, dialed, toUpstream, toClient);
  }

  /** Bytes from and to the client so far. */
  bytes(id: number): readonly [number, number] {
    return this.#binding.bytes(id);
  }

  /** Milliseconds since bytes last moved either way. */
  idleMs(id: number): number {
    return this.#binding.idleMs(id);
  }

  /** Closes it now (with a reset when asked); nobody is called back. Returns the bytes moved. */
  destroy(id: number, reset = false): readonly [number, number] {
    this.#handlers[id] = undefined;
    return this.#binding.destroy(id, reset);
  }

  stats(): NativeStats {
    return this.#binding.stats();
  }

  figures(): RelayFigures {
    return { relay: 'splice', stats: this.stats() };
  }

  describe(): RelayDescription {
    return { relay: 'splice' };
  }

  readonly #accepted = (
    listener: number,
    id: number,
    remoteAddress: string,
    remotePort: number,
    localAddress: string,
    localPort: number,
    chunk: Buffer | null,
  ): void => {
    const onClient = this.#listeners[listener];
    if (onClient === undefined) this.#binding.destroy(id, false);
    else onClient(new NativeClient(this, id, chunk), { remoteAddress, remotePort, localAddress, localPort });
  };

  readonly #received = (id: number, chunk: Buffer | null): void => {
    const handler = this.#handlers[id];
    if (chunk === null) handler?.ended();
    else handler?.received(chunk);
  };

  readonly #closed = (id: number, bytesIn: number, bytesOut: number, errno: number): void => {
    const handler = this.#handlers[id];
    this.#handlers[id] = undefined;
    handler?.closed(bytesIn, bytesOut, errno);
  };

  readonly #drained = (id: number): void => {
    this.#handlers[id]?.drained();
  };

  readonly #dialed = (id: number, errno: number): void => {
    const done = this.#dials[id];
    this.#dials[id] = undefined;
    done?.(errno);
  };
}

/** A client accepted by the native path: a small id, with the bytes that came with the accept. */
export class NativeClient implements Client {
  readonly #native: NativeRelay;
  readonly #id: number;
  #first: Buffer | null;

  constructor(native: NativeRelay, id: number, first: Buffer | null) {
    this.#native = native;
    this.#id = id;
    this.#first = first;
  }

  listen(handler: ClientHandler): void {
    this.#native.own(this.#id, handler);
    const first = this.#first;
    this.#first = null;
    if (first !== null) handler.received(first);
  }

  bytes(): readonly [number, number] {
    return this.#native.bytes(this.#id);
  }

  read(limit: number): void {
    this.#native.read(this.#id, limit);
  }

  write(bytes: string): number {
    return this.#native.send(this.#id, Buffer.from(bytes, 'latin1'));
  }

  pause(): void {
    this.#native.pause(this.#id);
  }

  end(reply?: string): void {
    this.#native.end(this.#id, reply === undefined ? undefined : Buffer.from(reply, 'latin1'));
  }

  async connect(plan: ConnectPlan, cancel: ConnectCancel): Promise<Upstream> {
    const native = this.#native;
    const { upstream: dialed, endpoint } = await connectUpstream(plan, cancel, native.dial);
    return {
      endpoint,
      relay: (toUpstream, toClient) => native.join(this.#id, dialed, toUpstream, toClient),
      destroy: () => native.destroy(dialed),
    };
  }

  idleMs(): number {
    return this.#native.idleMs(this.#id);
  }

  destroy(): readonly [number, number] {
    return this.#native.destroy(this.#id);
  }
}

let loaded: NativeRelay | { readonly reason: string } | undefined;

/**
 * How many pipes directions may hold at once (SWITCHYARD_RELAY_PIPES, default 1024). A pipe is
 * held while the destination has not taken what was read for it; past the cap a direction
 * copies through memory instead (at most 64 KiB), so clients that do not read cannot make the
 * relay use up the process's file descriptors.
 */
function maxPipes(): number {
  const n = Number(process.env['SWITCHYARD_RELAY_PIPES'] ?? 1024);
  return Number.isInteger(n) && n >= 0 && n <= 1_000_000 ? n : 1024;
}

/** A listening socket's descriptor and the address it is bound to. */
interface ListeningSocket {
  readonly fd: number;
  readonly address: AddressInfo;
}

function addressInfo(address: string, port: number): AddressInfo {
  return { address, family: isIP(address) === 6 ? 'IPv6' : 'IPv4', port };
}

/** A descriptor handed over: the address it is bound to (it must be an IP socket). */
function handedSocket(fd: number): ListeningSocket {
  const [address, port] = handoff().localAddress(fd);
  return { fd, address: addressInfo(address, port) };
}

/**
 * Binds and listens as Node's server.listen({ host, port }) does (a host name resolved to its
 * first address; SO_REUSEADDR; "::" takes IPv4 too), without a net.Server, and fails as it does:
 * "listen EADDRINUSE: address already in use 0.0.0.0:5432", with the code.
 */
async function bind(host: string, port: number): Promise<ListeningSocket> {
  const ip = isIP(host) !== 0 ? host : (await lookup(host)).address;
  try {
    const bound = bindListener(ip, port, { backlog: listenBacklog });
    return { fd: bound.fd, address: addressInfo(bound.address, bound.port) };
  } catch (err) {
    const errno = (err as NodeJS.ErrnoException).errno;
    if (typeof errno !== 'number' || errno >= 0) throw err;
    const code = getSystemErrorName(errno);
    const text = getSystemErrorMap().get(errno)?.[1] ?? code;
    throw Object.assign(new Error(`listen ${code}: ${text} ${ip}:${port}`), { code, errno, syscall: 'listen', address: ip, port });
  }
}

/** A failed connect, worded as Node words it ("connect ECONNREFUSED 127.0.0.1:9"). */
function connectError(errno: number, endpoint: Endpoint): Error {
  const code = getSystemErrorName(-errno);
  return Object.assign(new Error(`connect ${code} ${endpoint.host}:${endpoint.port}`), { code, errno: -errno, syscall: 'connect' });
}
