import type { AddressInfo } from 'node:net';
import type { Limits } from './config.js';
import type { Client, Peer } from './connection/client.js';
import { Connection, type ConnectionHost, type Rejection } from './connection/connection.js';
import { type Acceptor, type DataPath, type ListenOn, processDataPath } from './connection/data-path.js';
import { CloseReason } from './errors.js';
import type { Logger } from './log.js';
import { TenantStats } from './metrics/stats.js';
import { type Candidate, choose } from './routing/rollout.js';
import type { ConnInfo, Router } from './sandbox/router.js';

export interface ListenerOptions {
  readonly tenant: string;
  readonly router: Router;
  readonly limits: Limits;
  /** The service log; the listener adds `tenant` to every line. */
  readonly log: Logger;
  /** Hosting mode's backend policy; absent, any backend is allowed. */
  readonly gate?: ConnectionHost['gate'];
  /** Told of every rejection (the tenant's own log keeps them too). */
  readonly onRejection?: (rejection: Rejection) => void;
  /**
   * Counts open connections against maxConnections; absent, this listener's own count. Proxy
   * processes share the node's count (node/counters.ts), so the limit holds per node.
   */
  readonly admission?: Admission;
  /** How clients are accepted and relayed; absent, the process's (`processDataPath()`). */
  readonly dataPath?: DataPath;
}

/** Where a listener takes a place for a new connection under maxConnections, and gives it back. */
export interface Admission {
  acquire(max: number): boolean;
  release(): void;
}

/** A listener's own count (one process serves the port). */
class LocalAdmission implements Admission {
  #open = 0;
  acquire(max: number): boolean {
    if (this.#open >= max) return false;
    this.#open++;
    return true;
  }
  release(): void {
    this.#open--;
  }
}

/** Rejections kept per tenant, newest last. */
export const rejectionRing = 100;

/**
 * A tenant's port as the hosting service drives it: a TenantListener where this process
 * accepts, or the master's view of a port its proxy processes accept on (node/spread-listener.ts).
 */
export interface TenantPort {
  readonly tenant: string;
  readonly stats: TenantStats;
  readonly rejections: readonly Rejection[];
  /** Bytes from and to clients, finished connections and open ones together. */
  readonly bytes: { in: number; out: number };
  readonly listening: boolean;
  /** The router new connections get (but for a rollout's share). */
  readonly router: Router;
  /** The rollout's router and share, if one is in progress. */
  readonly candidate: Candidate<Router> | undefined;
  limits: Limits;
  gate: ConnectionHost['gate'];
  listen(port: number, host: string): Promise<AddressInfo>;
  /** Hot swap; once it resolves, every new connection gets `router`. */
  setRouter(router: Router): void | Promise<void>;
  /** Hot swap with a gradual rollout; once it resolves, new connections get `stable` or, for the candidate's share of clients, its router. */
  setRouters(stable: Router, candidate: Candidate<Router> | undefined): void | Promise<void>;
  /** The kill switch; resolves with how many connections were open. */
  closeConnections(reason?: CloseReason): number | Promise<number>;
  destroy(reason?: CloseReason): number;
  close(): Promise<void>;
  /** Resolves once new limits and policy are in force everywhere the port is served. */
  settled?(): Promise<void>;
}

/**
 * A tenant's port: accepts clients, enforces the connection limit, and owns the connections
 * until they finish. `close()` stops accepting and waits for them; `destroy()` ends them now.
 * Its data path (given, or the process's) binds the port or takes a handed one, and accepts.
 */
export class TenantListener implements ConnectionHost, TenantPort {
  readonly tenant: string;
  readonly log: Logger;
  /** How its clients are accepted and relayed. */
  readonly dataPath: DataPath;
  readonly stats = new TenantStats();
  readonly rejections: Rejection[] = [];
  #limits: Limits;
  gate: ConnectionHost['gate'];
  #router: Router;
  /** A gradual rollout: the router a share of new connections get instead (routing/rollout.ts). */
  #candidate: Candidate<Router> | undefined;
  readonly #onRejection: ((rejection: Rejection) => void) | undefined;
  /** Open connections per router: a router swapped out is disposed once its last one finishes. */
  readonly #routerUse = new Map<Router, number>();
  /** The listening socket, while accepting. */
  #acceptor: Acceptor | undefined;
  /**
   * More listening sockets of the same port, when it is handed several (a proxy process after an
   * upgrade to fewer processes than the port has sockets): accepted on alike.
   */
  readonly #more: Acceptor[] = [];
  /** Closed or destroyed: it never accepts again. */
  #stopped = false;
  readonly #connections = new Set<Connection>();
  #draining: Promise<void> | undefined;
  #drained: (() => void) | undefined;
  readonly #admission: Admission;

