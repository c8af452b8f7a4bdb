import ivm from 'isolated-vm';
import { scriptLimits } from '../config.js';
import { CloseReason, RouterError, RouterLoadError } from '../errors.js';
import { type Decision, validateDecision } from '../routing/decision.js';
import type { RouterConsole } from './console.js';
import { preludeSource } from './prelude.js';
import type { ConnInfo, Router, RouterHooks } from './router.js';

export interface IsolateRouterOptions {
  readonly source: string;
  /** Shown in stack traces and compile errors. */
  readonly filename: string;
  readonly routerTimeoutMs: number;
  readonly memoryMb: number;
  /** The tenant's routing table as JSON text; `{}` when absent. */
  readonly table?: string;
  readonly console: RouterConsole;
}

/** One live isolate: a context with the prelude and the tenant script loaded. */
interface Instance {
  readonly isolate: ivm.Isolate;
  readonly context: ivm.Context;
  readonly route: ivm.Reference<unknown>;
  readonly accept: ivm.Reference<unknown>;
  readonly hook: ivm.Reference<unknown>;
  readonly hooks: RouterHooks;
}

/** What the prelude hands back: one JSON envelope (see prelude.ts). */
interface Envelope {
  d?: unknown;
  e?: 'throw' | 'invalid' | 'noproxy';
  m?: string;
  l?: [string, string][];
  x?: number;
}

/** A call that made no progress for this long past its own time limit means the isolate is stuck. */
const stuckGraceMs = 1000;

/**
 * A tenant's router in an isolated-vm isolate of this process. The script is compiled and
 * loaded once; every call passes primitives in (the buffer as a latin1 string, the connection
 * fields) and gets one string back. An isolate that hits its memory limit, or stops making
 * progress, is disposed and rebuilt from the same source on the next call.
 */
export class IsolateRouter implements Router {
  readonly #options: IsolateRouterOptions;
  #instance: Promise<Instance> | undefined;
  #hooks: RouterHooks = { accept: false, connectError: false, inactivityError: false };
  #disposed = false;
  #inflight = 0;
  #progressAt = 0;
  /** Isolates the watchdog disposed because they stopped making progress. */
  readonly #stuck = new WeakSet<ivm.Isolate>();
  readonly #watchdog: NodeJS.Timeout;

  private constructor(options: IsolateRouterOptions) {
    this.#options = options;
    const every = Math.max(100, options.routerTimeoutMs);
    this.#watchdog = setInterval(() => this.#checkProgress(), every).unref();
  }

  /** Compiles and loads a script; rejects with RouterLoadError (with line and column for syntax errors). */
  static async load(options: IsolateRouterOptions): Promise<IsolateRouter> {
    if (Buffer.byteLength(options.source) > scriptLimits.maxScriptBytes) {
      throw new RouterLoadError('ERR_ROUTER_TOO_LARGE', `router script is larger than ${scriptLimits.maxScriptBytes} bytes`);
    }
    const router = new IsolateRouter(options);
    try {
      const instance = await router.#ensure();
      router.#hooks = instance.hooks;
    } catch (err) {
      router.dispose();
      throw err;
    }
    return router;
  }

  get hooks(): RouterHooks {
    return this.#hooks;
  }

  async route(data: string, conn: ConnInfo): Promise<Decision> {
    const d = await this.#call('route', [data, ...connArgs(conn)]);
    return validateDecision(d);
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
    this.#disposed = true;
    clearInterval(this.#watchdog);
    void this.#instance?.then((i) => release(i.isolate), () => undefined);
    this.#instance = undefined;
  }

  /** Calls one prelude entry point and unwraps its envelope; rejects with RouterError. */
  async #call(fn: 'route' | 'accept' | 'hook', args: (string | number)[]): Promise<unknown> {
    let instance: Instance;
    try {
      instance = await this.#ensure();
    } catch (err) {
      throw new RouterError(CloseReason.routerUnavailable, `router could not be loaded: ${(err as Error).message}`);
    }
    if (this.#inflight++ === 0) this.#progressAt = Date.now();
    let text: unknown;
    try {
      text = await instance[fn].apply(undefined, args, { timeout: this.#options.routerTimeoutMs });
    } catch (err) {
      throw this.#failed(instance, err);
    } finally {
      this.#inflight--;
      this.#progressAt = Date.now();
    }
    const envelope = open(text, this.#options.console);
    switch (envelope.e) {
      case undefined:
        return envelope.d;
      case 'invalid':
        throw new RouterError(CloseReason.routerInvalid, `invalid decision: ${envelope.m}`);
      case 'throw':
      case 'noproxy':
        throw new RouterError(CloseReason.routerThrow, `router threw: ${envelope.m}`);
      default:
        throw new RouterError(CloseReason.routerInvalid, 'sandbox returned an unknown result');
    }
  }

  /** Classifies a failed call; an isolate that died is dropped so the next call rebuilds it. */
  #failed(instance: Instance, err: unknown): RouterError {
    const message = err instanceof Error ? err.message : String(err);
    if (instance.isolate.isDisposed || /disposed/i.test(message)) {
      this.#drop(instance);
      if (this.#stuck.has(instance.isolate)) {
        return new RouterError(CloseReason.routerTimeout, 'router stopped responding; isolate replaced');
      }
      return /memory/i.test(message)
        ? new RouterError(CloseReason.routerMemory, 'router exceeded its memory limit; isolate replaced')
        : new RouterError(CloseReason.routerUnavailable, 'router isolate was disposed during the call');
    }
    if (/timed out/i.test(message)) {
      return new RouterError(CloseReason.routerTimeout, `router ran past its ${this.#options.routerTimeoutMs} ms limit`);
    }
    // What remains is an unhandled rejection the isolate reported after the call.
    return new RouterError(CloseReason.routerThrow, `router failed: ${message}`);
  }

  #drop(instance: Instance): void {
    void this.#instance?.then((current) => {
      if (current === instance) this.#instance = undefined;
    }, () => undefined);
    release(instance.isolate);
  }

