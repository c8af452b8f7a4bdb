/**
 * The admin API's connections: how long each may take, and how many there may be. The admin
 * address shares the process's descriptors with every tenant's clients, and an operator must
 * reach it while someone holds connections open to it.
 *
 * - A connection must finish its request headers within `headersTimeoutMs` of opening (or of
 *   its previous answer), or it is closed (with a 408 if it sent anything): so a client that
 *   sends nothing, or trickles its headers, goes. This gate keeps that deadline itself, since
 *   Node's own `headersTimeout` does not apply to a connection that has sent nothing. A request
 *   must be received whole within `requestTimeoutMs` (Node checks it every `checkIntervalMs`),
 *   so a trickling body is answered 408 and closed.
 * - An idle keep-alive connection is closed after `keepAliveTimeoutMs`.
 * - At most `maxConnections` are served. A connection past the cap first takes the place of
 *   the oldest one with no request in progress (one that has sent nothing yet, or an idle
 *   keep-alive one), so holding idle connections cannot lock the operator out; when every
 *   connection is in the middle of a request, the newcomer's request is answered 503. Past
 *   twice the cap, Node drops new connections at once.
 */
import type { IncomingMessage, Server, ServerOptions, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

export interface AdminConnectionOptions {
  readonly maxConnections: number;
  readonly headersTimeoutMs: number;
  readonly requestTimeoutMs: number;
  readonly keepAliveTimeoutMs: number;
  readonly checkIntervalMs: number;
}

export const adminConnectionDefaults: AdminConnectionOptions = Object.freeze({
  maxConnections: 128,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 20_000,
  keepAliveTimeoutMs: 5_000,
  checkIntervalMs: 1_000,
});


/** The http.Server options that carry the deadlines. */
export function serverTimeouts(o: AdminConnectionOptions): ServerOptions {
  return {
    headersTimeout: Math.min(o.headersTimeoutMs, o.requestTimeoutMs),
    requestTimeout: o.requestTimeoutMs,
    keepAliveTimeout: o.keepAliveTimeoutMs,
    connectionsCheckingInterval: o.checkIntervalMs,
  };
}

/** Tracks the server's connections in arrival order and applies the cap. */
export class ConnectionGate {
  /** Open connections, oldest first (Map keeps insertion order): whether a request is in progress, and its headers deadline. */
  readonly #open = new Map<Socket, { busy: boolean; deadline: NodeJS.Timeout | undefined }>();
  readonly #headersMs: number;
  /** Connections that arrived past the cap with no place to take: their requests get 503. */
  readonly #over = new WeakSet<Socket>();
  readonly #max: number;

  constructor(server: Server, o: AdminConnectionOptions) {
    this.#max = o.maxConnections;
    this.#headersMs = o.headersTimeoutMs;
    server.maxConnections = 2 * o.maxConnections;
    server.keepAliveTimeout = o.keepAliveTimeoutMs;
    server.on('connection', (socket: Socket) => this.#admit(socket));
  }

  get size(): number {
    return this.#open.size;
  }

  #admit(socket: Socket): void {
    if (this.#open.size >= this.#max) {
      const idle = [...this.#open].find(([, s]) => !s.busy)?.[0];
      if (idle !== undefined) {
        this.#open.delete(idle);
        idle.destroy();
      } else {
        this.#over.add(socket);
      }
    }
    const state = { busy: false, deadline: this.#deadline(socket) };
    this.#open.set(socket, state);
    socket.once('close', () => {
      clearTimeout(state.deadline);
      this.#open.delete(socket);
    });
  }

  /** Closes `socket` if no request has begun on it within the headers deadline. */
  #deadline(socket: Socket): NodeJS.Timeout {
    const sentAtStart = socket.bytesRead;
    return setTimeout(() => {
      if (socket.bytesRead === sentAtStart) {
        socket.destroy();
        return;
      }
      socket.end('HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      setTimeout(() => socket.destroy(), 1000).unref();
    }, this.#headersMs).unref();
  }

  /**
   * Called for each request before it is handled: false when it must be answered 503 (its
   * connection came past the cap). Marks the connection busy until the answer is sent.
   */
  begin(req: IncomingMessage, res: ServerResponse): boolean {
    const socket = req.socket;
    if (this.#over.has(socket)) return false;
    const state = this.#open.get(socket);
    if (state === undefined) return true;
    state.busy = true;
    clearTimeout(state.deadline);
    state.deadline = undefined;
    res.once('close', () => {
      state.busy = false;
      if (!socket.destroyed) state.deadline = this.#deadline(socket);
      // Now idle: it goes to the back of the line of connections that may be replaced.
      if (this.#open.delete(socket) && !socket.destroyed) this.#open.set(socket, state);
    });
    return true;
  }
}
