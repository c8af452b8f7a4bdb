import { createServer, type AddressInfo, type Socket } from 'node:net';
import type { RelayFigures } from '../metrics/stats.js';
import type { Client, ClientHandler, OnClient, Upstream } from './client.js';
import type { Accepting, Acceptor, DataPath, ListenOn, RelayDescription } from './data-path.js';
import { type ConnectCancel, type ConnectPlan, connectUpstream, dialSocket } from './upstream.js';

/** The accept queue of a listening socket (Node's default, 511, is short for a busy port). */
export const listenBacklog = 1024;

/**
 * Node's data path, where the native one does not run (not Linux, the addon not built, or
 * `SWITCHYARD_RELAY=node`): a net.Server accepts, each client is a net.Socket
 * (`SocketClient`), its backends are net.Sockets, and the two are relayed by streams.
 */
export class NodeDataPath implements DataPath {
  readonly kind = 'node';
  /** Why the native path is not in use. */
  readonly reason: string;

  constructor(reason: string) {
    this.reason = reason;
  }

  /**
   * Binds with Node's own bind (it resolves a host name), or listens on a handed descriptor
   * (`net.Server.listen({ fd })`: Node takes it over, and closes it when the server closes; a
   * failure leaves it to the caller, but for listen(2) itself failing on it, which a bound TCP
   * socket does not).
   */
  listen(on: ListenOn, accepting: Accepting): Promise<Acceptor> {
    const server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => accept(socket, accepting.onClient));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen('fd' in on ? { fd: on.fd, backlog: listenBacklog } : { host: on.host, port: on.port, backlog: listenBacklog }, () => {
        server.off('error', reject);
        server.on('error', accepting.onError);
        resolve({
          address: server.address() as AddressInfo,
          firstRead: () => undefined, // a net.Socket is read as the connection asks (SocketClient.read)
          close: () => server.close(),
        });
      });
    });
  }

  figures(): RelayFigures {
    return { relay: 'node' };
  }

  describe(): RelayDescription {
    return { relay: 'node', relayFallback: this.reason };
  }
}

/** Node accepted a client: a SocketClient, with the addresses Node saw. */
function accept(socket: Socket, onClient: OnClient): void {
  const { remoteAddress, remotePort, localAddress, localPort } = socket;
  if (remoteAddress === undefined || remotePort === undefined || localAddress === undefined || localPort === undefined) {
    socket.destroy(); // gone before we saw it
    return;
  }
  onClient(new SocketClient(socket), { remoteAddress, remotePort, localAddress, localPort });
}

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
