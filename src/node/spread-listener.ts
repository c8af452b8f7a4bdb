import { lookup } from 'node:dns/promises';
import { type AddressInfo, isIP } from 'node:net';
import type { Limits } from '../config.js';
import type { ConnectionHost, Rejection } from '../connection/connection.js';
import { CloseReason } from '../errors.js';
import { rejectionRing, type ListenerOptions, type TenantPort } from '../listener.js';
import type { Logger } from '../log.js';
import { type RouterOutcomes, TenantStats } from '../metrics/stats.js';
import type { Candidate } from '../routing/rollout.js';
import type { Router } from '../sandbox/router.js';
import { bindListener, handoff } from './handoff.js';
import type { FromProxy, PolicySpec, RouterRef, TenantFigures, TenantSpecMessage } from './protocol.js';
import type { ProxyGroup, SpreadPort } from './proxy-group.js';

/**
 * A tenant's port in the master: bound here once (one SO_REUSEPORT socket per proxy process,
 * so the kernel spreads clients over them), accepted on by the proxy processes. It keeps the
 * tenant's router (for the dry run, and as the one every process is told), its limits and
 * policy, its one rejections ring, and its counters as the processes last reported them.
 */
export class SpreadListener implements TenantPort, SpreadPort {
  readonly tenant: string;
  readonly log: Logger;
  readonly rejections: Rejection[] = [];
  readonly #group: ProxyGroup;
  readonly #ownPorts: PolicySpec['ownPorts'];
  #router: Router;
  #ref: RouterRef;
  /** A gradual rollout's router (the processes choose by client address) and its id in the group. */
  #candidate: (Candidate<Router> & { readonly ref: RouterRef }) | undefined;
  readonly #onRejection: ((rejection: Rejection) => void) | undefined;
  /** Outcomes per router version: the routers run here, so they are counted here (stats.ts). */
  readonly #versions = new Map<number, RouterOutcomes>();
  #limits: Limits;
  #gate: ConnectionHost['gate'];
  #fds: number[] = [];
  #port = 0;
  #figures: TenantFigures | undefined;
  /** The last limits change sent to the processes. */
  #sent: Promise<unknown> = Promise.resolve();
  #stopped = false;

  readonly #inherit: ((port: number) => readonly number[] | undefined) | undefined;

  /** `inherit`: the sockets a previous master handed over for a port, if any (node/upgrade.ts). */
  constructor(group: ProxyGroup, options: ListenerOptions, ownPorts: PolicySpec['ownPorts'], inherit?: (port: number) => readonly number[] | undefined) {
    this.#inherit = inherit;
    this.#group = group;
    this.tenant = options.tenant;
    this.log = options.log.child({ tenant: options.tenant });
    this.#router = options.router;
    this.#ref = group.register(options.router);
    this.#limits = options.limits;
    this.#gate = options.gate;
    this.#ownPorts = ownPorts;
    this.#onRejection = options.onRejection;
  }

  get name(): string {
    return this.tenant;
  }

  get fds(): readonly number[] {
    return this.#fds;
  }

  /** Binds one socket per proxy process (port 0: the first picks it) and hands them over. */
  async listen(port: number, host: string): Promise<AddressInfo> {
    const handed = port === 0 ? undefined : this.#inherit?.(port);
    if (handed !== undefined && handed.length > 0) return this.#serve([...handed], port);
    const ip = isIP(host) === 0 ? (await lookup(host)).address : host;
    const fds: number[] = [];
    let bound = { address: ip, port };
    try {
      for (let i = 0; i < this.#group.count; i++) {
        const s = bindListener(ip, bound.port, { reusePort: true });
        fds.push(s.fd);
        bound = { address: s.address, port: s.port };
      }
    } catch (err) {
      for (const fd of fds) handoff().close(fd);
      throw err;
    }
    return this.#serve(fds, bound.port);
  }