  /** A call queue that stopped moving well past the time limit: the isolate is stuck, dispose it. */
  #checkProgress(): void {
    if (this.#inflight === 0 || this.#instance === undefined) return;
    if (Date.now() - this.#progressAt < this.#options.routerTimeoutMs + stuckGraceMs) return;
    void this.#instance.then((i) => {
      this.#stuck.add(i.isolate);
      this.#drop(i);
    }, () => undefined);
  }

  #ensure(): Promise<Instance> {
    if (this.#disposed) return Promise.reject(new Error('router disposed'));
    if (this.#instance === undefined) {
      const building = build(this.#options);
      this.#instance = building;
      building.catch(() => {
        if (this.#instance === building) this.#instance = undefined;
      });
    }
    return this.#instance;
  }
}

/** Parses the prelude's envelope and forwards its console lines. */
function open(text: unknown, console: RouterConsole): Envelope {
  if (typeof text !== 'string') throw new RouterError(CloseReason.routerInvalid, 'sandbox returned no result');
  const envelope = JSON.parse(text) as Envelope;
  if (envelope.l !== undefined) {
    for (const [stream, line] of envelope.l) console.write(stream === 'error' ? 'error' : 'log', line);
  }
  if (envelope.x) console.droppedInSandbox(envelope.x);
  return envelope;
}

function connArgs(c: ConnInfo): (string | number)[] {
  return [c.tenant, c.remoteAddress, c.remotePort, c.localAddress, c.localPort];
}

function release(isolate: ivm.Isolate): void {
  if (!isolate.isDisposed) isolate.dispose();
}

const syntaxPosition = /\[[^\]]*:(\d+):(\d+)\]$/;

/** Builds an isolate: prelude, a compile check of the script, then the script itself. */
async function build(o: IsolateRouterOptions): Promise<Instance> {
  const isolate = new ivm.Isolate({ memoryLimit: o.memoryMb });
  try {
    const context = await isolate.createContext();
    await (await isolate.compileScript(preludeSource, { filename: 'switchyard:prelude' })).run(context);
    const api = await context.global.get('__switchyard', { reference: true });
    const get = (name: string) => api.get(name, { reference: true }) as Promise<ivm.Reference<unknown>>;
    const [setTable, load, route, accept, hook] = await Promise.all(['setTable', 'load', 'route', 'accept', 'hook'].map(get));
    await context.global.delete('__switchyard');
    api.release();

    // Compiling alone runs no tenant code; it gives syntax errors their line and column.
    try {
      (await isolate.compileScript(o.source, { filename: o.filename })).release();
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      const at = syntaxPosition.exec(message);
      throw new RouterLoadError(
        'ERR_ROUTER_SYNTAX',
        message.replace(syntaxPosition, '').trim(),
        at ? { line: Number(at[1]), column: Number(at[2]) } : undefined,
      );
    }
    if (o.table !== undefined) await setTable!.apply(undefined, [o.table], { timeout: scriptLimits.loadTimeoutMs });

    let text: unknown;
    try {
      text = await load!.apply(undefined, [o.source], { timeout: scriptLimits.loadTimeoutMs });
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      if (isolate.isDisposed || /memory/i.test(message)) {
        throw new RouterLoadError('ERR_ROUTER_MEMORY', 'router exceeded its memory limit while loading');
      }
      if (/timed out/i.test(message)) {
        throw new RouterLoadError('ERR_ROUTER_TIMEOUT', `router ran past ${scriptLimits.loadTimeoutMs} ms while loading`);
      }
      throw new RouterLoadError('ERR_ROUTER_THROW', `router failed while loading: ${message}`);
    }
    const envelope = open(text, o.console);
    if (envelope.e === 'noproxy') throw new RouterLoadError('ERR_ROUTER_NO_PROXY', envelope.m ?? 'the script never calls proxy()');
    if (envelope.e !== undefined) throw new RouterLoadError('ERR_ROUTER_THROW', `router threw while loading: ${envelope.m}`);
    const [acceptHook, connectError, inactivityError] = envelope.d as [boolean, boolean, boolean];
    return {
      isolate,
      context,
      route: route!,
      accept: accept!,
      hook: hook!,
      hooks: { accept: acceptHook, connectError, inactivityError },
    };
  } catch (err) {
    release(isolate);
    throw err;
  }
}
