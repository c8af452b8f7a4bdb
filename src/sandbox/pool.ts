import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { LRUCache } from 'lru-cache';
import { sandboxDefaults, scriptLimits } from '../config.js';
import { CloseReason, RouterError, RouterLoadError, type RouterLoadCode } from '../errors.js';
import type { Logger } from '../log.js';
import type { SandboxFigures } from '../metrics/prometheus.js';
import { confineFailedExit, sandboxIdentity, type SandboxIdentity } from './confine.js';
import type { ConnInfo } from './router.js';
import type { IsolateSpec } from './tenant-isolate.js';
import { Op, type Response, Status } from './wire.js';
import { type Pending, quarantinePriority, slowLanePriority, WorkerHost, WorkerProcess, workerFlags } from './worker-process.js';

export interface PoolOptions {
  readonly log: Logger;
  /** Shared worker processes (tenants are spread over them). */
  readonly workers?: number;
  /** Calls one worker runs at once. */
  readonly concurrency?: number;
  /** Worker crashes or hangs blamed on one tenant, within `strikeWindowMs`, before it is quarantined. */
  readonly quarantineStrikes?: number;
  readonly strikeWindowMs?: number;
  /** Time-outs of one tenant within `strikeWindowMs` before it moves to the slow lane. */
  readonly slowLaneStrikes?: number;
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

interface TenantEntry {
  readonly slot: number;
  readonly spec: TenantSpec;
  host: WorkerHost;
  /** The shared worker it was given, where it returns from the slow lane. */
  readonly home: WorkerHost;
  quarantined: boolean;
  /** When worker crashes or hangs were blamed on this tenant. */
  strikes: number[];
  /** When its calls ran into their time limit (see slowLaneStrikes). */
  timeouts: number[];
  /** Calls in flight, oldest first, and when the last one was answered. */
  readonly inflight: Pending[];
  lastAnswerAt: number;
  /** The isolate's heap once loaded, as its worker reported it. */
  heapBytes?: number;
}

/**
 * The supervisor of the sandbox worker processes. Tenants are spread over a few shared
 * workers; a worker that crashes, aborts or hangs is killed and restarted, the calls pending
 * on it fail cleanly, and other workers never notice. A tenant blamed for repeated crashes
 * or hangs moves to a quarantine worker of its own, at a lower CPU priority; one whose calls
 * keep running into their time limit moves to the slow lane, a shared worker at that priority.
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
    const quarantined = [...this.#tenants.values()].filter((t) => t.quarantined).length;
    const slowLane = [...this.#tenants.values()].filter((t) => t.host === this.#slowLane && !t.quarantined).length;
    return { workers: procs.length, isolates, heapBytes, spareIsolates, coldStartsFromSpare, workerRssBytes: Math.round(workerRssBytes), restarts: this.#restarts, quarantined, slowLane };
  }

  /** The pid of the worker that serves a tenant now. */
  pidOf(slot: number): number | undefined {
    return this.#tenants.get(slot)?.host.current.child.pid;
  }

  /** Calls of a tenant sent to its worker and not answered yet. */
  pendingFor(slot: number): number {
    return this.#tenants.get(slot)?.inflight.length ?? 0;
  }

  isQuarantined(slot: number): boolean {
    return this.#tenants.get(slot)?.quarantined ?? false;
  }

  isInSlowLane(slot: number): boolean {
    const host = this.#tenants.get(slot)?.host;
    return host !== undefined && host === this.#slowLane;
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
    const host = this.#shared[this.#nextShared++ % this.#shared.length]!;
    this.#tenants.set(slot, { slot, spec, host, home: host, quarantined: false, strikes: [], timeouts: [], inflight: [], lastAnswerAt: 0 });
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
    const timer = setTimeout(() => proc.kill(), limitMs);
    try {
      const response = await Promise.race([
        proc.request(Op.load, 0, limitMs, undefined, { json: JSON.stringify(spec) }).promise,
        proc.exited.then(() => {
          throw new RouterLoadError('ERR_ROUTER_CRASH', 'the script crashed or hung the sandbox while loading');
        }),
      ]);
      return loadResult(response);
    } finally {
      clearTimeout(timer);
      proc.kill();
    }
  }

