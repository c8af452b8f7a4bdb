import ivm from 'isolated-vm';
import { scriptName } from '../authoring/diagnostics.js';
import { scriptLimits } from '../config.js';
import { CloseReason, RouterError, RouterLoadError } from '../errors.js';
import { loadedHooks, type Envelope } from './envelope.js';
import { buildBlank, takeSpare } from './blank.js';
import type { RouterHooks } from './router.js';
import { SlidingWindow } from './sliding-window.js';

/** What it takes to build a tenant's isolate. Plain data, so it can travel to a worker process. */
export interface IsolateSpec {
  readonly source: string;
  /** Shown in stack traces and compile errors. */
  readonly filename: string;
  readonly routerTimeoutMs: number;
  readonly memoryMb: number;
  /** The tenant's routing table as JSON text; `{}` when absent. */
  readonly table?: string;
  /**
   * The script was compiled successfully before (in a throwaway check process): skip the
   * compile that only serves to locate syntax errors.
   */
  readonly checked?: boolean;
  /**
   * Start with asynchronous calls (see syncBudgetMs): the pool knows the tenant ran into its
   * time limit or hung a worker before, so a worker it is loaded into again never runs it on
   * its own thread.
   */
  readonly asyncCalls?: boolean;
}

export interface TenantIsolateOptions {
  /**
   * Call fast routers synchronously (blocking this thread for up to the time limit). Only for
   * a sandbox worker process, never for the proxy's own thread.
   */
  readonly syncCalls?: boolean;
}

export type EntryPoint = 'route' | 'accept' | 'hook';

/** How a call runs: on the worker's own thread, blocking it (`sync`), or on an isolated-vm thread. */
export type CallMode = 'sync' | 'async';

/** One live isolate: a context with the prelude and the tenant script loaded. */
interface Instance {
  readonly isolate: ivm.Isolate;
  readonly entry: Readonly<Record<EntryPoint, ivm.Reference<unknown>>>;
}

/** A call that made no progress for this long past its own time limit means the isolate is stuck. */
const stuckGraceMs = 1000;
/**
 * Synchronous calls: a router whose calls stay under this budget is called with applySync,
 * which costs a few µs where an asynchronous call costs a thread hand-off both ways (~30 µs).
 * A call that fails (a time-out above all), or three over budget within ten seconds that come
 * more often than one in a thousand calls, send the router to
 * asynchronous calls (on an isolated-vm thread, beside the others) for a minute. The share
 * keeps a busy, well-behaved router synchronous: the isolate's own garbage collector stops a
 * call for 2-4 ms about once in 30,000 calls, which at 9,000 calls a second is three in ten
 * seconds, and a minute of asynchronous calls triples what each call costs the worker.
 * For a synchronous call the budget is of CPU time (this process's, which the call blocks):
 * on a saturated core the worker is preempted mid-call, and wall time would demote every router
 * there. (isolated-vm's `cpuTime` counts wall time while the isolate runs, so it cannot tell.)
 */
const syncBudgetMs = 2;
const slowCallsToDemote = 3;
const callsPerSlowCall = 1000;
const slowWindowMs = 10_000;
const asyncSpellMs = 60_000;

/**
 * A tenant's script in an isolated-vm isolate, and that isolate's life: built once, called
 * with primitives (the buffer as a latin1 string, the connection fields), answering with the
 * prelude's envelope text. An isolate that hits its memory limit, or stops making progress,
 * is disposed and rebuilt from the same spec on the next call.
 */
export class TenantIsolate {
  readonly #spec: IsolateSpec;
  readonly #syncCalls: boolean;
  /** Until when calls go asynchronously (after a slow or failed one). */
  #asyncUntil = 0;
  #calls = 0;
  /** The calls over budget within the window, each with how many calls there had been then. */
  readonly #slowCalls = new SlidingWindow<number>(slowWindowMs);
  #instance: Promise<Instance> | undefined;
  #disposed = false;
  #inflight = 0;
  #progressAt = 0;
  /**
   * Isolates this code disposed itself, and why: the watchdog (stopped making progress) or a
   * release (unloaded). Any other disposed isolate was disposed by isolated-vm at its memory limit.
   */
  readonly #disposedHere = new WeakMap<ivm.Isolate, 'stuck' | 'released'>();
  readonly #watchdog: NodeJS.Timeout;

  private constructor(spec: IsolateSpec, options: TenantIsolateOptions) {
    this.#spec = spec;
    this.#syncCalls = options.syncCalls === true;
    if (spec.asyncCalls === true) this.#asyncUntil = Date.now() + asyncSpellMs;
    this.#watchdog = setInterval(() => this.#checkProgress(), Math.max(100, spec.routerTimeoutMs)).unref();
  }

