import { cooldownDefaults } from '../config.js';

export type CooldownPolicy = typeof cooldownDefaults;
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
 *
 * CPU cool-down: a router that hits its time limit `strikes` times within `windowMs` is
 * not called for a while; its connections are closed at once (`router_cooldown`). Each
 * cool-down in a row lasts twice the one before, up to `maxMs`.
 */
export class ProcessRouter implements Router {
  #hooks: RouterHooks | undefined;
  #warming: Promise<RouterHooks> | undefined;
  readonly #pool: SandboxPool;
  readonly #slot: number;
  readonly #console: RouterConsole;
  readonly #cooldown: CooldownPolicy;
  #timeouts: number[] = [];
  #coolUntil = 0;
  #coolMs = 0;

  private constructor(pool: SandboxPool, slot: number, hooks: RouterHooks | undefined, console: RouterConsole, cooldown: CooldownPolicy) {
    this.#pool = pool;
    this.#cooldown = cooldown;
    this.#slot = slot;
    this.#hooks = hooks;
    this.#console = console;
  }

  /** Checks the script in a throwaway process, then loads it into a worker. Rejects with RouterLoadError. */
  static async load(pool: SandboxPool, spec: TenantSpec, console: RouterConsole, cooldown: CooldownPolicy = cooldownDefaults): Promise<ProcessRouter> {
    const { slot, envelope } = await pool.load(spec);
    try {
      const hooks = loadedHooks(openEnvelope(envelope, console));
      return new ProcessRouter(pool, slot, hooks, console, cooldown);
    } catch (err) {
      pool.unload(slot);
      throw err;
    }
  }

  /**
   * A router for a script accepted before (at start-up): registered with the pool, its
   * isolate built on the first call or warm().
   */
  static cold(pool: SandboxPool, spec: TenantSpec, console: RouterConsole, cooldown: CooldownPolicy = cooldownDefaults): ProcessRouter {
    return new ProcessRouter(pool, pool.register(spec), undefined, console, cooldown);
  }

  get hooks(): RouterHooks | undefined {
    return this.#hooks;
  }

  warm(): Promise<RouterHooks> {
    if (this.#hooks !== undefined) return Promise.resolve(this.#hooks);
    this.#warming ??= this.#pool.warm(this.#slot).then(
      (envelope) => {
        this.#hooks = loadedHooks(openEnvelope(envelope, this.#console));
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

  get quarantined(): boolean {
    return this.#pool.isQuarantined(this.#slot);
  }

  get inSlowLane(): boolean {
    return this.#pool.isInSlowLane(this.#slot);
  }

  get coolingDown(): boolean {
    return Date.now() < this.#coolUntil;
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

  async #call(op: typeof Op.route | typeof Op.accept | typeof Op.hook, conn: ConnInfo, extra?: { which?: number; text?: string }): Promise<unknown> {
    const now = Date.now();
    if (now < this.#coolUntil) {
      throw new RouterError(CloseReason.routerCooldown, `router is cooling down for ${this.#coolUntil - now} ms after repeated time-outs`);
    }
    try {
      return envelopeValue(openEnvelope(await this.#pool.call(this.#slot, op, conn, extra), this.#console));
    } catch (err) {
      // The cool-down runs from when the time-out is known, however long the call took to fail.
      if (err instanceof RouterError && err.isStrike) this.#timedOut(Date.now());
      throw err;
    }
  }

  #timedOut(now: number): void {
    const { strikes, windowMs, initialMs, maxMs } = this.#cooldown;
    this.#timeouts = this.#timeouts.filter((t) => now - t < windowMs);
    this.#timeouts.push(now);
    if (this.#timeouts.length < strikes) return;
    // A cool-down right after the last one doubles; after a quiet spell it starts over.
    this.#coolMs = now - this.#coolUntil < windowMs ? Math.min(maxMs, Math.max(initialMs, this.#coolMs * 2)) : initialMs;
    this.#coolUntil = now + this.#coolMs;
    this.#timeouts = [];
    this.#console.warn(`router hit its time limit ${strikes} times within ${windowMs} ms: cooling down for ${this.#coolMs} ms`);
  }
}