  constructor(options: ListenerOptions) {
    this.#admission = options.admission ?? new LocalAdmission();
    this.tenant = options.tenant;
    this.#router = options.router;
    this.#limits = options.limits;
    this.gate = options.gate;
    this.#onRejection = options.onRejection;
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
    if (this.#acceptor === undefined) this.#acceptor = acceptor;
    else this.#more.push(acceptor);
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
    for (const a of this.#more) a.firstRead(limits.maxBufferBytes);
  }

  /** The bound address while listening. */
  get address(): AddressInfo | null {
    return this.#acceptor?.address ?? null;
  }

  /** The router new connections get (but for a rollout's share). */
  get router(): Router {
    return this.#router;
  }

  /** The rollout's router and share, if one is in progress. */
  get candidate(): Candidate<Router> | undefined {
    return this.#candidate;
  }

  /**
   * Hot swap: new connections get `router` at once (and no rollout is in progress); open ones
   * keep the router they were accepted with, which is disposed when the last of them finishes.
   */
  setRouter(router: Router): void {
    this.setRouters(router, undefined);
  }

  /**
   * Hot swap with a gradual rollout: new connections get `stable`, or the candidate's router for
   * its share of client addresses. A router no longer among them is disposed once unused.
   */
  setRouters(stable: Router, candidate: Candidate<Router> | undefined): void {
    const old = [this.#router, this.#candidate?.router];
    this.#router = stable;
    this.#candidate = candidate;
    for (const r of old) if (r !== undefined && !this.#isCurrent(r) && !this.#routerUse.has(r)) r.dispose();
  }

  #isCurrent(router: Router): boolean {
    return router === this.#router || router === this.#candidate?.router;
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
    if (!this.#admission.acquire(this.limits.maxConnections)) {
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
    const router = choose(this.#router, this.#candidate, peer.remoteAddress);
    this.#routerUse.set(router, (this.#routerUse.get(router) ?? 0) + 1);
    const connection = new Connection(this, client, info, router);
    this.#connections.add(connection);
    this.stats.active++;
    connection.accept();
  };

  rejected(rejection: Rejection): void {
    if (this.rejections.push(rejection) > rejectionRing) this.rejections.shift();
    this.#onRejection?.(rejection);
    const level = rejection.reason === CloseReason.routerClose ? 'info' : 'warn';
    this.log[level]({ client: rejection.client, reason: rejection.reason, detail: rejection.message }, 'connection rejected');
  }

  finished(connection: Connection): void {
    if (!this.#connections.delete(connection)) return;
    this.#admission.release();
    this.stats.active--;
    const router = connection.router;
    const left = (this.#routerUse.get(router) ?? 1) - 1;
    if (left > 0) this.#routerUse.set(router, left);
    else {
      this.#routerUse.delete(router);
      if (!this.#isCurrent(router)) router.dispose();
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
    for (const a of this.#more.splice(0)) a.close();
  }

  /** Forced: stop accepting and destroy every open connection now. Resolves with how many were open. */
  destroy(reason: CloseReason = CloseReason.shutdown): number {
    this.#stopAccepting();
    const open = this.#connections.size;
    for (const connection of this.#connections) connection.destroy(reason);
    return open;
  }
}
