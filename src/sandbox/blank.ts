import ivm from 'isolated-vm';
import { preludeSource } from './prelude.js';

/** The prelude's entry points, as the host holds them. */
export const apiNames = ['setTable', 'load', 'route', 'accept', 'hook'] as const;
export type ApiName = (typeof apiNames)[number];

/**
 * An isolate with the trusted prelude run in a fresh context and no tenant code yet: what
 * every tenant's isolate is built from (the table and the script come next).
 */
export interface Blank {
  readonly isolate: ivm.Isolate;
  readonly api: Readonly<Record<ApiName, ivm.Reference<unknown>>>;
}

/** V8's code cache for the prelude, made by the first isolate and reused by every later one. */
let preludeCache: ivm.ExternalCopy<ArrayBuffer> | undefined;

/**
 * Builds a blank isolate. With `sync` the steps (all trusted and bounded: a context, the
 * prelude from V8's code cache) run synchronously, which saves a thread hand-off each;
 * without it, all but creating the isolate run on an isolated-vm thread.
 */
export async function buildBlank(memoryMb: number, sync: boolean): Promise<Blank> {
  const isolate = new ivm.Isolate({ memoryLimit: memoryMb });
  try {
    const context = sync ? isolate.createContextSync() : await isolate.createContext();
    const options = {
      filename: 'switchyard:prelude',
      ...(preludeCache === undefined ? { produceCachedData: true } : { cachedData: preludeCache }),
    };
    const prelude = sync ? isolate.compileScriptSync(preludeSource, options) : await isolate.compileScript(preludeSource, options);
    preludeCache ??= (prelude as ivm.Script & ivm.CachedDataResult).cachedData;
    let refs: ivm.Reference<unknown>[];
    if (sync) {
      prelude.runSync(context);
      const api = context.global.getSync('__switchyard', { reference: true });
      refs = apiNames.map((name) => api.getSync(name, { reference: true }) as ivm.Reference<unknown>);
      context.global.deleteSync('__switchyard');
      api.release();
    } else {
      await prelude.run(context);
      const api = await context.global.get('__switchyard', { reference: true });
      refs = await Promise.all(apiNames.map((name) => api.get(name, { reference: true }) as Promise<ivm.Reference<unknown>>));
      await context.global.delete('__switchyard');
      api.release();
    }
    return { isolate, api: Object.fromEntries(apiNames.map((name, i) => [name, refs[i]!])) as Blank['api'] };
  } catch (err) {
    if (!isolate.isDisposed) isolate.dispose();
    throw err;
  }
}

/**
 * One blank isolate built ahead of need, for tenants of one memory limit (an isolate's limit
 * is fixed when it is made). Creating an isolate and its context is most of a tenant's cold
 * start: V8 deserialises its snapshot for the isolate and twice for contexts (isolated-vm
 * keeps a default one), about 3 ms of the 4 a build takes on a 2-core KVM guest. A worker
 * prepares a spare when it is idle, and the next tenant to load starts from it. Only the
 * prelude has run in it: no tenant's code, data or table ever has.
 */
let spare: { readonly memoryMb: number; readonly blank: Promise<Blank | undefined>; ready: boolean } | undefined;
let taken = 0;

/** Builds that started from a spare, in this process. */
export function sparesTaken(): number {
  return taken;
}

/** Builds a spare blank for this memory limit, unless one is there; a spare of another limit is dropped. */
export function prepareSpare(memoryMb: number): void {
  if (spare?.memoryMb === memoryMb) return;
  dropSpare();
  const entry: NonNullable<typeof spare> = {
    memoryMb,
    ready: false,
    // Off this thread where isolated-vm allows it, so calls that arrive meanwhile are not held up.
    blank: buildBlank(memoryMb, false).then(
      (b) => {
        entry.ready = true;
        return b;
      },
      () => {
        // Not built (out of memory, say): none is waiting, so the next idle spell tries again.
        if (spare === entry) spare = undefined;
        return undefined;
      },
    ),
  };
  spare = entry;
}

/** Whether a spare for this memory limit is built and waiting. */
export function spareReady(memoryMb: number): boolean {
  return spare !== undefined && spare.ready && spare.memoryMb === memoryMb;
}

/** Takes the spare for this memory limit, built or still being built, if there is one. */
export function takeSpare(memoryMb: number): Promise<Blank | undefined> | undefined {
  if (spare?.memoryMb !== memoryMb) return undefined;
  const { blank } = spare;
  spare = undefined;
  taken++;
  return blank;
}

/** Disposes the spare, if any. */
function dropSpare(): void {
  const old = spare;
  spare = undefined;
  void old?.blank.then((b) => {
    if (b !== undefined && !b.isolate.isDisposed) b.isolate.dispose();
  });
}
