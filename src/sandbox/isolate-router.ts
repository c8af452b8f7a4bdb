import { scriptName } from '../authoring/diagnostics.js';
import { type Decision, validateDecision } from '../routing/decision.js';
import type { RouterConsole } from './console.js';
import { envelopeValue, openEnvelope } from './envelope.js';
import type { ConnInfo, Router, RouterHooks } from './router.js';
import { type EntryPoint, type IsolateSpec, TenantIsolate } from './tenant-isolate.js';

export interface IsolateRouterOptions extends IsolateSpec {
  readonly console: RouterConsole;
}

/**
 * A Router whose isolate lives in this process: the envelope of each call is opened and its
 * decision validated right here. Used inside sandbox workers' tests and for measuring the
 * cost of a call without a process boundary.
 */
export class IsolateRouter implements Router {
  readonly hooks: RouterHooks;
  readonly #isolate: TenantIsolate;
  readonly #console: RouterConsole;
  /** The script's name in its stack traces. */
  readonly #filename: string;

  private constructor(isolate: TenantIsolate, hooks: RouterHooks, console: RouterConsole, filename: string) {
    this.#isolate = isolate;
    this.hooks = hooks;
    this.#console = console;
    this.#filename = filename;
  }

  /** Compiles and loads a script; rejects with RouterLoadError (with line and column for syntax errors). */
  static async load(options: IsolateRouterOptions): Promise<IsolateRouter> {
    const { console, ...spec } = options;
    const { isolate, hooks, envelope } = await TenantIsolate.create(spec);
    openEnvelope(envelope, console);
    return new IsolateRouter(isolate, hooks, console, scriptName(spec.filename));
  }

  warm(): Promise<RouterHooks> {
    return Promise.resolve(this.hooks);
  }

  async route(data: string, conn: ConnInfo): Promise<Decision> {
    return validateDecision(await this.#call('route', [data, ...connArgs(conn)]));
  }

  async accept(conn: ConnInfo): Promise<Decision | undefined> {
    const d = await this.#call('accept', connArgs(conn));
    return d === null ? undefined : validateDecision(d);
  }

  async connectError(remote: string): Promise<void> {
    await this.#call('hook', ['connect', remote]);
  }

  async inactivityError(remote: string): Promise<void> {
    await this.#call('hook', ['inactivity', remote]);
  }

  dispose(): void {
    this.#isolate.dispose();
  }

  async #call(fn: EntryPoint, args: readonly (string | number)[]): Promise<unknown> {
    return envelopeValue(openEnvelope(await this.#isolate.call(fn, args), this.#console), this.#filename);
  }
}

/** The connection fields as the prelude's entry points take them. */
export function connArgs(c: ConnInfo): (string | number)[] {
  return [c.tenant, c.remoteAddress, c.remotePort, c.localAddress, c.localPort];
}