  /** One call into a tenant's isolate; resolves with the envelope text, rejects with RouterError. */
  async call(slot: number, op: typeof Op.route | typeof Op.accept | typeof Op.hook, conn: ConnInfo, extra?: { which?: number; text?: string }): Promise<string> {
    const entry = this.#tenants.get(slot);
    if (entry === undefined || this.#closed) throw new RouterError(CloseReason.routerUnavailable, 'router is not loaded');
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
        if (err.isStrike) this.#timedOut(entry);
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
    if (entry.quarantined && ![...this.#tenants.values()].some((t) => t.host === entry.host)) {
      this.#quarantine.delete(entry.spec.tenant);
      entry.host.current.kill();
    }
  }

  /** Kills every worker. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    const procs = this.#hosts().map((h) => h.current);
    // Profiled workers are let go by closing their channel, so they write their profile.
    if (workerFlags().length > 0) {
      for (const p of procs) (p.child.stdio[3] as Socket).end();
      await Promise.race([Promise.all(procs.map((p) => p.exited)), sleep(2000)]);
    }
    for (const p of procs) p.kill();
    await Promise.all(procs.map((p) => p.exited));
  }

  /** Sends a request for a tenant to its worker, loading the script there first if needed. */
  #send(entry: TenantEntry, op: (typeof Op)[keyof typeof Op], conn?: ConnInfo, extra?: { which?: number; text?: string }): Promise<Response> {
    const proc = entry.host.current;
    const grace = this.#options.stuckGraceMs;
    this.#touch(entry);
    if (op !== Op.load && !proc.loaded.has(entry.slot)) void this.#send(entry, Op.load).catch(() => undefined);
    let pending: Pending;
    if (op === Op.load) {
      proc.loaded.add(entry.slot);
      // Every script the pool keeps has passed a check process: workers need not compile it twice.
      pending = proc.request(op, entry.slot, scriptLimits.loadTimeoutMs + grace, undefined, { json: JSON.stringify({ ...entry.spec, checked: true }) });
    } else {
      pending = proc.request(op, entry.slot, entry.spec.routerTimeoutMs + grace, conn, extra);
    }
    // The tenant's in-flight list, oldest first, is what the supervisor watches for hangs.
    entry.inflight.push(pending);
    const done = (): void => {
      const i = entry.inflight.indexOf(pending);
      if (i >= 0) entry.inflight.splice(i, 1);
      entry.lastAnswerAt = Date.now();
    };
    return pending.promise.then(
      (r) => {
        done();
        if (op === Op.load) this.#loaded(entry, proc, r);
        return r;
      },
      (e: unknown) => {
        done();
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
    proc.pending.delete(r.id);
    pending.resolve(r);
    if (proc.retiring && proc.pending.size === 0) proc.kill();
  };

  /** A worker died: fail its calls, blame the tenants that had calls running, restart it. */
  #onExit(proc: WorkerProcess): void {
    const { exitCode, signalCode } = proc.child;
    const wasKilled = !proc.alive;
    proc.alive = false;
    const blamed = new Set<number>();
    for (const pending of proc.pending.values()) {
      blamed.add(pending.slot);
      pending.reject(
        pending.stuck === true
          ? new RouterError(CloseReason.routerTimeout, 'router hung past its time limit; its sandbox worker was killed')
          : new RouterError(
              CloseReason.routerUnavailable,
              `sandbox worker ${proc.name} ${wasKilled ? 'was stopped' : `crashed (${signalCode ?? `exit ${exitCode}`})`} while the call was pending`,
            ),
      );
    }
    proc.pending.clear();
    if (exitCode === confineFailedExit) this.#log.error({ worker: proc.name, workerPid: proc.child.pid }, 'sandbox worker could not confine itself (its stderr line says why)');
    if (this.#closed || proc.retiring || proc.name.startsWith('check:')) return;
    this.#log.warn({ worker: proc.name, workerPid: proc.child.pid, exitCode, signal: signalCode, killed: wasKilled, pendingTenants: blamed.size }, 'sandbox worker exited; restarting');
    const host = this.#hosts().find((h) => h.current === proc);
    if (host !== undefined) {
      this.#restarts++;
      host.replace();
    }
    // A worker we killed for a stuck call has already been blamed on that call's tenant.
    if (wasKilled) return;
    for (const slot of blamed) {
      const entry = this.#tenants.get(slot);
      if (entry !== undefined) this.#strike(entry, 'crash');
    }
  }

  /** Every 250 ms: kill workers with a call stuck past its limit; replace bloated workers. */
  #supervise(): void {
    const now = Date.now();
    for (const entry of this.#tenants.values()) {
      const head = entry.inflight[0];
      if (head === undefined) continue;
      const startedAt = Math.max(head.sentAt, entry.lastAnswerAt);
      if (now - startedAt <= head.limitMs) continue;
      const proc = head.proc;
      if (!proc.alive) continue;
      this.#log.warn({ tenant: entry.spec.tenant, worker: proc.name, workerPid: proc.child.pid, stuckMs: now - startedAt }, 'router call stuck past its limit: killing its worker');
      entry.lastAnswerAt = now; // one kill per stuck call
      head.stuck = true;
      this.#strike(entry, 'hang');
      proc.kill();
    }
    // Back from the slow lane after a whole strike window without a time-out.
    const lane = this.#slowLane;
    for (const entry of lane === undefined ? [] : this.#tenants.values()) {
      if (entry.host !== lane || entry.quarantined || now - (entry.timeouts.at(-1) ?? 0) < this.#options.strikeWindowMs) continue;
      entry.timeouts = [];
      this.#move(entry, entry.home);
      this.#log.info({ tenant: entry.spec.tenant }, 'router back from the slow lane');
    }
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

  #strike(entry: TenantEntry, why: 'crash' | 'hang'): void {
    const now = Date.now();
    entry.strikes = entry.strikes.filter((t) => now - t < this.#options.strikeWindowMs);
    entry.strikes.push(now);
    if (entry.quarantined || entry.strikes.length < this.#options.quarantineStrikes) return;
    const host = new WorkerHost(`quarantine:${entry.spec.tenant}`, this.#spawn, quarantinePriority);
    this.#quarantine.set(entry.spec.tenant, host);
    this.#move(entry, host);
    entry.quarantined = true;
    this.#log.warn({ tenant: entry.spec.tenant, strikes: entry.strikes.length, why }, 'tenant quarantined in a worker of its own');
  }

  /**
   * A call ran into its time limit. Past `slowLaneStrikes` of them the tenant moves to the slow
   * lane for as long as this version of its router is loaded, so a router that spins competes
   * for the CPU at a lower priority, on no shared worker's queue.
   */
  #timedOut(entry: TenantEntry): void {
    if (entry.quarantined || entry.host === this.#slowLane || this.#closed || this.#tenants.get(entry.slot) !== entry) return;
    const now = Date.now();
    entry.timeouts = entry.timeouts.filter((t) => now - t < this.#options.strikeWindowMs);
    entry.timeouts.push(now);
    if (entry.timeouts.length < this.#options.slowLaneStrikes) return;
    this.#slowLane ??= new WorkerHost('slow-lane', this.#spawn, slowLanePriority);
    this.#move(entry, this.#slowLane);
    this.#log.warn({ tenant: entry.spec.tenant, timeouts: entry.timeouts.length }, 'router keeps running into its time limit: moved to the slow lane');
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
    const e = JSON.parse(response.payload) as { code: RouterLoadCode; message: string; line?: number; column?: number };
    throw new RouterLoadError(e.code, e.message, e.line === undefined || e.column === undefined ? undefined : { line: e.line, column: e.column });
  }
  throw routerError(response.payload);
}
