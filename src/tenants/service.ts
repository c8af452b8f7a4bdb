import { failureView } from '../authoring/diagnostics.js';
import type { Limits } from '../config.js';
import { CloseReason, RouterLoadError, ServiceRefusal } from '../errors.js';
import { type ListenerOptions, TenantListener, type TenantPort } from '../listener.js';
import type { Logger } from '../log.js';
import { renderMetrics } from '../metrics/prometheus.js';
import { processDataPath } from '../connection/data-path.js';
import type { RelayFigures } from '../metrics/stats.js';
import { type AllowRule, BackendPolicy } from '../routing/policy.js';
import { CachingResolver } from '../routing/resolver.js';
import { RouterConsole } from '../sandbox/console.js';
import type { SandboxPool, TenantSpec } from '../sandbox/pool.js';
import { ProcessRouter } from '../sandbox/process-router.js';
import type { Router } from '../sandbox/router.js';
import { effectiveLimits, type EffectiveLimits, type LimitOverrides, storedOverrides, updateOverrides } from './limits.js';
import { MissingRouter } from './missing-router.js';
import { clientOf, dryRun, type DryRunResult, replay, type ReplayReport } from './dry-run.js';
import { TenantLog, type TenantLogEntry } from './tenant-log.js';
import { VersionedRouter } from './versioned-router.js';
import { ChangeFeed } from './changes.js';
import {
  type Change,
  type ClusterStore,
  isClusterStore,
  type Rollout,
  type RouterVersion,
  type RouterVersionInfo,
  StoreConflictError,
  type StoreSnapshot,
  StoreUnavailableError,
  type TenantRecord,
  type TenantStore,
} from './store.js';
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
  /** With a cluster store: the change stream's reconnection backoff and polling (changes.ts). */
  readonly changeFeed?: { readonly backoffMs?: readonly [number, number]; readonly pollMs?: number };
  /**
   * Makes a tenant's port; by default a TenantListener (this process accepts). A master makes
   * ports its proxy processes accept on (node/spread-listener.ts).
   */
  readonly newPort?: (options: ListenerOptions) => TenantPort;
  /** Brings the ports' counters up to date before they are read (a master asks its processes). */
  readonly refresh?: () => Promise<void>;
  /** The data path's figures for the metrics, when not this process's own (a master sums its processes'). */
  readonly relayFigures?: () => RelayFigures | undefined;
  /** Each proxy process's connections, when the node runs them. */
  readonly processFigures?: () => readonly { readonly index: number; readonly connections: number }[] | undefined;
}

/** How long a client is told to wait before trying a write again while the store is unavailable. */
const storeRetryAfterS = 5;

export type { Quotas } from './quotas.js';

