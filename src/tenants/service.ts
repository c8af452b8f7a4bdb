import type { Limits } from '../config.js';
import { CloseReason, RouterError, RouterLoadError, ServiceRefusal } from '../errors.js';
import { TenantListener } from '../listener.js';
import type { Logger } from '../log.js';
import { renderMetrics } from '../metrics/prometheus.js';
import { type Decision, decisionView } from '../routing/decision.js';
import { admissionReason, admit, type AllowRule, BackendPolicy } from '../routing/policy.js';
import { CachingResolver } from '../routing/resolver.js';
import { RouterConsole } from '../sandbox/console.js';
import type { SandboxPool, TenantSpec } from '../sandbox/pool.js';
import { ProcessRouter } from '../sandbox/process-router.js';
import type { Router } from '../sandbox/router.js';
import { effectiveLimits, type EffectiveLimits, type LimitOverrides, storedOverrides, updateOverrides } from './limits.js';
import { MissingRouter } from './missing-router.js';
import { StoreConflictError, type TenantRecord, type TenantStore } from './store.js';
import { CheckGate, PushQuota, quotaDefaults, type Quotas } from './quotas.js';
import { hashToken, newToken } from './tokens.js';

export interface HostingOptions {
  readonly store: TenantStore;
  readonly pool: SandboxPool;
  readonly log: Logger;
  /** Tenant ports, inclusive. */
  readonly ports: readonly [number, number];
  /** Address tenant ports are bound on. */
  readonly bindHost: string;
  /** The operator's `--allow` rules. */
  readonly allow: readonly AllowRule[];
  /** The service's defaults for every tenant's limits. */
  readonly defaults: Limits;
  /** Ports of the service itself besides the tenant range (the admin API): never a backend. */
  readonly ownPorts: () => readonly number[];
  /** A stored tenant's port that could not be bound at start is tried again this often (default 5 s). */
  readonly rebindAfterMs?: number;
  /** Push rate, script checks and versions kept (quotas.ts); its defaults otherwise. */
  readonly quotas?: Partial<Quotas>;
}

export type { Quotas } from './quotas.js';

/** One tenant, live: its port, its router, its table and limits. */
interface Tenant {
  readonly name: string;
  readonly port: number;
  readonly listener: TenantListener;
  readonly console: RouterConsole;
  version: number | null;
  table: string | undefined;
  overrides: LimitOverrides;
  effective: EffectiveLimits;
}


const namePattern = /^[a-z0-9][a-z0-9-]{0,62}$/;

export function validName(name: string): boolean {
  return namePattern.test(name);
}

/**
 * Hosting mode: every tenant with its own port and router, created, changed and removed live.
 * Each change is written to the store first and applied second, so a 2xx answer means it is
 * on disk; new connections see it at once, open ones keep the router they started with.
 */
export class HostingService {
  readonly #o: HostingOptions;
  readonly #log: Logger;
  readonly #tenants = new Map<string, Tenant>();
  /** The operator's policy and limits' defaults: replaced by reconfigure() (SIGHUP). */
  #policy: BackendPolicy;
  #defaults: Limits;
  readonly #resolver = new CachingResolver();
  /** Each tenant's changes, one after another (see #exclusive). */
  readonly #queues = new Map<string, Promise<unknown>>();
  /** Ports waiting to be bound again; closing the service stops them. */
  readonly #rebinds = new Set<NodeJS.Timeout>();
  #closed = false;
  readonly #quotas: Quotas;
  readonly #pushes: PushQuota;
  readonly #checks: CheckGate;

  private constructor(options: HostingOptions) {
    this.#o = options;
    this.#quotas = { ...quotaDefaults, ...options.quotas };
    this.#pushes = new PushQuota(this.#quotas.pushesPerMinute, this.#quotas.pushBurst);
    this.#checks = new CheckGate(this.#quotas.checksRunning, this.#quotas.checksQueued);
    this.#log = options.log;
    const [lo, hi] = options.ports;
    this.#policy = new BackendPolicy(options.allow, (p) => (p >= lo && p <= hi) || options.ownPorts().includes(p));
    this.#defaults = options.defaults;
  }

