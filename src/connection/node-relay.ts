import type { Socket } from 'node:net';
import type { Client, ClientHandler, Upstream } from './client.js';
import { type ConnectCancel, type ConnectPlan, connectUpstream, dialSocket } from './upstream.js';

/** A client as a net.Socket, its backends net.Sockets, and its relay Node streams. */
export class SocketClient implements Client {
  readonly #socket: Socket;
  #handler: ClientHandler | undefined;
  #relay: StreamRelay | undefined;
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

  async connect(plan: ConnectPlan, cancel: ConnectCancel): Promise<Upstream> {
    const { upstream, endpoint } = await connectUpstream(plan, cancel, dialSocket);
    return {
      endpoint,
      relay: (toUpstream, toClient) => this.#relayWith(upstream, toUpstream, toClient),
      destroy: () => upstream.destroy(),
    };
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

  /** Hands the client over to a relay with `upstream`: the relay hears both sockets from now on. */
  #relayWith(upstream: Socket, toUpstream: Buffer | undefined, toClient: Buffer | undefined): void {
    const socket = this.#socket;
    socket.off('data', this.#data);
    socket.off('end', this.#end);
    socket.off('error', this.#error);
    socket.off('close', this.#close);
    this.#relay = new StreamRelay(socket, upstream, toUpstream, toClient, socket.readableEnded, (errno) => this.#closed(errno));
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

/**
 * A client and its backend relayed by Node streams: each direction is spliced with
 * backpressure, a FIN is forwarded as a half-close, a reset as a reset, and `onClosed` is
 * called once both sockets have closed.
 */
class StreamRelay {
  readonly #client: Socket;
  readonly #upstream: Socket;
  readonly #onClosed: (errno: number) => void;
  #open = 2;
  #errno = 0;
  #lastActivity = Date.now();

  constructor(
    client: Socket,
    upstream: Socket,
    toUpstream: Buffer | undefined,
    toClient: Buffer | undefined,
    clientEnded: boolean,
    onClosed: (errno: number) => void,
  ) {
    this.#client = client;
    this.#upstream = upstream;
    this.#onClosed = onClosed;
    client.on('error', (err) => this.#failed(upstream, err));
    upstream.on('error', (err) => this.#failed(client, err));
    client.on('close', this.#socketClosed);
    upstream.on('close', this.#socketClosed);
    if (toUpstream !== undefined) upstream.write(toUpstream);
    if (toClient !== undefined) client.write(toClient);
    splice(client, upstream, this.#touch);
    splice(upstream, client, this.#touch);
    if (clientEnded) upstream.end();
    client.resume();
  }

  idleMs(): number {
    return Date.now() - this.#lastActivity;
  }

  /** Closes both sides now. */
  destroy(): void {
    this.#upstream.destroy();
    this.#client.destroy();
  }

  readonly #touch = (): void => {
    this.#lastActivity = Date.now();
  };

  /** A socket failed: its peer is torn down, with a reset if it was reset. */
  #failed(peer: Socket, err: NodeJS.ErrnoException): void {
    this.#errno ||= Math.abs(err.errno ?? 0);
    if (peer.destroyed) return;
    if (err.code === 'ECONNRESET' && typeof peer.resetAndDestroy === 'function') peer.resetAndDestroy();
    else peer.destroy();
  }

  /** A socket closed; one side fully gone cannot be relayed with the other. Both: done. */
  readonly #socketClosed = (): void => {
    const client = this.#client;
    const upstream = this.#upstream;
    if (--this.#open > 0) {
      if (upstream.destroyed && !client.destroyed && !client.writableEnded) client.end();
      if (client.destroyed && !upstream.destroyed) upstream.destroy();
      return;
    }
    this.#onClosed(this.#errno);
  };
}

/**
 * Splices one direction of a relayed connection: every chunk read from `from` is written to
 * `to`; when `to` cannot take more, `from` is paused until it drains, so a slow reader holds
 * the fast writer back and memory stays flat. `from`'s FIN is forwarded as `to`'s FIN (a
 * half-close), and the other direction keeps flowing until it ends too.
 */
function splice(from: Socket, to: Socket, onChunk: () => void): void {
  from.on('data', (chunk: Buffer) => {
    onChunk();
    if (!to.write(chunk)) from.pause();
  });
  to.on('drain', () => from.resume());
  from.on('end', () => to.end());
}