  /**
   * Compiles and loads a script. Resolves with the isolate, the hooks the script registered
   * and the load's envelope text (its console lines); rejects with RouterLoadError.
   */
  static async create(spec: IsolateSpec, options: TenantIsolateOptions = {}): Promise<{ isolate: TenantIsolate; hooks: RouterHooks; envelope: string }> {
    if (Buffer.byteLength(spec.source) > scriptLimits.maxScriptBytes) {
      throw new RouterLoadError('ERR_ROUTER_TOO_LARGE', `router script is larger than ${scriptLimits.maxScriptBytes} bytes`);
    }
    const tenant = new TenantIsolate(spec, options);
    const built = build(spec, tenant.#syncCalls);
    tenant.#instance = built.then((b) => b.instance);
    try {
      const { hooks, envelope } = await built;
      return { isolate: tenant, hooks, envelope };
    } catch (err) {
      tenant.dispose();
      throw err;
    }
  }

  /** How the next call would run: synchronously (in a worker, while the router behaves) or not. */
  get callMode(): 'sync' | 'async' {
    return this.#syncCalls && Date.now() >= this.#asyncUntil ? 'sync' : 'async';
  }

  /**
   * Calls one prelude entry point; resolves with its envelope text, rejects with RouterError.
   * `onStart` is told just before the tenant's code starts running, and how.
   */
  async call(fn: EntryPoint, args: readonly (string | number)[], onStart?: (mode: CallMode) => void): Promise<string> {
    let instance: Instance;
    try {
      instance = await this.#ensure();
    } catch (err) {
      throw new RouterError(CloseReason.routerUnavailable, `router could not be loaded: ${(err as Error).message}`);
    }
    if (this.#inflight++ === 0) this.#progressAt = Date.now();
    const options = { timeout: this.#spec.routerTimeoutMs };
    const sync = this.#syncCalls && this.#inflight === 1 && Date.now() >= this.#asyncUntil;
    onStart?.(sync ? 'sync' : 'async');
    const wallStart = performance.now();
    const cpuStart = sync ? processCpuMs() : 0;
    try {
      const text = sync
        ? instance.entry[fn].applySync(undefined, args as (string | number)[], options)
        : await instance.entry[fn].apply(undefined, args as (string | number)[], options);
      if (typeof text !== 'string') throw new RouterError(CloseReason.routerInvalid, 'sandbox returned no result');
      // The first calls of an isolate compile and optimise the router: only later ones count.
      // Under the budget in wall time is under it in CPU too: the CPU clock is read only past it.
      if (++this.#calls > 10 && performance.now() - wallStart > syncBudgetMs && spentMs(sync, wallStart, cpuStart) > syncBudgetMs) this.#slow();
      return text;
    } catch (err) {
      this.#asyncUntil = Date.now() + asyncSpellMs;
      throw err instanceof RouterError ? err : this.#failed(instance, err, performance.now() - wallStart, spentMs(sync, wallStart, cpuStart));
    } finally {
      this.#inflight--;
      this.#progressAt = Date.now();
    }
  }

  /**
   * A call over the sync budget: one may be a GC pause or a busy machine, so it takes
   * `slowCallsToDemote` within `slowWindowMs`, fewer than `callsPerSlowCall` calls apart on
   * average, to send the router to asynchronous calls.
   */
  #slow(): void {
    const now = Date.now();
    this.#slowCalls.add(now, this.#calls);
    const slow = this.#slowCalls.events(now);
    // The latest slow calls, three of them, four, ...: are they on average closer than the share?
    for (let k = slow.length - slowCallsToDemote; k >= 0; k--) {
      if (this.#calls - slow[k]!.value < (slow.length - 1 - k) * callsPerSlowCall) {
        this.#asyncUntil = now + asyncSpellMs;
        this.#slowCalls.clear();
        return;
      }
    }
  }

  /** Heap statistics of the live isolate, if one is built. */
  async heap(): Promise<ivm.HeapStatistics | undefined> {
    const instance = await this.#instance?.catch(() => undefined);
    if (instance === undefined || instance.isolate.isDisposed) return undefined;
    // It may be disposed meanwhile (unloaded, or over its memory limit): then it has no heap.
    return instance.isolate.getHeapStatistics().catch(() => undefined);
  }

  dispose(): void {
    this.#disposed = true;
    clearInterval(this.#watchdog);
    void this.#instance?.then((i) => this.#drop(i), () => undefined);
    this.#instance = undefined;
  }

  /**
   * Classifies a failed call by what is known for sure, never by isolated-vm's message text
   * (its errors are plain Errors with no code): an isolate this code disposed (the watchdog: a
   * hang; a release: unloaded), one disposed by isolated-vm (the memory limit), a call that
   * lasted its whole time limit (V8 terminated it: a time-out). The prelude catches what the
   * router throws inside the call, so what remains is a rejection reported after the call.
   * An isolate that died is dropped so the next call rebuilds it.
   */
  #failed(instance: Instance, err: unknown, wallMs: number, spentMs: number): RouterError {
    const isolate = instance.isolate;
    if (isolate.isDisposed) {
      const why = this.#disposedHere.get(isolate);
      this.#drop(instance);
      if (why === 'stuck') return new RouterError(CloseReason.routerTimeout, 'router stopped responding; isolate replaced');
      if (why === 'released') return new RouterError(CloseReason.routerUnavailable, 'router isolate was disposed during the call');
      return new RouterError(CloseReason.routerMemory, 'router exceeded its memory limit; isolate replaced');
    }
    const limitMs = this.#spec.routerTimeoutMs;
    if (wallMs >= limitMs) {
      // Under a quarter of the limit in CPU (only a synchronous call can tell): it waited for a busy CPU.
      const starved = spentMs < limitMs / 4;
      return new RouterError(
        CloseReason.routerTimeout,
        starved ? `router ran past its ${limitMs} ms limit, having had ${spentMs.toFixed(1)} ms of CPU (a busy machine)` : `router ran past its ${limitMs} ms limit`,
        { starved },
      );
    }
    const message = err instanceof Error ? err.message : String(err);
    return new RouterError(CloseReason.routerThrow, `router failed: ${message}`);
  }

  #drop(instance: Instance, why: 'stuck' | 'released' = 'released'): void {
    void this.#instance?.then((current) => {
      if (current === instance) this.#instance = undefined;
    }, () => undefined);
    if (!instance.isolate.isDisposed) this.#disposedHere.set(instance.isolate, why);
    release(instance.isolate);
  }

