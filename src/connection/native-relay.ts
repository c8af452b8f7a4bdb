import { createRequire } from 'node:module';
import { Socket } from 'node:net';
import { getSystemErrorName } from 'node:util';
import type { Endpoint } from '../routing/endpoint.js';
import type { Dial } from './upstream.js';

/** The addon built from src/native/splice-relay.c (see that file for how it relays). */
interface Binding {
  init(onClosed: (id: number, bytesIn: number, bytesOut: number, errno: number) => void, onDialed: (id: number, errno: number) => void, maxPipes?: number): void;
  add(clientFd: number, upstreamFd: number, toUpstream?: Buffer, toClient?: Buffer): number;
  dial(ip: string, port: number): number;
  adopt(clientFd: number, id: number, toUpstream?: Buffer, toClient?: Buffer): void;
  release(id: number): number;
  bytes(id: number): [number, number];
  idleMs(id: number): number;
  destroy(id: number, reset: boolean): [number, number];
  stats(): RelayStats;
}

export interface RelayStats {
  /** Relays open now. */
  relays: number;
  /** Pipes holding bytes for a direction now (two descriptors each), at most `maxPipes`. */
  lentPipes: number;
  /** Empty pipes kept for reuse (two descriptors each), at most 64. */
  sparePipes: number;
}

/** libuv's TCP handle, as far as a handover needs it. */
interface TcpHandle {
  readonly fd?: number;
  reading?: boolean;
  readStop(): number;
}

/** Whoever handed a connection over hears how it ended. */
export interface RelayOwner {
  /** The relay ended by itself: both sides closed, or a socket failed (`errno` is then non-zero). */
  relayClosed(bytesIn: number, bytesOut: number, errno: number): void;
}

/** A backend connected by the native relay, waiting for its client (`NativeRelay.dial`). */
export class DialedUpstream {
  constructor(
    readonly relay: NativeRelay,
    readonly id: number,
  ) {}

  /** Closes it unused. */
  destroy(): void {
    this.relay.destroy(this.id);
  }
}

/** Where `npm ci` (node-gyp) leaves the addon, from dist/src/connection/. */
const addonPath = '../../../build/Release/splice_relay.node';

/**
 * The native data path for established connections. Once a connection is routed and its
 * backend connected, `adopt()` hands both sockets to the addon: it relays them with splice(2)
 * on this event loop, with no net.Socket, stream or JS callback per chunk, and reports back
 * once, when the relay ends. What Node had already read or was asked to send goes first.
 */
export class NativeRelay {
  readonly #binding: Binding;
  readonly #owners: (RelayOwner | undefined)[] = [];
  /** Connects in progress, by relay id: what to call when each finishes. */
  readonly #dials: (((errno: number) => void) | undefined)[] = [];

  private constructor(binding: Binding, maxPipes: number) {
    this.#binding = binding;
    binding.init(this.#closed, this.#dialed, maxPipes);
  }

  /**
   * The process's native relay; undefined where it cannot run (not Linux, the addon not built,
   * or `SWITCHYARD_RELAY=node`), and connections are then relayed by Node streams.
   */
  static get(): NativeRelay | undefined {
    if (loaded === undefined) loaded = NativeRelay.#load();
    return loaded.relay;
  }

  /** Why the native relay is not in use, if it is not. */
  static get unavailableReason(): string | undefined {
    NativeRelay.get();
    return loaded?.reason;
  }

  /** For the start-up log line: which relay established connections get, and why not the native one. */
  static describe(): { relay: 'splice' | 'node'; relayFallback?: string } {
    const reason = NativeRelay.unavailableReason;
    return reason === undefined ? { relay: 'splice' } : { relay: 'node', relayFallback: reason };
  }

  static #load(): { relay?: NativeRelay; reason?: string } {
    if (process.env['SWITCHYARD_RELAY'] === 'node') return { reason: 'SWITCHYARD_RELAY=node' };
    if (process.platform !== 'linux') return { reason: `splice(2) is Linux only (this is ${process.platform})` };
    try {
      const binding = createRequire(import.meta.url)(addonPath) as Binding;
      return { relay: new NativeRelay(binding, maxPipes()) };
    } catch (err) {
      return { reason: `the addon did not load: ${(err as Error).message}` };
    }
  }

  /**
   * Takes over `client` and `upstream`: `toUpstream` and `toClient` are sent first, then
   * whatever Node had read from either side, then the rest as it comes. On success both
   * sockets are destroyed (the relay holds their duplicates) and the relay's id is returned;
   * the caller must have removed its own listeners. Undefined, with both sockets untouched,
   * when they cannot be handed over (bytes still queued in Node for either, say).
   */
  adopt(client: Socket, upstream: Socket, toUpstream: Buffer | undefined, toClient: Buffer | undefined, owner: RelayOwner): number | undefined {
    const ch = handleOf(client);
    const uh = handleOf(upstream);
    if (ch === undefined || uh === undefined) return undefined;
    if (client.writableLength > 0 || upstream.writableLength > 0) return undefined;
    const fromClient = drain(client, ch);
    const fromUpstream = drain(upstream, uh);
    let id: number;
    try {
      id = this.#binding.add(ch.fd, uh.fd, join(toUpstream, fromClient), join(toClient, fromUpstream));
    } catch {
      undrain(client, ch, fromClient);
      undrain(upstream, uh, fromUpstream);
      return undefined;
    }
    this.#owners[id] = owner;
    for (const socket of [client, upstream]) {
      socket.removeAllListeners();
      socket.on('error', ignore);
      socket.destroy();
    }
    return id;
  }