  /** The proxy processes accept on `fds` once this resolves. */
  async #serve(fds: number[], port: number): Promise<AddressInfo> {
    if (this.#stopped) {
      for (const fd of fds) handoff().close(fd);
      throw new Error('listener closed while binding');
    }
    const [address] = handoff().localAddress(fds[0]!);
    this.#fds = fds;
    this.#port = port;
    await this.#group.addPort(this);
    return { address, port, family: isIP(address) === 6 ? 'IPv6' : 'IPv4' };
  }

  /** The port it serves (0 until bound). */
  get port(): number {
    return this.#port;
  }

  spec(): TenantSpecMessage {
    const c = this.#candidate;
    const candidate = c === undefined ? {} : { candidate: { router: c.ref, percent: c.percent, salt: c.salt } };
    return { name: this.tenant, port: this.#port, limits: this.#limits, policy: this.#policy(), router: this.#ref, ...candidate };
  }

  #policy(): PolicySpec | undefined {
    return this.#gate === undefined ? undefined : { rules: this.#gate.policy.ruleTexts, ownPorts: this.#ownPorts };
  }

  get listening(): boolean {
    return this.#fds.length > 0;
  }

  get router(): Router {
    return this.#router;
  }

  get candidate(): Candidate<Router> | undefined {
    return this.#candidate;
  }

  /** Every process uses `router` for new connections once this resolves. */
  setRouter(router: Router): Promise<void> {
    return this.setRouters(router, undefined);
  }

  /**
   * Every process uses `stable` for new connections, and the candidate's router for its share
   * of clients, once this resolves. A router already registered keeps its id (a promoted
   * candidate becomes the stable one as it is).
   */
  async setRouters(stable: Router, candidate: Candidate<Router> | undefined): Promise<void> {
    if (stable === this.#router && candidate?.router === this.#candidate?.router && candidate?.percent === this.#candidate?.percent) return;
    const old = [this.#ref, this.#candidate?.ref];
    const refFor = (router: Router): RouterRef =>
      router === this.#router ? this.#ref : router === this.#candidate?.router ? this.#candidate.ref : this.#group.register(router);
    const ref = refFor(stable);
    const next = candidate === undefined ? undefined : { ...candidate, ref: refFor(candidate.router) };
    this.#router = stable;
    this.#ref = ref;
    this.#candidate = next;
    if (this.listening) {
      const message = { t: 'router', name: this.tenant, router: ref, ...(next === undefined ? {} : { candidate: { router: next.ref, percent: next.percent, salt: next.salt } }) } as const;
      await this.#group.broadcast(message, next === undefined ? [ref] : [ref, next.ref]);
    }
    for (const r of old) if (r !== undefined && r !== ref && r !== next?.ref) this.#group.unhold(r.id);
  }

  get limits(): Limits {
    return this.#limits;
  }

  set limits(limits: Limits) {
    this.#limits = limits;
    this.#sendLimits();
  }

  get gate(): ConnectionHost['gate'] {
    return this.#gate;
  }

  set gate(gate: ConnectionHost['gate']) {
    this.#gate = gate;
    this.#sendLimits();
  }

  #sendLimits(): void {
    if (!this.listening) return;
    this.#sent = this.#group.broadcast({ t: 'limits', name: this.tenant, limits: this.#limits, policy: this.#policy() });
  }

  async settled(): Promise<void> {
    await this.#sent;
  }

  /** Counters as the processes reported them when the group last asked (node.figures()). */
  update(figures: TenantFigures | undefined): void {
    this.#figures = figures;
  }

  get stats(): TenantStats {
    const s = new TenantStats(this.#versions);
    const f = this.#figures;
    if (f === undefined) return s;
    s.connections = f.connections;
    s.active = f.active;
    s.bytesIn = f.bytesIn;
    s.bytesOut = f.bytesOut;
    Object.assign(s.decisions, f.decisions);
    Object.assign(s.routerErrors, f.routerErrors);
    f.routerCallBuckets.forEach((n, i) => (s.routerCallBuckets[i] = n));
    s.routerCallSeconds = f.routerCallSeconds;
    for (const [reason, n] of Object.entries(f.rejections)) s.rejections.set(reason as CloseReason, n);
    return s;
  }

  get bytes(): { in: number; out: number } {
    return { in: this.#figures?.bytesIn ?? 0, out: this.#figures?.bytesOut ?? 0 };
  }

  rejected(m: FromProxy & { t: 'rejected' }): void {
    const rejection: Rejection = { time: new Date(m.time), client: m.client, reason: m.reason, message: m.message, firstBytes: Buffer.from(m.firstBytes, 'base64') };
    if (this.rejections.push(rejection) > rejectionRing) this.rejections.shift();
    this.#onRejection?.(rejection);
  }

  /** The kill switch, in every process. */
  async closeConnections(): Promise<number> {
    const counts = await this.#group.broadcast({ t: 'kill', name: this.tenant });
    return counts.reduce((n: number, c) => n + (typeof c === 'number' ? c : 0), 0);
  }

  /** Forced: every process closes the port and its connections now. */
  destroy(): number {
    this.#stop();
    void this.#group.removePort(this.tenant);
    this.#group.forget(this.tenant);
    this.#group.unhold(this.#ref.id);
    if (this.#candidate !== undefined) this.#group.unhold(this.#candidate.ref.id);
    return 0;
  }

  /** Graceful: every process stops accepting and finishes its connections. */
  async close(): Promise<void> {
    this.#stop();
    await this.#group.closePort(this.tenant);
    this.#group.unhold(this.#ref.id);
    if (this.#candidate !== undefined) this.#group.unhold(this.#candidate.ref.id);
  }

  /** The master's sockets close; the processes' copies close as they are told. */
  #stop(): void {
    this.#stopped = true;
    for (const fd of this.#fds) handoff().close(fd);
    this.#fds = [];
  }
}
