import type { Socket } from 'node:net';

/**
 * A client and its backend relayed by Node streams, where the native path does not run: each
 * direction is spliced with backpressure, a FIN is forwarded as a half-close, a reset as a
 * reset, and `onClosed` is called once both sockets have closed.
 */
export class NodeRelay {
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