  /**
   * A connect attempt made by the relay itself, to an IP address: no net.Socket is built for a
   * backend that the relay will carry anyway. Resolves with the dialed upstream, for
   * `adoptDialed()` (or `socketFor()` when that declines).
   */
  readonly dial: Dial<DialedUpstream> = (endpoint, timeoutMs, cancel) =>
    new Promise((resolve, reject) => {
      const id = this.#binding.dial(endpoint.host, endpoint.port);
      const timer = setTimeout(() => fail(new Error(`connect timed out after ${timeoutMs} ms`)), timeoutMs);
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
        if (errno === 0) resolve(new DialedUpstream(this, id));
        else reject(connectError(errno, endpoint));
      };
    });

  /**
   * Relays `client` with the dialed upstream `id`, as `adopt()` does. False, with the client
   * untouched and the dial still open, when the client cannot be handed over.
   */
  adoptDialed(client: Socket, id: number, toUpstream: Buffer | undefined, toClient: Buffer | undefined, owner: RelayOwner): boolean {
    const ch = handleOf(client);
    if (ch === undefined || client.writableLength > 0) return false;
    const fromClient = drain(client, ch);
    try {
      this.#binding.adopt(ch.fd, id, join(toUpstream, fromClient), toClient);
    } catch {
      undrain(client, ch, fromClient);
      return false;
    }
    this.#owners[id] = owner;
    client.removeAllListeners();
    client.on('error', ignore);
    client.destroy();
    return true;
  }

  /** The dialed upstream `id` as a net.Socket, for Node streams to relay; the id is gone. */
  socketFor(id: number): Socket {
    return new Socket({ fd: this.#binding.release(id), readable: true, writable: true, allowHalfOpen: true });
  }

  /** Bytes from and to the client that the relay has moved. */
  bytes(id: number): readonly [number, number] {
    return this.#binding.bytes(id);
  }

  /** Milliseconds since bytes last moved either way. */
  idleMs(id: number): number {
    return this.#binding.idleMs(id);
  }

  /** Closes both sides now (with a reset when asked); the owner is not called. Returns the bytes moved. */
  destroy(id: number, reset = false): readonly [number, number] {
    this.#owners[id] = undefined;
    return this.#binding.destroy(id, reset);
  }

  stats(): RelayStats {
    return this.#binding.stats();
  }

  readonly #dialed = (id: number, errno: number): void => {
    const done = this.#dials[id];
    this.#dials[id] = undefined;
    done?.(errno);
  };

  readonly #closed = (id: number, bytesIn: number, bytesOut: number, errno: number): void => {
    const owner = this.#owners[id];
    this.#owners[id] = undefined;
    owner?.relayClosed(bytesIn, bytesOut, errno);
  };
}

let loaded: { relay?: NativeRelay; reason?: string } | undefined;

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

function ignore(): void {}

function handleOf(socket: Socket): (TcpHandle & { fd: number }) | undefined {
  const handle = (socket as unknown as { _handle?: TcpHandle | null })._handle;
  if (handle == null || typeof handle.fd !== 'number' || handle.fd < 0 || socket.destroyed || socket.connecting) return undefined;
  return handle as TcpHandle & { fd: number };
}

/**
 * Stops Node reading the socket and takes what it had read but not delivered. `reading` is
 * left true so that `read()` does not start the handle again (net.Socket's `_read` checks it).
 */
function drain(socket: Socket, handle: TcpHandle): Buffer[] {
  handle.readStop();
  handle.reading = true;
  const chunks: Buffer[] = [];
  for (let chunk: Buffer | null; (chunk = socket.read() as Buffer | null) !== null; ) chunks.push(chunk);
  return chunks;
}

/** Puts drained bytes back, in order, and lets Node read again. */
function undrain(socket: Socket, handle: TcpHandle, chunks: Buffer[]): void {
  for (let i = chunks.length - 1; i >= 0; i--) socket.unshift(chunks[i]!);
  handle.reading = false;
}

function join(first: Buffer | undefined, rest: Buffer[]): Buffer | undefined {
  if (rest.length === 0) return first;
  return Buffer.concat(first === undefined ? rest : [first, ...rest]);
}

/** A failed connect, worded as Node words it ("connect ECONNREFUSED 127.0.0.1:9"). */
function connectError(errno: number, endpoint: Endpoint): Error {
  const code = getSystemErrorName(-errno);
  return Object.assign(new Error(`connect ${code} ${endpoint.host}:${endpoint.port}`), { code, errno: -errno, syscall: 'connect' });
}