  /** A call queue that stopped moving well past the time limit: the isolate is stuck, dispose it. */
  #checkProgress(): void {
    if (this.#inflight === 0 || this.#instance === undefined) return;
    if (Date.now() - this.#progressAt < this.#spec.routerTimeoutMs + stuckGraceMs) return;
    void this.#instance.then((i) => this.#drop(i, 'stuck'), () => undefined);
  }

  #ensure(): Promise<Instance> {
    if (this.#disposed) return Promise.reject(new Error('router disposed'));
    if (this.#instance === undefined) {
      const building = build(this.#spec, this.#syncCalls).then((b) => b.instance);
      this.#instance = building;
      building.catch(() => {
        if (this.#instance === building) this.#instance = undefined;
      });
    }
    return this.#instance;
  }
}

/** CPU time this process has used, in ms (user and system). */
function processCpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
}

/**
 * What a call cost so far, in ms: CPU time for a synchronous call (it blocks this process),
 * wall time for an asynchronous one (it shares the process's CPU with other tenants' calls).
 */
function spentMs(sync: boolean, wallStart: number, cpuStart: number): number {
  return sync ? processCpuMs() - cpuStart : performance.now() - wallStart;
}

function release(isolate: ivm.Isolate): void {
  if (!isolate.isDisposed) isolate.dispose();
}

const syntaxPosition = /\[[^\]]*:(\d+):(\d+)\]$/;

/** Compiles the script without running it: no tenant code runs, and a syntax error gets its line and column. */
async function compileCheck(isolate: ivm.Isolate, spec: IsolateSpec): Promise<void> {
  try {
    (await isolate.compileScript(spec.source, { filename: scriptName(spec.filename) })).release();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    const at = syntaxPosition.exec(message);
    throw new RouterLoadError('ERR_ROUTER_SYNTAX', message.replace(syntaxPosition, '').trim(), at ? { line: Number(at[1]), column: Number(at[2]) } : undefined);
  }
}

/**
 * Builds a tenant's isolate: a blank one (the spare, if the worker prepared one for this
 * memory limit), a compile check of the script (unless checked before), the table, then the
 * script itself. The table and the tenant's code always run asynchronously, under their time
 * limit, so a slow script cannot hold the worker's other tenants.
 */
async function build(spec: IsolateSpec, sync = false): Promise<{ instance: Instance; hooks: RouterHooks; envelope: string }> {
  const { isolate, api } = (await takeSpare(spec.memoryMb)) ?? (await buildBlank(spec.memoryMb, sync));
  const { setTable, load } = api;
  try {
    if (spec.checked !== true) await compileCheck(isolate, spec);
    if (spec.table !== undefined) await setTable.apply(undefined, [spec.table], { timeout: scriptLimits.loadTimeoutMs });

    let text: unknown;
    const loadStart = performance.now();
    try {
      text = await load.apply(undefined, [spec.source, scriptName(spec.filename)], { timeout: scriptLimits.loadTimeoutMs });
    } catch (err) {
      // As in TenantIsolate.#failed: nobody else disposes an isolate being built, and the
      // prelude catches what the script throws.
      if (isolate.isDisposed) throw new RouterLoadError('ERR_ROUTER_MEMORY', 'router exceeded its memory limit while loading');
      if (performance.now() - loadStart >= scriptLimits.loadTimeoutMs) {
        throw new RouterLoadError('ERR_ROUTER_TIMEOUT', `router ran past ${scriptLimits.loadTimeoutMs} ms while loading`);
      }
      const message = err instanceof Error ? err.message : String(err);
      throw new RouterLoadError('ERR_ROUTER_THROW', `router failed while loading: ${message}`);
    }
    if (typeof text !== 'string') throw new RouterLoadError('ERR_ROUTER_THROW', 'sandbox returned no load result');
    const hooks = loadedHooks(JSON.parse(text) as Envelope, scriptName(spec.filename));
    return { instance: { isolate, entry: { route: api.route, accept: api.accept, hook: api.hook } }, hooks, envelope: text };
  } catch (err) {
    release(isolate);
    throw err;
  }
}
