import { scriptName } from '../authoring/diagnostics.js';
import { CloseReason, RouterError } from '../errors.js';
import { type Decision, validateDecision } from '../routing/decision.js';
import type { RouterConsole } from './console.js';
import { envelopeValue, loadedHooks, openEnvelope } from './envelope.js';
import type { SandboxPool, TenantSpec } from './pool.js';
import type { ConnInfo, Router, RouterHooks } from './router.js';
import { Hook, Op } from './wire.js';

/**
 * A tenant's router in a sandbox worker process. The worker runs the isolate; this side
 * opens each envelope and validates the decision, so nothing the worker says is trusted.
 * What a failure costs beyond its own connection (slow lane, quarantine, a penalty on the
 * client's source address) is the pool's to decide (blame.ts).
 */
export class ProcessRouter implements Router {
  #hooks: RouterHooks | undefined;
  #warming: Promise<RouterHooks> | undefined;
  readonly #pool: SandboxPool;
  readonly #slot: number;
  readonly #console: RouterConsole;
  /** The script's name in its stack traces. */
  readonly #filename: string;

  private constructor(pool: SandboxPool, slot: number, hooks: RouterHooks | undefined, console: RouterConsole, filename: string) {
    this.#pool = pool;
    this.#slot = slot;
    this.#hooks = hooks;
    this.#console = console;
    this.#filename = filename;
  }

  /** Checks the script in a throwaway process, then loads it into a worker. Rejects with RouterLoadError. */
  static async load(pool: SandboxPool, spec: TenantSpec, console: RouterConsole): Promise<ProcessRouter> {
    const { slot, envelope } = await pool.load(spec);
    try {
      const filename = scriptName(spec.filename);
      const hooks = loadedHooks(openEnvelope(envelope, console), filename);
      return new ProcessRouter(pool, slot, hooks, console, filename);
    } catch (err) {
      pool.unload(slot);
      throw err;
    }
  }

  /**
   * A router for a script accepted before (at start-up): registered with the pool, its
   * isolate built on the first call or warm().
   */
  static cold(pool: SandboxPool, spec: TenantSpec, console: RouterConsole): ProcessRouter {
    return new ProcessRouter(pool, pool.register(spec), undefined, console, scriptName(spec.filename));
  }

  get hooks(): RouterHooks | undefined {
    return this.#hooks;
  }

  warm(): Promise<RouterHooks> {
    if (this.#hooks !== undefined) return Promise.resolve(this.#hooks);
    this.#warming ??= this.#pool.warm(this.#slot).then(
      (envelope) => {
        this.#hooks = loadedHooks(openEnvelope(envelope, this.#console), this.#filename);
        return this.#hooks;
      },
      (err: unknown) => {
        this.#warming = undefined;
        throw err instanceof RouterError ? err : new RouterError(CloseReason.routerUnavailable, `router could not be loaded: ${(err as Error).message}`);
      },
    );
    return this.#warming;
  }

  /** The worker process serving this router now. */
  get pid(): number | undefined {
    return this.#pool.pidOf(this.#slot);
  }

  /** Calls in flight to the worker. */
  get pending(): number {
    return this.#pool.pendingFor(this.#slot);
  }

  /** Calls its worker has started running and not answered yet. */
  get running(): number {
    return this.#pool.runningFor(this.#slot);
  }

  get quarantined(): boolean {
    return this.#pool.isQuarantined(this.#slot);
  }

  get inSlowLane(): boolean {
    return this.#pool.isInSlowLane(this.#slot);
  }

  async route(data: string, conn: ConnInfo): Promise<Decision> {
    return validateDecision(await this.#call(Op.route, conn, { text: data }));
  }

  async accept(conn: ConnInfo): Promise<Decision | undefined> {
    const d = await this.#call(Op.accept, conn);
    return d === null ? undefined : validateDecision(d);
  }

  async connectError(remote: string, conn: ConnInfo): Promise<void> {
    await this.#call(Op.hook, conn, { which: Hook.connect, text: remote });
  }

  async inactivityError(remote: string, conn: ConnInfo): Promise<void> {
    await this.#call(Op.hook, conn, { which: Hook.inactivity, text: remote });
  }

  dispose(): void {
    this.#pool.unload(this.#slot);
  }

  #call(op: typeof Op.route | typeof Op.accept | typeof Op.hook, conn: ConnInfo, extra?: { which?: number; text?: string }): Promise<unknown> {
    return this.#pool.call(this.#slot, op, conn, extra).then((text) => envelopeValue(openEnvelope(text, this.#console), this.#filename));
  }
}
