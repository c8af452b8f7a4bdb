import { Socket } from 'node:net';
import type { DialedUpstream } from './native-relay.js';
import { NodeRelay } from './relay.js';
import { dialSocket, type Dial } from './upstream.js';

/** A client's addresses, as the listener saw them at accept. */
export interface Peer {
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localAddress: string;
  readonly localPort: number;
}

/** A connected backend: a net.Socket, or one the native path dialed. */
export type Upstream = Socket | DialedUpstream;

/** What a connection hears from its client. */
export interface ClientHandler {
  /** A chunk from the client, before it is relayed. */
  received(chunk: Buffer): void;
  /** The client sent FIN, before it is relayed. */
  ended(): void;
  /** Everything owed to the client is written, after a `write()` that returned more than 0. */
  drained(): void;
  /**
   * The client is gone, with its relay if it had one: both sides closed, or a socket failed
   * (`errno` is then non-zero). The bytes from and to the client are final.
   */
  closed(bytesIn: number, bytesOut: number, errno: number): void;
}

/**
 * One client, from accept to close, as a connection drives it. Two kinds: the native data
 * path's (`NativeClient`, an id in the addon), or Node's (`SocketClient`, a net.Socket) where
 * the addon does not run.
 */
export interface Client {
  /** How this kind of client's backends are connected. */
  readonly dial: Dial<Upstream>;
  /** Starts telling `handler`; the first bytes, if they came with the accept, arrive now. */
  listen(handler: ClientHandler): void;
  /** Bytes received from and sent to the client so far. */
  bytes(): readonly [number, number];
  /**
   * Reads the client for at most `limit` more bytes (0: not at all) until told again, before
   * it is relayed; what it sends past that waits in the kernel, and TCP holds the client back.
   */
  read(limit: number): void;
  /**
   * Sends bytes (latin1) to the client before it is relayed: a router's reply. Returns the
   * bytes owed to the client that Switchyard still holds (not yet taken by the kernel);
   * `drained()` follows once that is 0.
   */
  write(bytes: string): number;
  /** Stops reading the client (while its backend is connected); what it sends waits. */
  pause(): void;
  /** Sends `reply`, then FIN; what the client still sends is dropped until it closes too. */
  end(reply?: string): void;
  /** Relays the client with `upstream`, after the bytes owed to each side; `closed()` follows. */
  relay(upstream: Upstream, toUpstream: Buffer | undefined, toClient: Buffer | undefined): void;
  /** Milliseconds since bytes last moved either way, while relaying. */
  idleMs(): number;
  /** Closes the client (and its relay) now; nobody is called back. Returns the final bytes. */
  destroy(): readonly [number, number];
}

/** A client as a net.Socket (and its relay as Node streams), where the native path does not run. */
export class SocketClient implements Client {
  readonly dial: Dial<Upstream> = dialSocket;
  readonly #socket: Socket;
  #handler: ClientHandler | undefined;
  #relay: NodeRelay | undefined;
  #errno = 0;
  #done = false;
  /** Bytes the client may still be read for (`read()`). */
  #allow = Number.POSITIVE_INFINITY;
  /** A write left bytes owed: tell the handler once the socket has written them. */
  #drainWanted = false;

  constructor(socket: Socket) {
    this.#socket = socket;
  }

  listen(handler: ClientHandler): void {
    this.#handler = handler;
    const socket = this.#socket;
    socket.on('data', this.#data);
    socket.on('end', this.#end);
    socket.on('error', this.#error);
    socket.on('close', this.#close);
  }

  bytes(): readonly [number, number] {
    return [this.#socket.bytesRead, this.#socket.bytesWritten];
  }

  read(limit: number): void {
    this.#allow = limit;
    if (limit > 0) this.#socket.resume();
    else this.#socket.pause();
  }

  write(bytes: string): number {
    const socket = this.#socket;
    socket.write(bytes, 'latin1', this.#wrote);
    const owed = socket.writableLength;
    if (owed > 0) this.#drainWanted = true;
    return owed;
  }

  pause(): void {
    this.#socket.pause();
  }

  end(reply?: string): void {
    const socket = this.#socket;
    this.#drainWanted = false;
    socket.off('data', this.#data);
    socket.resume();
    if (reply !== undefined) socket.end(reply, 'latin1');
    else socket.end();
  }

  relay(upstream: Upstream, toUpstream: Buffer | undefined, toClient: Buffer | undefined): void {
    if (!(upstream instanceof Socket)) throw new Error('a net.Socket client is relayed with a net.Socket backend');
    const socket = this.#socket;
    socket.off('data', this.#data);
    socket.off('end', this.#end);
    socket.off('error', this.#error);
    socket.off('close', this.#close);
    this.#relay = new NodeRelay(socket, upstream, toUpstream, toClient, socket.readableEnded, (errno) => this.#closed(errno));
  }

  idleMs(): number {
    return this.#relay?.idleMs() ?? 0;
  }

  destroy(): readonly [number, number] {
    this.#done = true;
    this.#socket.on('error', ignore);
    if (this.#relay !== undefined) this.#relay.destroy();
    else this.#socket.destroy();
    return this.bytes();
  }

  /**
   * A chunk, as far as the client may be read: past that, the socket is paused and the rest is
   * put back (at most one read's worth, held by the stream, not the connection).
   */
  readonly #data = (chunk: Buffer): void => {
    const socket = this.#socket;
    if (chunk.length > this.#allow) {
      socket.pause();
      socket.unshift(chunk.subarray(this.#allow));
      chunk = chunk.subarray(0, this.#allow);
    }
    this.#allow -= chunk.length;
    if (this.#allow === 0) socket.pause();
    if (chunk.length > 0) this.#handler?.received(chunk);
  };

  /** A write went to the kernel; the last one owed, if someone waits for it, drains. */
  readonly #wrote = (): void => {
    if (!this.#drainWanted || this.#done || this.#relay !== undefined || this.#socket.writableLength > 0) return;
    this.#drainWanted = false;
    this.#handler?.drained();
  };

  readonly #end = (): void => this.#handler?.ended();

  readonly #error = (err: NodeJS.ErrnoException): void => {
    this.#errno = Math.abs(err.errno ?? 0);
  };

  readonly #close = (): void => this.#closed(this.#errno);

  #closed(errno: number): void {
    if (this.#done) return;
    this.#done = true;
    const [bytesIn, bytesOut] = this.bytes();
    this.#handler?.closed(bytesIn, bytesOut, errno);
  }
}

function ignore(): void {}
