import type { AddressInfo } from 'node:net';
import type { Limits } from './config.js';
import type { Client, Peer } from './connection/client.js';
import { Connection, type ConnectionHost, type Rejection } from './connection/connection.js';
import { type Acceptor, type DataPath, type ListenOn, processDataPath } from './connection/data-path.js';
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
  /** How clients are accepted and relayed; absent, the process's (`processDataPath()`). */
  readonly dataPath?: DataPath;
}

/** Rejections kept per tenant, newest last. */
const rejectionRing = 100;

/**
 * A tenant's port: accepts clients, enforces the connection limit, and owns the connections
 * until they finish. `close()` stops accepting and waits for them; `destroy()` ends them now.
 * Its data path (given, or the process's) binds the port or takes a handed one, and accepts.
 */
export class TenantListener implements ConnectionHost {
  readonly tenant: string;
  readonly log: Logger;
  /** How its clients are accepted and relayed. */
  readonly dataPath: DataPath;
  readonly stats = new TenantStats();
  readonly rejections: Rejection[] = [];
  #limits: Limits;
  gate: ConnectionHost['gate'];
  #router: Router;
  /** Open connections per router: a router swapped out is disposed once its last one finishes. */
  readonly #routerUse = new Map<Router, number>();
  /** The listening socket, while accepting. */
  #acceptor: Acceptor | undefined;
  /** Closed or destroyed: it never accepts again. */
  #stopped = false;
  readonly #connections = new Set<Connection>();
  #draining: Promise<void> | undefined;
  #drained: (() => void) | undefined;

  constructor(options: ListenerOptions) {
    this.tenant = options.tenant;
    this.#router = options.router;
    this.#limits = options.limits;
    this.gate = options.gate;
    this.log = options.log.child({ tenant: options.tenant });
    this.dataPath = options.dataPath ?? processDataPath();
  }

  /**
   * Starts accepting: on `host:port`, bound here (a host name is resolved first; port 0 picks
   * a free port), or on a listening socket handed over as `{ fd }`, which is the listener's from
   * then on (see ListenOn). Resolves with the bound address; rejects as Node's listen does
   * (`EADDRINUSE`, `EACCES` …), or if the listener is closed meanwhile.
   */
  listen(port: number, host: string): Promise<AddressInfo>;
  listen(on: ListenOn): Promise<AddressInfo>;
  async listen(...args: [number, string] | [ListenOn]): Promise<AddressInfo> {
    const on: ListenOn = args.length === 2 ? { port: args[0], host: args[1] } : args[0];
    const acceptor = await this.dataPath.listen(on, {
      onClient: this.#admit,
      firstRead: this.#limits.maxBufferBytes,
      onError: (err) => this.log.error({ err }, 'listener error'),
    });
    // Closed while the port was being bound: it stays closed.
    if (this.#stopped) {
      acceptor.close();
      throw new Error('listener closed while binding');
    }
    // Read at accept no further than the cap in force now (it may have changed meanwhile).
    acceptor.firstRead(this.#limits.maxBufferBytes);
    this.#acceptor = acceptor;
    return acceptor.address;
  }

  /** The limits new connections get (open ones keep theirs). */
  get limits(): Limits {
    return this.#limits;
  }

  set limits(limits: Limits) {
    this.#limits = limits;
    // The native path reads each client once at accept: no further than the buffer cap.
    this.#acceptor?.firstRead(limits.maxBufferBytes);
  }

  /** The bound address while listening. */
  get address(): AddressInfo | null {
    return this.#acceptor?.address ?? null;
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
  readonly #admit = (client: Client, peer: Peer): void => {
    this.stats.connections++;
    if (this.#connections.size >= this.limits.maxConnections) {
      this.stats.rejected(CloseReason.connectionLimit);
      this.rejected({
        time: new Date(),
        client: `${peer.remoteAddress}:${peer.remotePort}`,
        reason: CloseReason.connectionLimit,
        message: `over the limit of ${this.limits.maxConnections} connections`,
        firstBytes: Buffer.alloc(0),
      });
      client.destroy();
      return;
    }
    const info: ConnInfo = { tenant: this.tenant, ...peer };
    const router = this.#router;
    this.#routerUse.set(router, (this.#routerUse.get(router) ?? 0) + 1);
    const connection = new Connection(this, client, info, router);
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
    this.#stopAccepting();
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
    return this.#acceptor !== undefined;
  }

  /** Closes the port: clients that connect from now on are refused. */
  #stopAccepting(): void {
    this.#stopped = true;
    this.#acceptor?.close();
    this.#acceptor = undefined;
  }

  /** Forced: stop accepting and destroy every open connection now. Resolves with how many were open. */
  destroy(reason: CloseReason = CloseReason.shutdown): number {
    this.#stopAccepting();
    const open = this.#connections.size;
    for (const connection of this.#connections) connection.destroy(reason);
    return open;
  }
}
