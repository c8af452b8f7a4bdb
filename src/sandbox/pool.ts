import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { LRUCache } from 'lru-cache';
import { sandboxDefaults, scriptLimits } from '../config.js';
import { CloseReason, RouterError, RouterLoadError, type RouterLoadCode } from '../errors.js';
import type { Logger } from '../log.js';
import type { SandboxFigures } from '../metrics/prometheus.js';
import { confineFailedExit, sandboxIdentity, type SandboxIdentity } from './confine.js';
import type { ConnInfo } from './router.js';
import { Blame, type BlamePolicy, Placement, type Verdict } from './blame.js';
import type { IsolateSpec } from './tenant-isolate.js';
import { Op, type Response, Status } from './wire.js';
import { type Pending, quarantinePriority, slowLanePriority, WorkerHost, WorkerProcess, workerFlags } from './worker-process.js';

export interface PoolOptions {
  readonly log: Logger;
  /** Shared worker processes (tenants are spread over them). */
  readonly workers?: number;
  /** Calls one worker runs at once. */
  readonly concurrency?: number;
  /** Blame (see config.ts and blame.ts): quarantine, slow lane and client source penalties. */
  readonly quarantineStrikes?: number;
  readonly strikeWindowMs?: number;
  readonly quarantineQuietMs?: number;
  readonly slowLaneStrikes?: number;
  readonly slowLaneQuietMs?: number;
  readonly penaltyStrikes?: number;
  readonly penaltyWindowMs?: number;
  readonly penaltyMs?: number;
  readonly penaltyMaxMs?: number;
  readonly penaltySources?: number;
  /** A call this long past its own time limit means its worker is stuck: it is killed. */
  readonly stuckGraceMs?: number;
  /** A worker whose resident memory grows past this is replaced once its calls drain. */
  readonly maxWorkerRssMb?: number;
  /** Isolates kept built across all workers, and their heap in MiB: past either, the least recently used are unloaded. */
  readonly maxWarmIsolates?: number;
  readonly maxWarmMb?: number;
  /**
   * The user workers switch to when the service runs as root (default `nobody`); as any other
   * user they keep the service's. The constructor throws SandboxUserError for an unknown user.
   */
  readonly sandboxUser?: string;
}

/** A tenant's script as the pool keeps it, to load it again into a restarted worker. */
export interface TenantSpec extends IsolateSpec {
  readonly tenant: string;
}

/** What an isolate is taken to weigh until its worker says (a small router's is about 1 MiB). */
const estimatedHeapBytes = 2 * 1024 * 1024;
/** How long a check process may take to start (boot Node, load isolated-vm) before its load starts. */
const workerStartMs = 30_000;
/** How many times a call that was only queued on a worker that died is sent again. */
const maxResends = 2;

/**
 * A call lost with its worker through no fault of its own (it was queued, or running beside the
 * call blamed): sent again on the worker's successor, or failed as `router_unavailable`.
 */
class WorkerLostError extends RouterError {}

interface TenantEntry {
  readonly slot: number;
  readonly spec: TenantSpec;
  host: WorkerHost;
  /** The shared worker it was given, where it returns from the slow lane or a quarantine. */
  readonly home: WorkerHost;
  /** Calls in flight. */
  readonly inflight: Set<Pending>;
  /** The isolate's heap once loaded, as its worker reported it. */
  heapBytes?: number;
}

/**
 * The supervisor of the sandbox worker processes. Tenants are spread over a few shared
 * workers; a worker that crashes, aborts or hangs is killed and restarted, and other workers
 * never notice. Each worker says when a call starts running: a crash is blamed on the call
 * running longest, a hang on the call running past its limit, and those calls fail; the calls
 * of others that were queued or running beside it are sent again to the worker's successor.
 * What blame leads to (blame.ts) is kept per tenant name: a quarantine worker of its own, the
 * slow lane, a penalty on the client source whose calls caused it.
 */