  /**
   * New operator rules and limits' defaults, from a reloaded configuration: every tenant's
   * effective limits and policy are worked out again for its new connections; a tenant whose
   * router's time or memory limit changed gets its router rebuilt with them.
   */
  async reconfigure(o: { readonly allow: readonly AllowRule[]; readonly defaults: Limits }): Promise<void> {
    const [lo, hi] = this.#o.ports;
    this.#policy = new BackendPolicy(o.allow, (p) => (p >= lo && p <= hi) || this.#o.ownPorts().includes(p));
    this.#defaults = o.defaults;
    await Promise.all([...this.#tenants.keys()].map((name) => this.#exclusive(name, (t) => this.#applyLimits(t))));
  }

  /** Opens every stored tenant's port; routers start cold and are built on their first connection. */
  static async start(options: HostingOptions): Promise<HostingService> {
    const service = new HostingService(options);
    for (const record of await options.store.listTenants()) {
      const tenant = service.#runtime(record, await options.store.getTable(record.name));
      service.#tenants.set(record.name, tenant);
      const live = await options.store.liveRouter(record.name);
      if (live !== undefined) tenant.listener.setRouter(service.#coldRouter(tenant, live.source));
      await service.#bind(tenant);
    }
    service.#log.info({ tenants: service.#tenants.size }, 'tenants loaded');
    return service;
  }

  /** Binds a stored tenant's port; one that cannot be bound now is tried again every few seconds. */
  async #bind(t: Tenant): Promise<void> {
    try {
      await t.listener.listen(t.port, this.#o.bindHost);
    } catch (err) {
      if (this.#closed) return; // closed while binding: nothing to try again
      const afterMs = this.#o.rebindAfterMs ?? 5000;
      this.#log.error({ tenant: t.name, port: t.port, err: (err as Error).message, retryInMs: afterMs }, 'tenant port could not be bound; trying again');
      const timer = setTimeout(() => {
        this.#rebinds.delete(timer);
        if (!this.#closed && this.#tenants.get(t.name) === t && !t.listener.listening) void this.#bind(t);
      }, afterMs).unref();
      this.#rebinds.add(timer);
    }
  }

  /** Ports waiting to be bound again. */
  get pendingRebinds(): number {
    return this.#rebinds.size;
  }

  /** Every tenant port is listening. */
  get healthy(): boolean {
    return [...this.#tenants.values()].every((t) => t.listener.listening);
  }

  get notListening(): string[] {
    return [...this.#tenants.values()].filter((t) => !t.listener.listening).map((t) => t.name);
  }

  has(name: string): boolean {
    return this.#tenants.has(name);
  }

  /** Creates a tenant on `port` or the lowest free port of the range; resolves with its token. */
  async create(name: string, port: number | undefined): Promise<{ name: string; port: number; token: string }> {
    if (!validName(name)) throw new ServiceRefusal('invalid', 'ERR_TENANT_NAME', 'name must match [a-z0-9][a-z0-9-]{0,62}');
    if (this.#tenants.has(name)) throw new ServiceRefusal('conflict', 'ERR_TENANT_EXISTS', `tenant "${name}" exists`);
    const [lo, hi] = this.#o.ports;
    if (port !== undefined && (port < lo || port > hi)) throw new ServiceRefusal('invalid', 'ERR_PORT_RANGE', `port must be within ${lo}-${hi}`);
    const taken = new Set([...this.#tenants.values()].map((t) => t.port));
    if (port !== undefined && taken.has(port)) throw new ServiceRefusal('conflict', 'ERR_PORT_TAKEN', `port ${port} is taken`);

    const token = newToken('sy_tn');
    const record: TenantRecord = { name, port: port ?? lo, limits: {}, liveVersion: null, createdAt: new Date().toISOString() };
    const candidates = port !== undefined ? [port] : range(lo, hi).filter((p) => !taken.has(p));
    let tenant: Tenant | undefined;
    for (const candidate of candidates) {
      const t = this.#runtime({ ...record, port: candidate }, undefined);
      try {
        await t.listener.listen(candidate, this.#o.bindHost);
        tenant = t;
        break;
      } catch (err) {
        if (port !== undefined) throw new ServiceRefusal('conflict', 'ERR_PORT_UNBINDABLE', `port ${port} cannot be bound: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
    }
    if (tenant === undefined) throw new ServiceRefusal('conflict', 'ERR_NO_FREE_PORT', `no free port left in ${lo}-${hi}`);
    // Another request may have taken the name while the port was being bound.
    if (this.#tenants.has(name)) {
      tenant.listener.destroy();
      throw new ServiceRefusal('conflict', 'ERR_TENANT_EXISTS', `tenant "${name}" exists`);
    }
    this.#tenants.set(name, tenant);
    try {
      await this.#o.store.createTenant({ name, port: tenant.port, tokenHash: hashToken(token) });
    } catch (err) {
      this.#tenants.delete(name);
      tenant.listener.destroy();
      if (err instanceof StoreConflictError) throw new ServiceRefusal('conflict', 'ERR_TENANT_EXISTS', err.message);
      throw err;
    }
    this.#log.info({ tenant: name, port: tenant.port }, 'tenant created');
    return { name, port: tenant.port, token };
  }

  list(): { name: string; port: number; version: number | null }[] {
    return [...this.#tenants.values()].sort((a, b) => (a.name < b.name ? -1 : 1)).map((t) => ({ name: t.name, port: t.port, version: t.version }));
  }

  /** The tenant a token belongs to, if any. */
  async tenantOf(token: string): Promise<string | undefined> {
    return (await this.#o.store.tenantByTokenHash(hashToken(token)))?.name;
  }

  show(name: string): Record<string, unknown> {
    const t = this.#get(name);
    const s = t.listener.stats;
    const bytes = t.listener.bytes;
    return {
      name: t.name,
      port: t.port,
      version: t.version,
      limits: t.effective.view,
      stats: {
        connections: { active: s.active, total: s.connections },
        decisions: { ...s.decisions },
        routerErrors: { ...s.routerErrors },
        bytesIn: bytes.in,
        bytesOut: bytes.out,
        rejections: Object.fromEntries(s.rejections),
      },
    };
  }

  /** Deletes a tenant: its port closes at once, its connections are closed, the name is free. */
  remove(name: string): Promise<void> {
    return this.#exclusive(name, (t) => this.#remove(t));
  }

  async #remove(t: Tenant): Promise<void> {
    const name = t.name;
    this.#tenants.delete(name);
    t.listener.destroy(CloseReason.killed);
    t.listener.router.dispose();
    // The name can be reused, by someone else: blame is kept per name, so it goes too.
    this.#o.pool.forget(name);
    await this.#o.store.deleteTenant(name);
    this.#pushes.forget(name);
    this.#log.info({ tenant: name }, 'tenant deleted');
  }

  /** Checks a script in a throwaway process, stores it as the next version, makes it live. */
  putRouter(name: string, source: string): Promise<number> {
    this.#get(name);
    this.#pushes.take(name);
    return this.#exclusive(name, (t) => this.#putRouter(t, source));
  }

  async #putRouter(t: Tenant, source: string): Promise<number> {
    const name = t.name;
    let router: ProcessRouter;
    try {
      router = await this.#checks.run(() => ProcessRouter.load(this.#o.pool, this.#spec(t, source), t.console));
    } catch (err) {
      if (err instanceof RouterLoadError) {
        const extra: Record<string, unknown> = {};
        if (err.line !== undefined) extra.line = err.line;
        if (err.column !== undefined) extra.column = err.column;
        throw new ServiceRefusal('rejected', err.code, err.message, { details: { code: err.code, ...extra } });
      }
      throw err;
    }
    let version: number;
    try {
      version = await this.#o.store.addRouterVersion(name, source, this.#quotas.routerVersions);
    } catch (err) {
      router.dispose();
      throw err;
    }
    this.#swap(t, router, version);
    return version;
  }

  /** The previous accepted version is live again. */
  rollback(name: string): Promise<number> {
    return this.#exclusive(name, (t) => this.#rollback(t));
  }

  async #rollback(t: Tenant): Promise<number> {
    const name = t.name;
    const version = await this.#o.store.rollbackRouter(name);
    if (version === undefined) throw new ServiceRefusal('conflict', 'ERR_NO_EARLIER_VERSION', 'there is no earlier router version to roll back to');
    const live = await this.#o.store.liveRouter(name);
    if (live === undefined) throw new Error('the rolled-back version could not be read');
    this.#swap(t, this.#coldRouter(t, live.source), version);
    return version;
  }

  /** Stores a new routing table; new connections see it at once. */
  putTable(name: string, json: string): Promise<void> {
    this.#get(name);
    this.#pushes.take(name);
    return this.#exclusive(name, (t) => this.#putTable(t, json));
  }

  async #putTable(t: Tenant, json: string): Promise<void> {
    const name = t.name;
    const live = await this.#o.store.liveRouter(name);
    let router: ProcessRouter | undefined;
    if (live !== undefined) {
      // The script must still load with the new table (it reads it at load, in a heap of its own).
      try {
        router = await this.#checks.run(() => ProcessRouter.load(this.#o.pool, { ...this.#spec(t, live.source), table: json }, t.console));
      } catch (err) {
        if (err instanceof RouterLoadError) throw new ServiceRefusal('invalid', 'ERR_TABLE_BREAKS_ROUTER', `the router does not load with this table: ${err.message}`);
        throw err;
      }
    }
    try {
      await this.#o.store.setTable(name, json);
    } catch (err) {
      router?.dispose();
      throw err;
    }
    t.table = json;
    if (router !== undefined) this.#swap(t, router, t.version);
  }

  /** Sets a tenant's limits (merged into what was set before); resolves with the limits now in force. */
  putLimits(name: string, body: unknown): Promise<EffectiveLimits['view']> {
    return this.#exclusive(name, (t) => this.#putLimits(t, body));
  }

  async #putLimits(t: Tenant, body: unknown): Promise<EffectiveLimits['view']> {
    const name = t.name;
    const next = updateOverrides(t.overrides, body);
    if (typeof next === 'string') throw new ServiceRefusal('invalid', 'ERR_LIMITS', next);
    await this.#o.store.setLimits(name, next);
    t.overrides = next;
    await this.#applyLimits(t);
    return t.effective.view;
  }

  /** Works out a tenant's limits and policy again (its overrides or the defaults changed). */
  async #applyLimits(t: Tenant): Promise<void> {
    const before = t.effective.limits;
    t.effective = effectiveLimits(this.#defaults, t.overrides);
    t.listener.limits = t.effective.limits;
    t.listener.gate = { policy: this.#policy.with(t.effective.allow), resolver: this.#resolver.forTenant(t.name) };
    const sandbox = before.routerTimeoutMs !== t.effective.limits.routerTimeoutMs || before.memoryMb !== t.effective.limits.memoryMb;
    if (sandbox && t.version !== null) {
      const live = await this.#o.store.liveRouter(t.name);
      if (live !== undefined) this.#swap(t, this.#coldRouter(t, live.source), t.version);
    }
  }

  /** A dry run: what the live router decides for `data`, and whether policy allows it. No backend is contacted. */
  async dryRun(name: string, data: string, client: { address: string; port: number }): Promise<Record<string, unknown>> {
    const t = this.#get(name);
    const started = performance.now();
    const ms = (): number => Math.round((performance.now() - started) * 1000) / 1000;
    let decision: Decision;
    try {
      decision = await t.listener.router.route(data, {
        tenant: name,
        remoteAddress: client.address,
        remotePort: client.port,
        localAddress: this.#o.bindHost,
        localPort: t.port,
      });
    } catch (err) {
      const e = err instanceof RouterError ? err : new RouterError(CloseReason.routerUnavailable, String(err));
      return { error: e.message, reason: e.reason, durationMs: ms() };
    }
    const durationMs = ms();
    if (decision.kind !== 'remote') return { decision: decisionView(decision), allowed: true, durationMs };
    const gate = t.listener.gate!;
    const admission = await admit(decision.remotes, gate.policy, gate.resolver);
    if (admission.candidates.length > 0) return { decision: decisionView(decision), allowed: true, durationMs };
    return { decision: decisionView(decision), allowed: false, reason: admissionReason(admission), durationMs };
  }

  rejections(name: string): { time: string; client: string; reason: string; detail: string; firstBytes: string }[] {
    return [...this.#get(name).listener.rejections].reverse().map((r) => ({
      time: r.time.toISOString(),
      client: r.client,
      reason: r.reason,
      detail: r.message,
      firstBytes: r.firstBytes.toString('base64'),
    }));
  }

  /** The kill switch: closes every open connection of the tenant; its port stays open. */
  closeConnections(name: string): number {
    return this.#get(name).listener.closeConnections(CloseReason.killed);
  }

  async metrics(): Promise<string> {
    return renderMetrics(
      [...this.#tenants.values()].map((t) => t.listener),
      await this.#o.pool.figures(),
    );
  }

  /** Stops accepting on every port; resolves once every connection has finished. */
  async close(): Promise<void> {
    this.#stopRebinding();
    await Promise.all([...this.#tenants.values()].map((t) => t.listener.close()));
  }

  /** Closes every connection now. */
  destroy(): void {
    this.#stopRebinding();
    for (const t of this.#tenants.values()) t.listener.destroy();
  }

  /** A closed service binds nothing again, not even a port that failed at start. */
  #stopRebinding(): void {
    this.#closed = true;
    for (const timer of this.#rebinds) clearTimeout(timer);
    this.#rebinds.clear();
  }

  /**
   * Runs a change of one tenant after the changes before it have finished, so that each one
   * builds on what the last one stored (a table upload never swaps an older script back in).
   * A tenant deleted meanwhile is a 404.
   */
  #exclusive<T>(name: string, change: (t: Tenant) => Promise<T>): Promise<T> {
    const before = this.#queues.get(name) ?? Promise.resolve();
    const run = before.then(() => change(this.#get(name)));
    const tail = run.catch(() => undefined);
    this.#queues.set(name, tail);
    void tail.then(() => {
      if (this.#queues.get(name) === tail) this.#queues.delete(name);
    });
    return run;
  }

  #get(name: string): Tenant {
    const t = this.#tenants.get(name);
    if (t === undefined) throw new ServiceRefusal('not_found', 'ERR_NO_TENANT', `no tenant named "${name}"`);
    return t;
  }

  #runtime(record: TenantRecord, table: string | undefined): Tenant {
    const overrides = storedOverrides(record.limits);
    const effective = effectiveLimits(this.#defaults, overrides);
    const listener = new TenantListener({
      tenant: record.name,
      router: new MissingRouter(),
      limits: effective.limits,
      log: this.#log,
      gate: { policy: this.#policy.with(effective.allow), resolver: this.#resolver.forTenant(record.name) },
    });
    return {
      name: record.name,
      port: record.port,
      listener,
      console: new RouterConsole(this.#log, record.name),
      version: record.liveVersion,
      table,
      overrides,
      effective,
    };
  }

  #spec(t: Tenant, source: string): TenantSpec {
    const spec = {
      tenant: t.name,
      source,
      filename: `${t.name}.js`,
      routerTimeoutMs: t.effective.limits.routerTimeoutMs,
      memoryMb: t.effective.limits.memoryMb,
    };
    return t.table === undefined ? spec : { ...spec, table: t.table };
  }

  /** A router for an accepted version: its isolate is built on first use. */
  #coldRouter(t: Tenant, source: string): Router {
    return ProcessRouter.cold(this.#o.pool, this.#spec(t, source), t.console);
  }

  #swap(t: Tenant, router: Router, version: number | null): void {
    t.listener.setRouter(router);
    t.version = version;
    this.#log.info({ tenant: t.name, version }, 'router live');
  }
}

function range(lo: number, hi: number): number[] {
  return Array.from({ length: hi - lo + 1 }, (_, i) => lo + i);
}

