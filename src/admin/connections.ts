/**
 * The admin API's connections: how long each may take, and how many there may be. The admin
 * address shares the process's descriptors with every tenant's clients, and an operator must
 * reach it while someone holds connections open to it.
 *
 * - A connection must finish its request headers within `headersTimeoutMs` of opening (or of
 *   its previous answer) and its whole request within `requestTimeoutMs`, or it is closed;
 *   so a client that sends nothing, or trickles headers or a body, goes. Node checks these
 *   deadlines every `checkIntervalMs`.
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
  /** Open connections, oldest first (Map keeps insertion order), and whether a request is in progress. */
  readonly #open = new Map<Socket, { busy: boolean }>();
  /** Connections that arrived past the cap with no place to take: their requests get 503. */
  readonly #over = new WeakSet<Socket>();
  readonly #max: number;

  constructor(server: Server, o: AdminConnectionOptions) {
    this.#max = o.maxConnections;
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
    this.#open.set(socket, { busy: false });
    socket.once('close', () => this.#open.delete(socket));
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
    res.once('close', () => {
      state.busy = false;
      // Now idle: it goes to the back of the line of connections that may be replaced.
      if (this.#open.delete(socket) && !socket.destroyed) this.#open.set(socket, state);
    });
    return true;
  }
}