/** One tenant, live: its port, its router, its table and limits. */
interface Tenant {
  readonly name: string;
  readonly port: number;
  /** As stored: with the name and port, which incarnation of the tenant this is (a name can be deleted and created again). */
  createdAt: string;
  readonly listener: TenantPort;
  readonly console: RouterConsole;
  /** The tenant's own log: its router's console lines and its rejections. */
  readonly log: TenantLog;
  version: number | null;
  /** A gradual rollout in progress: the version a share of new connections get. */
  rollout: Rollout | null;
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
  /** Token hashes known to belong to a tenant: authentication keeps working while the store is down. */
  readonly #tokens = new Map<string, string>();
  /** With a cluster store: the changes of the other nodes, applied here. */
  #feed: ChangeFeed | undefined;
  /** Kill switches this node recorded and already applied: the stream skips them. */
  readonly #ownKills = new Set<number>();

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
    const store = options.store;
    // A cluster store gives every tenant and the revision they reflect in one read; the stream
    // then applies everything after that revision.
    const snapshot = isClusterStore(store) ? await store.snapshot() : undefined;
    const loaded = snapshot?.tenants ?? (await loadEach(store));
    const from = snapshot?.revision ?? 0;
    for (const { record, table, live } of loaded) {
      const tenant = service.#runtime(record, table);
      service.#tenants.set(record.name, tenant);
      if (live !== undefined) {
        const rollout = record.rollout === undefined ? undefined : await store.rolloutRouter(record.name);
        await service.#swap(tenant, service.#coldRouter(tenant, live), live.version, rollout && { router: service.#coldRouter(tenant, rollout), version: rollout.version, percent: rollout.percent }, false);
      }
      await service.#bind(tenant);
    }
    service.#log.info({ tenants: service.#tenants.size, ...(isClusterStore(store) ? { revision: from } : {}) }, 'tenants loaded');
    if (isClusterStore(store)) {
      service.#feed = new ChangeFeed({
        store,
        from,
        log: service.#log,
        apply: (change) => service.#applyChange(change),
        reload: () => service.#reloadAll(store),
        ...options.changeFeed,
      });
      await service.#feed.start();
    }
    return service;
  }

  /** The store as the stream and the health check see it: `up`, `down`, or undefined without a cluster store. */
  get storeState(): 'up' | 'down' | undefined {
    if (this.#feed === undefined) return undefined;
    return this.#feed.state === 'up' ? 'up' : 'down';
  }

  /** The last cluster revision applied on this node (undefined without a cluster store). */
  get revision(): number | undefined {
    return this.#feed?.applied;
  }

  /** One change of the cluster, made by any node (this one included). */
  async #applyChange(change: Change): Promise<void> {
    if (change.kind === 'kill') {
      // Queued behind a kill this node is recording, so that its own is recognised and skipped.
      await this.#serial(`kill:${change.tenant}`, async () => {
        if (this.#ownKills.delete(change.revision)) return;
        const closed = (await this.#tenants.get(change.tenant)?.listener.closeConnections(CloseReason.killed)) ?? 0;
        this.#log.info({ tenant: change.tenant, revision: change.revision, closed }, 'kill switch from the cluster');
      });
      return;
    }
    await this.#serial(change.tenant, () => this.#reconcile(change.tenant));
  }

  /** Every tenant made as the store has it (changes were missed beyond what the stream keeps). */
  async #reloadAll(store: ClusterStore): Promise<number> {
    const revision = await store.revision();
    const names = new Set((await store.listTenants()).map((t) => t.name));
    for (const name of this.#tenants.keys()) names.add(name);
    this.#tokens.clear();
    for (const name of names) await this.#serial(name, () => this.#reconcile(name));
    return revision;
  }

  /**
   * Makes tenant `name` on this node what the store says it is: created, deleted (or replaced,
   * when the name was deleted and created again), its limits, table and live router version.
   * What already matches is left alone, so applying it twice changes nothing.
   */
  async #reconcile(name: string): Promise<void> {
    const store = this.#o.store;
    const record = await store.getTenant(name);
    let t = this.#tenants.get(name);
    if (t !== undefined && (record === undefined || record.port !== t.port || record.createdAt !== t.createdAt)) {
      this.#dropLocal(t);
      t = undefined;
      this.#log.info({ tenant: name }, 'tenant deleted by the cluster');
    }
    if (record === undefined) return;
    const table = await store.getTable(name);
    if (t === undefined) {
      const tenant = this.#runtime(record, table);
      this.#tenants.set(name, tenant);
      await this.#installStored(tenant);
      await this.#bind(tenant);
      this.#log.info({ tenant: name, port: tenant.port }, 'tenant created by the cluster');
      return;
    }
    let rebuild = false;
    const overrides = storedOverrides(record.limits);
    if (!sameJson(overrides, t.overrides)) {
      t.overrides = overrides;
      rebuild = this.#applyEffective(t);
    }
    if (table !== t.table) {
      t.table = table;
      rebuild = true;
    }
    if (record.liveVersion !== t.version || !sameJson(record.rollout ?? null, t.rollout)) rebuild = true;
    if (!rebuild) return;
    await this.#installStored(t);
  }

  /** Makes what the store has live on this tenant: its live version and any rollout, each built on first use. */
  async #installStored(t: Tenant): Promise<void> {
    const store = this.#o.store;
    const live = await store.liveRouter(t.name);
    const rollout = live === undefined ? undefined : await store.rolloutRouter(t.name);
    if (live === undefined) await this.#swap(t, new MissingRouter(), null);
    else await this.#swap(t, this.#coldRouter(t, live), live.version, rollout && { router: this.#coldRouter(t, rollout), version: rollout.version, percent: rollout.percent });
  }

  /** Removes a tenant from this node only: its port, its connections, its router, its tokens. */
  #dropLocal(t: Tenant): void {
    this.#tenants.delete(t.name);
    t.listener.destroy(CloseReason.killed);
    t.listener.router.dispose();
    t.listener.candidate?.router.dispose();
    // The name can be reused, by someone else: blame is kept per name, so it goes too.
    this.#o.pool.forget(t.name);
    this.#pushes.forget(t.name);
    this.#forgetTokens(t.name);
  }

  #forgetTokens(name: string): void {
    for (const [hash, tenant] of this.#tokens) if (tenant === name) this.#tokens.delete(hash);
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
  create(name: string, port: number | undefined): Promise<{ name: string; port: number; token: string }> {
    return this.#serial(name, () => this.#create(name, port));
  }

  async #create(name: string, port: number | undefined): Promise<{ name: string; port: number; token: string }> {
    if (!validName(name)) throw new ServiceRefusal('invalid', 'ERR_TENANT_NAME', 'name must match [a-z0-9][a-z0-9-]{0,62}');
    if (this.#tenants.has(name)) throw new ServiceRefusal('conflict', 'ERR_TENANT_EXISTS', `tenant "${name}" exists`);
    const [lo, hi] = this.#o.ports;
    if (port !== undefined && (port < lo || port > hi)) throw new ServiceRefusal('invalid', 'ERR_PORT_RANGE', `port must be within ${lo}-${hi}`);
    const taken = new Set([...this.#tenants.values()].map((t) => t.port));
    if (port !== undefined && taken.has(port)) throw new ServiceRefusal('conflict', 'ERR_PORT_TAKEN', `port ${port} is taken`);

    const token = newToken('sy_tn');
    const record: TenantRecord = { name, port: port ?? lo, limits: {}, liveVersion: null, createdAt: new Date().toISOString() };
    const candidates = port !== undefined ? [port] : range(lo, hi).filter((p) => !taken.has(p));
    for (const candidate of candidates) {
      const tenant = this.#runtime({ ...record, port: candidate }, undefined);
      try {
        await tenant.listener.listen(candidate, this.#o.bindHost);
      } catch (err) {
        if (port !== undefined) throw new ServiceRefusal('conflict', 'ERR_PORT_UNBINDABLE', `port ${port} cannot be bound: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
        continue;
      }
      // Another request may have taken the name while the port was being bound.
      if (this.#tenants.has(name)) {
        tenant.listener.destroy();
        throw new ServiceRefusal('conflict', 'ERR_TENANT_EXISTS', `tenant "${name}" exists`);
      }
      this.#tenants.set(name, tenant);
      let stored: TenantRecord;
      try {
        stored = await this.#o.store.createTenant({ name, port: tenant.port, tokenHash: hashToken(token) });
      } catch (err) {
        this.#tenants.delete(name);
        tenant.listener.destroy();
        // Another node took this port first (its tenant is not applied here yet): the next one.
        if (err instanceof StoreConflictError && err.field === 'port' && port === undefined) continue;
        if (err instanceof StoreConflictError && err.field === 'port') throw new ServiceRefusal('conflict', 'ERR_PORT_TAKEN', err.message);
        if (err instanceof StoreConflictError) throw new ServiceRefusal('conflict', 'ERR_TENANT_EXISTS', err.message);
        throw err;
      }
      tenant.createdAt = stored.createdAt;
      this.#log.info({ tenant: name, port: tenant.port }, 'tenant created');
      return { name, port: tenant.port, token };
    }
    throw new ServiceRefusal('conflict', 'ERR_NO_FREE_PORT', `no free port left in ${lo}-${hi}`);
  }

  list(): { name: string; port: number; version: number | null }[] {
    return [...this.#tenants.values()].sort((a, b) => (a.name < b.name ? -1 : 1)).map((t) => ({ name: t.name, port: t.port, version: t.version }));
  }

  /** The tenant a token belongs to, if any. */
  async tenantOf(token: string): Promise<string | undefined> {
    const hash = hashToken(token);
    const known = this.#tokens.get(hash);
    if (known !== undefined && this.#tenants.has(known)) return known;
    let name: string | undefined;
    try {
      name = (await this.#o.store.tenantByTokenHash(hash))?.name;
    } catch (err) {
      throw refusal(err);
    }
    if (name !== undefined) {
      if (this.#tokens.size >= 100_000) this.#tokens.clear();
      this.#tokens.set(hash, name);
    }
    return name;
  }

  async show(name: string): Promise<Record<string, unknown>> {
    this.#get(name);
    await this.#o.refresh?.();
    const t = this.#get(name);
    const s = t.listener.stats;
    const bytes = t.listener.bytes;
    return {
      name: t.name,
      port: t.port,
      version: t.version,
      rollout: t.rollout,
      limits: t.effective.view,
      stats: {
        connections: { active: s.active, total: s.connections },
        decisions: { ...s.decisions },
        routerErrors: { ...s.routerErrors },
        versions: Object.fromEntries([...s.versions].map(([v, o]) => [v, { decisions: { ...o.decisions }, routerErrors: { ...o.routerErrors } }])),
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
    await this.#o.store.deleteTenant(t.name);
    this.#dropLocal(t);
    this.#log.info({ tenant: t.name }, 'tenant deleted');
  }

  /**
   * Checks a script in a throwaway process, stores it as the next version, makes it live; with
   * `percent` (1–99), live for that share of new connections only (a gradual rollout: see
   * promote and rollback), the live version keeping the rest.
   */
  putRouter(name: string, source: string, percent?: number): Promise<number> {
    this.#get(name);
    this.#pushes.take(name);
    return this.#exclusive(name, (t) => this.#putRouter(t, source, percent));
  }

  async #putRouter(t: Tenant, source: string, percent?: number): Promise<number> {
    const name = t.name;
    const stable = t.listener.router;
    if (percent !== undefined && t.version === null) {
      throw new ServiceRefusal('conflict', 'ERR_NO_LIVE_VERSION', 'a gradual rollout shares new connections with the live version: push without a percent first');
    }
    const console = t.console.forVersion();
    let router: ProcessRouter;
    try {
      router = await this.#checks.run(() => ProcessRouter.load(this.#o.pool, this.#spec(t, source), console));
    } catch (err) {
      throw err instanceof RouterLoadError ? rejectedScript(err, source) : err;
    }
    let version: number;
    try {
      version = await this.#o.store.addRouterVersion(name, source, this.#quotas.routerVersions, percent === undefined ? undefined : { percent });
    } catch (err) {
      router.dispose();
      throw err;
    }
    console.tag(version);
    const pushed = this.#versioned(t, router, { version, source });
    if (percent === undefined) await this.#swap(t, pushed, version);
    else await this.#swap(t, stable, t.version, { router: pushed, version, percent });
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
    if (t.rollout !== null) {
      // A rollout ends: the live version takes every new connection again.
      await this.#swap(t, t.listener.router, version);
      return version;
    }
    const live = await this.#o.store.liveRouter(name);
    if (live === undefined) throw new Error('the rolled-back version could not be read');
    await this.#swap(t, this.#coldRouter(t, live), version);
    return version;
  }

  /**
   * A gradual rollout goes on: its version becomes live for every new connection (no `percent`,
   * or 100), or gets `percent` (1–99) of them. Resolves the rollout's version.
   */
  promote(name: string, percent?: number): Promise<number> {
    return this.#exclusive(name, (t) => this.#promote(t, percent));
  }

  async #promote(t: Tenant, percent?: number): Promise<number> {
    const candidate = t.listener.candidate;
    const version = await this.#o.store.promoteRouter(t.name, percent);
    if (version === undefined || candidate === undefined) throw new ServiceRefusal('conflict', 'ERR_NO_ROLLOUT', 'no gradual rollout is in progress: push with a percent first');
    if (percent === undefined || percent === 100) await this.#swap(t, candidate.router, version);
    else await this.#swap(t, t.listener.router, t.version, { router: candidate.router, version, percent });
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
    const rollout = live === undefined ? undefined : await this.#o.store.rolloutRouter(name);
    const loaded: VersionedRouter[] = [];
    // The scripts must still load with the new table (they read it at load, in a heap of their own).
    for (const v of [live, rollout]) {
      if (v === undefined) continue;
      try {
        const router = await this.#checks.run(() => ProcessRouter.load(this.#o.pool, { ...this.#spec(t, v.source), table: json }, t.console.forVersion(v.version)));
        loaded.push(this.#versioned(t, router, v));
      } catch (err) {
        for (const r of loaded) r.dispose();
        if (err instanceof RouterLoadError) {
          const { error, ...view } = failureView(err, v.source);
          throw new ServiceRefusal('invalid', 'ERR_TABLE_BREAKS_ROUTER', `version ${v.version} of the router does not load with this table: ${error}`, { details: { ...view, version: v.version } });
        }
        throw err;
      }
    }
    try {
      await this.#o.store.setTable(name, json);
    } catch (err) {
      for (const r of loaded) r.dispose();
      throw err;
    }
    t.table = json;
    const [router, candidate] = loaded;
    if (router !== undefined) await this.#swap(t, router, t.version, candidate && rollout && { router: candidate, version: rollout.version, percent: rollout.percent });
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
    const sandbox = this.#applyEffective(t);
    if (sandbox && t.version !== null) await this.#installStored(t);
    await t.listener.settled?.();
  }

  /** Works out a tenant's limits and policy for new connections; true when its router's time or memory limit changed. */
  #applyEffective(t: Tenant): boolean {
    const before = t.effective.limits;
    t.effective = effectiveLimits(this.#defaults, t.overrides);
    t.listener.limits = t.effective.limits;
    t.listener.gate = { policy: this.#policy.with(t.effective.allow), resolver: this.#resolver.forTenant(t.name) };
    return before.routerTimeoutMs !== t.effective.limits.routerTimeoutMs || before.memoryMb !== t.effective.limits.memoryMb;
  }

  // Authoring: dry runs, replays, reading back, the tenant's own log (README "Writing a router").

  /**
   * A dry run: what the live router (or `version`, any version kept) decides for `data`, and
   * whether policy allows it. No backend is contacted, and no metric counts it.
   */
  async dryRun(name: string, data: string, client: { address: string; port: number }, version?: number): Promise<DryRunResult> {
    const t = this.#get(name);
    return this.#withVersion(t, version, (router, source) =>
      dryRun(router, source, data, { tenant: name, remoteAddress: client.address, remotePort: client.port, localAddress: this.#o.bindHost, localPort: t.port }, t.listener.gate),
    );
  }

  /**
   * Replays the tenant's captured rejections (their first bytes, as their clients) against
   * `version` and the live version: where their decisions differ, before `version` goes live.
   */
  async replay(name: string, version: number): Promise<ReplayReport> {
    const t = this.#get(name);
    const against = t.version;
    if (against === null) throw new ServiceRefusal('conflict', 'ERR_NO_LIVE_VERSION', 'there is no live version to compare with');
    return this.#withVersion(t, version, (candidate, candidateSource) =>
      this.#withVersion(t, against, (live, liveSource) =>
        replay(t.listener.rejections, {
          version,
          against,
          live: { router: live, source: liveSource ?? '' },
          candidate: { router: candidate, source: candidateSource ?? '' },
          conn: (c) => {
            const { address, port } = clientOf(c);
            return { tenant: name, remoteAddress: address, remotePort: port, localAddress: this.#o.bindHost, localPort: t.port };
          },
          gate: t.listener.gate,
        }),
      ),
    );
  }

  /**
   * Runs `use` with the router of a version (the live one when undefined) and its source, not
   * counted in the metrics: the one serving connections when it is live or in a rollout, else
   * one loaded from the store for this use (as a push loads it) and disposed after.
   */
  async #withVersion<T>(t: Tenant, version: number | undefined, use: (router: Router, source: string | undefined) => Promise<T>): Promise<T> {
    const serving = [t.listener.router, t.listener.candidate?.router].find((r): r is VersionedRouter => r instanceof VersionedRouter && (version === undefined || r.version === version));
    if (serving !== undefined) return use(serving.inner, serving.source);
    if (version === undefined) return use(t.listener.router, undefined);
    const stored = await this.#o.store.routerVersion(t.name, version);
    if (stored === undefined) throw new ServiceRefusal('not_found', 'ERR_NO_VERSION', `version ${version} of the router is not kept (see router versions)`);
    let router: ProcessRouter;
    try {
      router = await this.#checks.run(() => ProcessRouter.load(this.#o.pool, this.#spec(t, stored.source), t.console.forVersion(version)));
    } catch (err) {
      throw err instanceof RouterLoadError ? rejectedScript(err, stored.source) : err;
    }
    try {
      return await use(router, stored.source);
    } finally {
      router.dispose();
    }
  }

  /** The source of the live version, or of `version`; 404 when there is none or it is not kept. */
  async routerSource(name: string, version?: number): Promise<RouterVersion> {
    this.#get(name);
    const found = version === undefined ? await this.#o.store.liveRouter(name) : await this.#o.store.routerVersion(name, version);
    if (found === undefined) throw new ServiceRefusal('not_found', 'ERR_NO_VERSION', version === undefined ? 'no router uploaded yet' : `version ${version} of the router is not kept`);
    return found;
  }

  /** Every kept version, newest first: whether it is live, and the share of new connections it gets. */
  async versions(name: string): Promise<(RouterVersionInfo & { live: boolean; percent: number })[]> {
    const t = this.#get(name);
    const rollout = t.rollout;
    return (await this.#o.store.listRouterVersions(name)).map((v) => {
      const percent = v.version === rollout?.version ? rollout.percent : v.version === t.version ? 100 - (rollout?.percent ?? 0) : 0;
      return { ...v, live: percent > 0, percent };
    });
  }

  /** The routing table as stored (`{}` before any upload), as JSON text. */
  table(name: string): string {
    return this.#get(name).table ?? '{}';
  }

  /**
   * The tenant's own log after entry `since`: what is there, or (with `waitMs`) the entries that
   * come within that time, for a reader following it.
   */
  async logs(name: string, since: number, waitMs: number, signal: AbortSignal): Promise<{ entries: TenantLogEntry[]; next: number; missed: number }> {
    const log = this.#get(name).log;
    await log.wait(since, waitMs, signal);
    return log.since(since);
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

  /**
   * The kill switch: closes every open connection of the tenant; its port stays open. With a
   * cluster store it is recorded as a change first, so that every node closes its own; the
   * answer counts this node's. When the store is unavailable this node's are closed all the same
   * and the refusal says the others could not be told.
   */
  async closeConnections(name: string): Promise<number> {
    const t = this.#get(name);
    const store = this.#o.store;
    if (!isClusterStore(store)) return await t.listener.closeConnections(CloseReason.killed);
    return this.#serial(`kill:${name}`, async () => {
      let revision: number;
      try {
        revision = await store.recordKill(name);
      } catch (err) {
        if (!(err instanceof StoreUnavailableError)) throw err;
        const closed = await t.listener.closeConnections(CloseReason.killed);
        throw new ServiceRefusal('busy', 'ERR_STORE_UNAVAILABLE', `closed ${closed} connection(s) on this node; the other nodes could not be told: ${err.message}`, {
          retryAfterS: storeRetryAfterS,
          details: { closed },
        });
      }
      this.#ownKills.add(revision);
      return await t.listener.closeConnections(CloseReason.killed);
    });
  }

  async metrics(): Promise<string> {
    await this.#o.refresh?.();
    const feed = this.#feed;
    return renderMetrics(
      [...this.#tenants.values()].map((t) => t.listener),
      await this.#o.pool.figures(),
      feed === undefined ? { up: true } : { up: feed.state === 'up', revision: feed.applied, changesApplied: feed.figures.changes, changeSeconds: feed.figures.busyMs / 1000 },
      this.#o.relayFigures?.() ?? processDataPath().figures(),
      this.#o.processFigures?.(),
    );
  }

  /** Stops accepting on every port; resolves once every connection has finished. */
  async close(): Promise<void> {
    this.#stopRebinding();
    await this.#feed?.close();
    await Promise.all([...this.#tenants.values()].map((t) => t.listener.close()));
  }

  /** Closes every connection now. */
  destroy(): void {
    this.#stopRebinding();
    void this.#feed?.close();
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
    return this.#serial(name, () => change(this.#get(name)));
  }

  /**
   * Runs `work` after the work queued before it under `key` (a tenant's name: its changes, made
   * here or applied from the cluster, happen one after another). A store that cannot be reached
   * is a refusal the admin API answers with 503.
   */
  #serial<T>(key: string, work: () => Promise<T>): Promise<T> {
    const before = this.#queues.get(key) ?? Promise.resolve();
    const run = before.then(work).catch((err: unknown) => {
      throw refusal(err);
    });
    const tail = run.catch(() => undefined);
    this.#queues.set(key, tail);
    void tail.then(() => {
      if (this.#queues.get(key) === tail) this.#queues.delete(key);
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
    const log = new TenantLog();
    const options: ListenerOptions = {
      tenant: record.name,
      router: new MissingRouter(),
      limits: effective.limits,
      log: this.#log,
      gate: { policy: this.#policy.with(effective.allow), resolver: this.#resolver.forTenant(record.name) },
      onRejection: (r) => log.add({ kind: 'rejection', client: r.client, reason: r.reason, detail: r.message }),
    };
    const listener = this.#o.newPort?.(options) ?? new TenantListener(options);
    return {
      name: record.name,
      port: record.port,
      createdAt: record.createdAt,
      listener,
      console: new RouterConsole(this.#log, record.name, log.sink),
      log,
      version: record.liveVersion,
      rollout: record.rollout ?? null,
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
  #coldRouter(t: Tenant, v: RouterVersion): VersionedRouter {
    return this.#versioned(t, ProcessRouter.cold(this.#o.pool, this.#spec(t, v.source), t.console.forVersion(v.version)), v);
  }

  /** A version's router as it serves connections: with its number, its source, and its own counters. */
  #versioned(t: Tenant, router: Router, v: { readonly version: number; readonly source: string }): VersionedRouter {
    return new VersionedRouter(router, v.version, v.source, t.listener.stats.version(v.version));
  }

  /** Makes `router` live for new connections, but for `rollout`'s share of them (routing/rollout.ts) when given. */
  async #swap(t: Tenant, router: Router, version: number | null, rollout?: { readonly router: Router; readonly version: number; readonly percent: number }, announce = true): Promise<void> {
    await t.listener.setRouters(router, rollout === undefined ? undefined : { router: rollout.router, percent: rollout.percent, salt: rollout.version });
    t.version = version;
    t.rollout = rollout === undefined ? null : { version: rollout.version, percent: rollout.percent };
    if (announce) this.#log.info({ tenant: t.name, version, ...(rollout === undefined ? {} : { rollout: t.rollout }) }, 'router live');
  }
}

/** Every tenant with its table and live router, read one by one (the embedded store: one process, nothing changes meanwhile). */
async function loadEach(store: TenantStore): Promise<StoreSnapshot['tenants']> {
  const out: { record: TenantRecord; table: string | undefined; live: Awaited<ReturnType<TenantStore['liveRouter']>> }[] = [];
  for (const record of await store.listTenants()) out.push({ record, table: await store.getTable(record.name), live: await store.liveRouter(record.name) });
  return out;
}

/** A script that does not load, as the admin API's 422: the message, and where and why (authoring/diagnostics.ts). */
function rejectedScript(err: RouterLoadError, source: string): ServiceRefusal {
  const { error, ...view } = failureView(err, source);
  return new ServiceRefusal('rejected', err.code, error, { details: view });
}

/** A store that cannot be reached, as the refusal the admin API answers 503 (Retry-After); anything else as it is. */
function refusal(err: unknown): unknown {
  if (!(err instanceof StoreUnavailableError)) return err;
  return new ServiceRefusal('busy', 'ERR_STORE_UNAVAILABLE', `the tenant store is unavailable; the change was not made (try again): ${err.message}`, { retryAfterS: storeRetryAfterS });
}

/** Two JSON values equal whatever the order of their keys. */
function sameJson(a: unknown, b: unknown): boolean {
  return canonical(a) === canonical(b);
}

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (typeof value === 'object' && value !== null) {
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

function range(lo: number, hi: number): number[] {
  return Array.from({ length: hi - lo + 1 }, (_, i) => lo + i);
}