export class SandboxPool {
  readonly #options: Required<Omit<PoolOptions, 'sandboxUser'>>;
  readonly #log: Logger;
  #identity: SandboxIdentity | undefined;
  readonly #shared: WorkerHost[] = [];
  readonly #quarantine = new Map<string, WorkerHost>();
  /** Started when a tenant first needs it. */
  #slowLane: WorkerHost | undefined;
  readonly #tenants = new Map<number, TenantEntry>();
  readonly #blame: Blame;
  /** Every worker process alive (retiring ones too), but for check processes. */
  readonly #procs = new Set<WorkerProcess>();
  /**
   * Tenants whose isolate is (or is being) built in a worker, bounded by count and by the
   * isolates' heap: past either bound the least recently used is unloaded from its worker
   * (after any call it still has) and built again on its next call.
   */
  readonly #warm: LRUCache<number, TenantEntry>;
  readonly #timer: NodeJS.Timeout;
  #nextSlot = 1;
  #nextShared = 0;
  #closed = false;
  #lastRssCheck = Date.now();
  #restarts = 0;

  constructor(options: PoolOptions) {
    this.#options = { ...sandboxDefaults, ...options } as Required<PoolOptions>;
    this.#log = options.log.child({ component: 'sandbox' });
    this.#identity = sandboxIdentity(options.sandboxUser);
    if (workerFlags().length > 0) {
      // A profiled worker (benchmarks) writes its profile into the service's directory, as its user.
      this.#identity = undefined;
      this.#log.warn('SWITCHYARD_WORKER_CPU_PROF: sandbox workers are profiled, keep the service\'s user and may open files');
    }
    this.#blame = new Blame(this.#options as BlamePolicy);
    this.#warm = new LRUCache<number, TenantEntry>({
      max: this.#options.maxWarmIsolates,
      maxSize: this.#options.maxWarmMb * 1024 * 1024,
      sizeCalculation: (entry) => Math.max(1, entry.heapBytes ?? estimatedHeapBytes),
      dispose: (entry, slot, reason) => {
        if (reason !== 'evict') return;
        const proc = entry.host.current;
        if (proc.loaded.delete(slot)) proc.tell(Op.unload, slot);
      },
    });
    for (let i = 0; i < this.#options.workers; i++) this.#shared.push(new WorkerHost(`worker-${i + 1}`, this.#spawn));
    this.#timer = setInterval(() => this.#supervise(), 250).unref();
  }

  /** Worker processes alive now: name and pid. */
  get workers(): { name: string; pid: number | undefined; tenants: number }[] {
    const hosts = this.#hosts();
    return hosts.map((h) => ({
      name: h.name,
      pid: h.current.child.pid,
      tenants: [...this.#tenants.values()].filter((t) => t.host === h).length,
    }));
  }

  /** Every worker host: shared, quarantine and the slow lane. */
  #hosts(): WorkerHost[] {
    const hosts = [...this.#shared, ...this.#quarantine.values()];
    if (this.#slowLane !== undefined) hosts.push(this.#slowLane);
    return hosts;
  }

  /** Process-wide figures for the metrics: workers, isolates, heap, RSS, restarts, quarantines. */
  async figures(): Promise<SandboxFigures> {
    const procs = this.#hosts().map((h) => h.current).filter((p) => p.alive);
    let isolates = 0;
    let heapBytes = 0;
    let spareIsolates = 0;
    let coldStartsFromSpare = 0;
    let workerRssBytes = 0;
    await Promise.all(
      procs.map(async (p) => {
        workerRssBytes += (p.rssMb() ?? 0) * 1024 * 1024;
        const pending = p.request(Op.stats, 0, 1000);
        const timer = setTimeout(() => pending.resolve({ id: 0, status: Status.routerError, payload: '' }), 1000);
        const r = await pending.promise.finally(() => clearTimeout(timer));
        if (r.status !== Status.ok) return;
        const s = JSON.parse(r.payload) as { isolates: number; heapBytes: number; spares: number; sparesTaken: number };
        isolates += s.isolates;
        heapBytes += s.heapBytes;
        spareIsolates += s.spares;
        coldStartsFromSpare += s.sparesTaken;
      }),
    );
    const names = new Set([...this.#tenants.values()].map((t) => t.spec.tenant));
    const placed = (p: Placement): number => [...names].filter((n) => this.#blame.placement(n) === p).length;
    const penalties = Object.fromEntries([...names].map((n) => [n, this.#blame.penaltiesImposed(n)]));
    return {
      workers: procs.length,
      isolates,
      heapBytes,
      spareIsolates,
      coldStartsFromSpare,
      workerRssBytes: Math.round(workerRssBytes),
      restarts: this.#restarts,
      quarantined: placed(Placement.quarantine),
      slowLane: placed(Placement.slowLane),
      penalties,
      penalizedSources: this.#blame.penalizedSources(Date.now()),
    };
  }

  /** The pid of the worker that serves a tenant now. */
  pidOf(slot: number): number | undefined {
    return this.#tenants.get(slot)?.host.current.child.pid;
  }

  /** Calls of a tenant sent to its worker and not answered yet. */
  pendingFor(slot: number): number {
    return this.#tenants.get(slot)?.inflight.size ?? 0;
  }

  isQuarantined(slot: number): boolean {
    const entry = this.#tenants.get(slot);
    return entry !== undefined && this.#blame.placement(entry.spec.tenant) === Placement.quarantine;
  }

  isInSlowLane(slot: number): boolean {
    const entry = this.#tenants.get(slot);
    return entry !== undefined && this.#blame.placement(entry.spec.tenant) === Placement.slowLane;
  }

  /** Calls of a tenant its worker has started running and not answered yet. */
  runningFor(slot: number): number {
    let n = 0;
    for (const p of this.#tenants.get(slot)?.inflight ?? []) if (p.startedAt !== undefined && p.op !== Op.load) n++;
    return n;
  }

  /** Strikes (crashes and hangs) held against a tenant now. */
  strikesOf(tenant: string): number {
    return this.#blame.strikes(tenant, Date.now());
  }

  /** How much longer (ms) a client address is refused by a tenant; 0 if it is not. */
  penaltyFor(tenant: string, address: string): number {
    return this.#blame.refusal(tenant, address, Date.now());
  }

  /**
   * Loads a script: first in a throwaway process (a script that crashes or hangs the
   * compiler takes nothing else down), then into a shared worker. Resolves with the slot
   * the tenant's calls go to and the load's envelope; rejects with RouterLoadError.
   */
  async load(spec: TenantSpec): Promise<{ slot: number; envelope: string }> {
    await this.check(spec);
    const slot = this.register(spec);
    try {
      return { slot, envelope: await this.warm(slot) };
    } catch (err) {
      this.unload(slot);
      throw err;
    }
  }

  /**
   * Registers a script that was checked before (an accepted version, at start-up) without
   * loading it: its isolate is built on its first call (a cold start).
   */
  register(spec: TenantSpec): number {
    if (Buffer.byteLength(spec.source) > scriptLimits.maxScriptBytes) {
      throw new RouterLoadError('ERR_ROUTER_TOO_LARGE', `router script is larger than ${scriptLimits.maxScriptBytes} bytes`);
    }
    const slot = this.#nextSlot++;
    const home = this.#shared[this.#nextShared++ % this.#shared.length]!;
    // A new version of a tenant's router runs where its blame put the tenant.
    this.#tenants.set(slot, { slot, spec, host: this.#hostFor(spec.tenant, home), home, inflight: new Set() });
    return slot;
  }

  /** Builds a registered tenant's isolate in its worker now; resolves with the load's envelope. */
  async warm(slot: number): Promise<string> {
    const entry = this.#tenants.get(slot);
    if (entry === undefined) throw new RouterError(CloseReason.routerUnavailable, 'router is not loaded');
    return loadResult(await this.#send(entry, Op.load));
  }

  /** Compiles and loads a script in a throwaway process; resolves with its load envelope. */
  async check(spec: TenantSpec): Promise<string> {
    const proc = this.#spawn(`check:${spec.tenant}`);
    const limitMs = scriptLimits.loadTimeoutMs + this.#options.stuckGraceMs;
    // The script's time counts from when its load starts running: a process still starting on a
    // busy machine is not a script that hangs. Starting has a bound of its own.
    let timer = setTimeout(() => proc.kill(), workerStartMs + limitMs);
    const pending = proc.request(Op.load, 0, limitMs, undefined, { json: JSON.stringify(spec) });
    pending.onStarted = () => {
      clearTimeout(timer);
      timer = setTimeout(() => proc.kill(), limitMs);
    };
    const crashed = (): never => {
      throw new RouterLoadError('ERR_ROUTER_CRASH', 'the script crashed or hung the sandbox while loading');
    };
    try {
      // The load fails when its process exits (the pool fails what was pending there), whichever comes first.
      return loadResult(await Promise.race([pending.promise.catch(crashed), proc.exited.then(crashed)]));
    } finally {
      clearTimeout(timer);
      proc.kill();
    }
  }

  /** One call into a tenant's isolate; resolves with the envelope text, rejects with RouterError. */
  async call(slot: number, op: typeof Op.route | typeof Op.accept | typeof Op.hook, conn: ConnInfo, extra?: { which?: number; text?: string }): Promise<string> {
    const entry = this.#tenants.get(slot);
    if (entry === undefined || this.#closed) throw new RouterError(CloseReason.routerUnavailable, 'router is not loaded');
    const refusedMs = this.#blame.refusal(entry.spec.tenant, conn.remoteAddress, Date.now());
    if (refusedMs > 0) {
      throw new RouterError(CloseReason.sourcePenalty, `this client's address is refused for ${refusedMs} ms more: its calls kept running into the time limit`);
    }
    let response = await this.#send(entry, op, conn, extra);
    // The tenant moved to another worker before this call started there: send it where it went.
    for (let hops = 0; response.status === Status.moved && hops < 3 && this.#tenants.get(slot) === entry && !this.#closed; hops++) {
      response = await this.#send(entry, op, conn, extra);
    }
    switch (response.status) {
      case Status.ok:
        return response.payload;
      case Status.routerError: {
        const err = routerError(response.payload);
        if (err.isStrike && !this.#closed) this.#apply(this.#blame.timeout(entry.spec.tenant, conn.remoteAddress, Date.now()));
        throw err;
      }
      default:
        throw new RouterError(CloseReason.routerUnavailable, 'sandbox answered out of turn');
    }
  }

  unload(slot: number): void {
    const entry = this.#tenants.get(slot);
    if (entry === undefined) return;
    this.#tenants.delete(slot);
    this.#warm.delete(slot);
    entry.host.current.tell(Op.unload, slot);
    entry.host.current.loaded.delete(slot);
    this.#dropIdleQuarantine(entry.spec.tenant);
  }

  /** Forgets what blame holds against a tenant name (the tenant was deleted; the name may be reused). */
  forget(tenant: string): void {
    this.#blame.forget(tenant);
    for (const entry of this.#tenants.values()) if (entry.spec.tenant === tenant && entry.host !== entry.home) this.#move(entry, entry.home);
    this.#dropIdleQuarantine(tenant);
  }

  /** Kills every worker, retiring ones too. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    const procs = [...this.#procs];
    // Profiled workers are let go by closing their channel, so they write their profile.
    if (workerFlags().length > 0) {
      for (const p of procs) (p.child.stdio[3] as Socket).end();
      await Promise.race([Promise.all(procs.map((p) => p.exited)), sleep(2000)]);
    }
    for (const p of procs) p.kill();
    await Promise.all(procs.map((p) => p.exited));
  }

  /**
   * Sends a request for a tenant to its worker, loading the script there first if needed; sends
   * it again, to the worker's successor, if the worker died with it queued or running beside the
   * call blamed.
   */
  async #send(entry: TenantEntry, op: (typeof Op)[keyof typeof Op], conn?: ConnInfo, extra?: { which?: number; text?: string }): Promise<Response> {
    for (let resends = 0; ; resends++) {
      try {
        return await this.#sendOnce(entry, op, conn, extra);
      } catch (err) {
        if (!(err instanceof WorkerLostError) || resends >= maxResends || this.#closed || this.#tenants.get(entry.slot) !== entry) throw err;
      }
    }
  }

  #sendOnce(entry: TenantEntry, op: (typeof Op)[keyof typeof Op], conn?: ConnInfo, extra?: { which?: number; text?: string }): Promise<Response> {
    const proc = entry.host.current;
    const grace = this.#options.stuckGraceMs;
    this.#touch(entry);
    if (op !== Op.load && !proc.loaded.has(entry.slot)) void this.#send(entry, Op.load).catch(() => undefined);
    let pending: Pending;
    if (op === Op.load) {
      proc.loaded.add(entry.slot);
      // Every script the pool keeps has passed a check process: workers need not compile it twice.
      // A tenant blamed for time-outs or hangs starts with its calls off the worker's own thread.
      const asyncCalls = this.#blame.placement(entry.spec.tenant) !== Placement.shared;
      pending = proc.request(op, entry.slot, scriptLimits.loadTimeoutMs + grace, undefined, { json: JSON.stringify({ ...entry.spec, checked: true, asyncCalls }) });
    } else {
      pending = proc.request(op, entry.slot, entry.spec.routerTimeoutMs + grace, conn, extra);
    }
    pending.owner = { tenant: entry.spec.tenant, address: conn?.remoteAddress };
    entry.inflight.add(pending);
    return pending.promise.then(
      (r) => {
        entry.inflight.delete(pending);
        if (op === Op.load) this.#loaded(entry, proc, r);
        return r;
      },
      (e: unknown) => {
        entry.inflight.delete(pending);
        if (op === Op.load) proc.loaded.delete(entry.slot);
        throw e;
      },
    );
  }

  /** Marks a tenant's isolate as recently used (see #warm). */
  #touch(entry: TenantEntry): void {
    if (this.#warm.get(entry.slot) === undefined) this.#warm.set(entry.slot, entry);
  }

  /**
   * A load answered: the isolate's heap is its weight in #warm from now on; a load that failed
   * is tried again on the tenant's next call.
   */
  #loaded(entry: TenantEntry, proc: WorkerProcess, r: Response): void {
    if (r.status === Status.loadError) proc.loaded.delete(entry.slot);
    if (r.status !== Status.loaded) return;
    const { heapBytes } = JSON.parse(r.payload) as { heapBytes: number };
    entry.heapBytes = heapBytes;
    // lru-cache keeps the old size when the same value is set again: take it out first.
    if (this.#warm.delete(entry.slot)) this.#warm.set(entry.slot, entry);
  }

  readonly #spawn = (name: string): WorkerProcess => {
    const proc = new WorkerProcess(name, {
      concurrency: this.#options.concurrency,
      identity: this.#identity,
      onResponse: this.#onResponse,
      onDiagnostic: this.#onDiagnostic,
    });
    if (!name.startsWith('check:')) this.#procs.add(proc);
    this.#log[name.startsWith('check:') ? 'debug' : 'info'](
      { worker: name, workerPid: proc.child.pid, scheduling: proc.scheduling, workerUid: this.#identity?.uid ?? process.getuid?.() },
      'sandbox worker started',
    );
    void proc.exited.then(() => this.#onExit(proc));
    proc.child.on('error', (err) => this.#log.error({ worker: name, err: err.message }, 'sandbox worker failed to start'));
    return proc;
  };

  /** What a worker wrote on stderr (rate-limited in worker-process.ts): Node's own diagnostics. */
  readonly #onDiagnostic = (proc: WorkerProcess, line: string): void => {
    this.#log.warn({ worker: proc.name, workerPid: proc.child.pid, line }, 'sandbox worker stderr');
  };

  readonly #onResponse = (proc: WorkerProcess, r: Response): void => {
    const pending = proc.pending.get(r.id);
    if (pending === undefined) return;
    if (r.status === Status.started) {
      // The worker's thread runs one synchronous call at a time: one starting there means the
      // one before has returned (its answer may still be on its way).
      if (r.payload === 'sync') {
        for (const other of proc.pending.values()) {
          if (other.startedSync !== true) continue;
          other.startedSync = false;
          delete other.startedAt;
        }
      }
      pending.startedAt = Date.now();
      pending.startedSync = r.payload === 'sync';
      pending.onStarted?.();
      return;
    }
    proc.pending.delete(r.id);
    pending.resolve(r);
    if (proc.retiring && proc.pending.size === 0) proc.kill();
  };

  /**
   * A worker died. Blamed: the calls the supervisor found stuck (a hang: a time-out, and a
   * strike against their tenant), or else, for a crash, the call that had been running longest.
   * They fail; every other call pending on it is sent again to its successor.
   */
  #onExit(proc: WorkerProcess): void {
    const { exitCode, signalCode } = proc.child;
    const wasKilled = !proc.alive;
    proc.alive = false;
    this.#procs.delete(proc);
    const pendings = [...proc.pending.values()];
    proc.pending.clear();
    if (exitCode === confineFailedExit) this.#log.error({ worker: proc.name, workerPid: proc.child.pid }, 'sandbox worker could not confine itself (its stderr line says why)');
    const what = `sandbox worker ${proc.name} ${wasKilled ? 'was stopped' : `crashed (${signalCode ?? `exit ${exitCode}`})`}`;
    if (this.#closed || proc.name.startsWith('check:')) {
      for (const p of pendings) p.reject(new RouterError(CloseReason.routerUnavailable, `${what} while the call was pending`));
      return;
    }
    const stuck = pendings.filter((p) => p.stuck === true);
    const culprit = stuck.length === 0 && !wasKilled ? longestRunning(pendings) : undefined;
    const host = proc.retiring ? undefined : this.#hosts().find((h) => h.current === proc);
    this.#log.warn(
      { worker: proc.name, workerPid: proc.child.pid, exitCode, signal: signalCode, killed: wasKilled, blamed: culprit?.owner?.tenant ?? stuck[0]?.owner?.tenant, resent: pendings.length - stuck.length - (culprit === undefined ? 0 : 1) },
      host === undefined ? 'sandbox worker exited' : 'sandbox worker exited; restarting',
    );
    if (host !== undefined) {
      this.#restarts++;
      host.replace();
    }
    // Blame first: calls sent again go where the verdict put their tenant.
    const now = Date.now();
    for (const p of stuck) if (p.owner !== undefined) this.#apply(this.#blame.strike(p.owner.tenant, 'hang', p.owner.address, now));
    if (culprit?.owner !== undefined) this.#apply(this.#blame.strike(culprit.owner.tenant, 'crash', culprit.owner.address, now));
    for (const p of pendings) {
      if (p.stuck === true) p.reject(new RouterError(CloseReason.routerTimeout, 'router hung past its time limit; its sandbox worker was killed'));
      else if (p === culprit) p.reject(new RouterError(CloseReason.routerUnavailable, `${what} while the call was running`));
      else p.reject(new WorkerLostError(CloseReason.routerUnavailable, `${what} while the call was pending`));
    }
  }

  /**
   * Every 250 ms: kill a worker with a call running past its limit (the call is blamed when it
   * exits); let blame's quiet periods end; replace bloated workers.
   */
  #supervise(): void {
    const now = Date.now();
    for (const proc of this.#procs) {
      if (!proc.alive) continue;
      const overdue = [...proc.pending.values()].filter((p) => p.startedAt !== undefined && now - p.startedAt > p.limitMs);
      // A load held up behind a stuck call is not stuck itself.
      const calls = overdue.filter((p) => p.op !== Op.load);
      for (const p of calls.length > 0 ? calls : overdue) {
        p.stuck = true;
        this.#log.warn({ tenant: p.owner?.tenant, worker: proc.name, workerPid: proc.child.pid, stuckMs: now - p.startedAt! }, 'router call stuck past its limit: killing its worker');
      }
      if (overdue.length > 0) proc.kill();
    }
    this.#apply(this.#blame.tick(now));
    if (now - this.#lastRssCheck >= 2000) {
      this.#lastRssCheck = now;
      for (const host of this.#hosts()) {
        const rss = host.current.rssMb();
        if (rss !== undefined && rss > this.#options.maxWorkerRssMb) {
          this.#log.warn({ worker: host.name, rssMb: Math.round(rss) }, 'sandbox worker over its memory budget: replacing it');
          host.replace();
        }
      }
    }
  }

  /** Carries out blame's verdicts: tenants move between workers; penalties are logged. */
  #apply(verdicts: readonly Verdict[]): void {
    for (const v of verdicts) {
      if (v.kind === 'penalty') {
        this.#log.warn({ tenant: v.tenant, source: v.source, penaltyMs: v.ms }, 'client source refused for a while: its calls kept running into the time limit');
        continue;
      }
      const from = [...this.#tenants.values()].filter((e) => e.spec.tenant === v.tenant);
      for (const entry of from) {
        const host = this.#hostFor(v.tenant, entry.home);
        if (host !== entry.host) this.#move(entry, host);
      }
      const message =
        v.to === Placement.quarantine
          ? 'tenant quarantined in a worker of its own'
          : v.from === Placement.quarantine
            ? 'quarantine lifted after a quiet period'
            : v.to === Placement.slowLane
              ? 'router keeps running into its time limit: moved to the slow lane'
              : 'router back from the slow lane';
      this.#log[v.to === Placement.shared || v.from === Placement.quarantine ? 'info' : 'warn']({ tenant: v.tenant, strikes: v.strikes, timeouts: v.timeouts, placement: v.to }, message);
      if (v.to !== Placement.quarantine) this.#dropIdleQuarantine(v.tenant);
    }
  }

  /** The worker a tenant's calls go to now, as blame placed it. */
  #hostFor(tenant: string, home: WorkerHost): WorkerHost {
    switch (this.#blame.placement(tenant)) {
      case Placement.quarantine: {
        let host = this.#quarantine.get(tenant);
        if (host === undefined) {
          host = new WorkerHost(`quarantine:${tenant}`, this.#spawn, quarantinePriority);
          this.#quarantine.set(tenant, host);
        }
        return host;
      }
      case Placement.slowLane:
        this.#slowLane ??= new WorkerHost('slow-lane', this.#spawn, slowLanePriority);
        return this.#slowLane;
      default:
        return home;
    }
  }

  /** A quarantine worker no slot points at any more goes, once its calls drain. */
  #dropIdleQuarantine(tenant: string): void {
    const host = this.#quarantine.get(tenant);
    if (host === undefined || [...this.#tenants.values()].some((t) => t.host === host)) return;
    this.#quarantine.delete(tenant);
    host.current.retiring = true;
    if (host.current.pending.size === 0) host.current.kill();
  }

  /**
   * Points a tenant at another worker: evacuated from the old one (the call running there
   * finishes; those queued come back `moved` and are sent to the new one), built on its next call.
   */
  #move(entry: TenantEntry, host: WorkerHost): void {
    const old = entry.host;
    entry.host = host;
    old.current.tell(Op.evacuate, entry.slot);
    old.current.loaded.delete(entry.slot);
  }
}

/**
 * What a crash is blamed on: the call (route, accept or hook) that had been running longest;
 * a load only when no call was running (loads run code that passed a check process, and one
 * can be held up behind the call that crashed the worker).
 */
function longestRunning(pendings: readonly Pending[]): Pending | undefined {
  const running = pendings.filter((p) => p.startedAt !== undefined);
  const calls = running.filter((p) => p.op !== Op.load);
  let culprit: Pending | undefined;
  for (const p of calls.length > 0 ? calls : running) if (culprit === undefined || p.startedAt! < culprit.startedAt!) culprit = p;
  return culprit;
}

function routerError(payload: string): RouterError {
  try {
    const { reason, message, starved } = JSON.parse(payload) as { reason: unknown; message: unknown; starved: unknown };
    const known = Object.values(CloseReason) as string[];
    if (typeof reason === 'string' && known.includes(reason) && typeof message === 'string') {
      return new RouterError(reason as CloseReason, message.slice(0, 1000), { starved: starved === true });
    }
  } catch {
    // fall through
  }
  return new RouterError(CloseReason.routerUnavailable, 'sandbox returned a malformed error');
}

function loadResult(response: Response): string {
  if (response.status === Status.loaded) return (JSON.parse(response.payload) as { envelope: string }).envelope;
  if (response.status === Status.ok) return response.payload;
  if (response.status === Status.loadError) {
    const e = JSON.parse(response.payload) as { code: RouterLoadCode; message: string; line?: number; column?: number; stack?: unknown };
    // The frames come from a sandbox process: only strings, as many as a stack keeps.
    const stack = Array.isArray(e.stack) ? e.stack.filter((f): f is string => typeof f === 'string').slice(0, 10).map((f) => f.slice(0, 400)) : undefined;
    throw new RouterLoadError(e.code, e.message, e.line === undefined || e.column === undefined ? undefined : { line: e.line, column: e.column, stack });
  }
  throw routerError(response.payload);
}
