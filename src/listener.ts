import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Limits } from './config.js';
import { Connection, type ConnectionHost, type Rejection } from './connection/connection.js';
import { CloseReason } from './errors.js';
import type { Logger } from './log.js';
import { TenantStats } from './metrics/stats.js';
import type { ConnInfo, Router } from './sandbox/router.js';

export interface ListenerOptions {
  readonly tenant: string;
  readonly router: Router;
  readonly limits: Limits;
  /** The service log; the listener adds `tenant` to every line. */
  readonly log: Logger;
  /** Hosting mode's backend policy; absent, any backend is allowed. */
  readonly gate?: ConnectionHost['gate'];
}

/** Rejections kept per tenant, newest last. */
const rejectionRing = 100;

/**
 * A tenant's port: accepts clients, enforces the connection limit, and owns the connections
 * until they finish. `close()` stops accepting and waits for them; `destroy()` ends them now.
 */
export class TenantListener implements ConnectionHost {
  readonly tenant: string;
  readonly log: Logger;
  readonly stats = new TenantStats();
  readonly rejections: Rejection[] = [];
  limits: Limits;
  gate: ConnectionHost['gate'];
  #router: Router;
  /** Open connections per router: a router swapped out is disposed once its last one finishes. */
  readonly #routerUse = new Map<Router, number>();
  readonly #server: Server;
  readonly #connections = new Set<Connection>();
  #draining: Promise<void> | undefined;
  #drained: (() => void) | undefined;

  constructor(options: ListenerOptions) {
    this.tenant = options.tenant;
    this.#router = options.router;
    this.limits = options.limits;
    this.gate = options.gate;
    this.log = options.log.child({ tenant: options.tenant });
    this.#server = createServer({ allowHalfOpen: true, noDelay: true }, this.#accept);
  }

  /** Binds the port; resolves with the bound address (port 0 picks a free one). */
  listen(port: number, host: string): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ port, host, backlog: 1024 }, () => {
        this.#server.off('error', reject);
        this.#server.on('error', (err) => this.log.error({ err }, 'listener error'));
        resolve(this.#server.address() as AddressInfo);
      });
    });
  }

  get address(): AddressInfo | null {
    return this.#server.address() as AddressInfo | null;
  }

  /** The router new connections get. */
  get router(): Router {
    return this.#router;
  }

  /**
   * Hot swap: new connections get `router` at once; open ones keep the router they were
   * accepted with, which is disposed when the last of them finishes.
   */
  setRouter(router: Router): void {
    const old = this.#router;
    this.#router = router;
    if (old !== router && !this.#routerUse.has(old)) old.dispose();
  }

  /** Bytes from and to clients, finished connections and open ones together. */
  get bytes(): { in: number; out: number } {
    let bytesIn = this.stats.bytesIn;
    let bytesOut = this.stats.bytesOut;
    for (const c of this.#connections) {
      const [i, o] = c.bytes;
      bytesIn += i;
      bytesOut += o;
    }
    return { in: bytesIn, out: bytesOut };
  }

  get connectionCount(): number {
    return this.#connections.size;
  }

  /** accept: a new client. Over the connection limit it is accepted and closed at once. */
  readonly #accept = (socket: Socket): void => {
    const { remoteAddress, remotePort, localAddress, localPort } = socket;
    if (remoteAddress === undefined || remotePort === undefined || localAddress === undefined || localPort === undefined) {
      socket.destroy(); // gone before we saw it
      return;
    }
    this.stats.connections++;
    if (this.#connections.size >= this.limits.maxConnections) {
      const client = `${remoteAddress}:${remotePort}`;
      this.stats.rejected(CloseReason.connectionLimit);
      this.rejected({
        time: new Date(),
        client,
        reason: CloseReason.connectionLimit,
        message: `over the limit of ${this.limits.maxConnections} connections`,
        firstBytes: Buffer.alloc(0),
      });
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    const info: ConnInfo = { tenant: this.tenant, remoteAddress, remotePort, localAddress, localPort };
    const router = this.#router;
    this.#routerUse.set(router, (this.#routerUse.get(router) ?? 0) + 1);
    const connection = new Connection(this, socket, info, router);
    this.#connections.add(connection);
    this.stats.active++;
    connection.accept();
  };

  rejected(rejection: Rejection): void {
    if (this.rejections.push(rejection) > rejectionRing) this.rejections.shift();
    const level = rejection.reason === CloseReason.routerClose ? 'info' : 'warn';
    this.log[level]({ client: rejection.client, reason: rejection.reason, detail: rejection.message }, 'connection rejected');
  }

  finished(connection: Connection): void {
    if (!this.#connections.delete(connection)) return;
    this.stats.active--;
    const router = connection.router;
    const left = (this.#routerUse.get(router) ?? 1) - 1;
    if (left > 0) this.#routerUse.set(router, left);
    else {
      this.#routerUse.delete(router);
      if (router !== this.#router) router.dispose();
    }
    if (this.#connections.size === 0) this.#drained?.();
  }

  /** Graceful: stop accepting (new clients are refused), resolve once every connection has finished. */
  close(): Promise<void> {
    this.#server.close();
    if (this.#connections.size === 0) return Promise.resolve();
    this.#draining ??= new Promise((resolve) => {
      this.#drained = resolve;
    });
    return this.#draining;
  }

  /** The kill switch: destroys every open connection now and keeps accepting. Returns how many were open. */
  closeConnections(reason: CloseReason = CloseReason.killed): number {
    const open = this.#connections.size;
    for (const connection of this.#connections) connection.destroy(reason);
    return open;
  }

  /** Whether the port is bound now. */
  get listening(): boolean {
    return this.#server.listening;
  }

  /** Forced: stop accepting and destroy every open connection now. Resolves with how many were open. */
  destroy(reason: CloseReason = CloseReason.shutdown): number {
    this.#server.close();
    const open = this.#connections.size;
    for (const connection of this.#connections) connection.destroy(reason);
    return open;
  }
}
