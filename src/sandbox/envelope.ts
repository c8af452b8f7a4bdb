import { routerFrames } from '../authoring/diagnostics.js';
import { CloseReason, RouterError, RouterLoadError } from '../errors.js';
import type { RouterConsole } from './console.js';
import type { RouterHooks } from './router.js';

/**
 * What the prelude hands back from every call: one JSON text built from primitives only
 * (see prelude.ts). Parsing it is the host's first step in treating a result as hostile.
 */
export interface Envelope {
  /** The decision, unwrapped to plain JSON (null: none); for a load, which hooks exist. */
  d?: unknown;
  /** Why the call failed, when it did. */
  e?: 'throw' | 'invalid' | 'noproxy';
  m?: string;
  /** For a throw: the stack text of what was thrown, when it had one. */
  k?: string;
  /** console lines: [stream, line]. */
  l?: [string, string][];
  /** console lines dropped inside the sandbox. */
  x?: number;
}

/** Parses an envelope and forwards its console lines to the tenant's log. */
export function openEnvelope(text: unknown, console: RouterConsole): Envelope {
  if (typeof text !== 'string') throw new RouterError(CloseReason.routerInvalid, 'sandbox returned no result');
  let envelope: Envelope;
  try {
    envelope = JSON.parse(text) as Envelope;
  } catch {
    throw new RouterError(CloseReason.routerInvalid, 'sandbox returned a malformed result');
  }
  if (typeof envelope !== 'object' || envelope === null) throw new RouterError(CloseReason.routerInvalid, 'sandbox returned a malformed result');
  if (Array.isArray(envelope.l)) {
    for (const entry of envelope.l) {
      if (Array.isArray(entry) && typeof entry[1] === 'string') console.write(entry[0] === 'error' ? 'error' : 'log', entry[1]);
    }
  }
  if (typeof envelope.x === 'number' && envelope.x > 0) console.droppedInSandbox(envelope.x);
  return envelope;
}

/**
 * The value a call returned, or the RouterError it amounts to. A throw carries where in the
 * router's source (`filename`) it came from, when its stack says, also in its message (which
 * the log and the rejections show).
 */
export function envelopeValue(envelope: Envelope, filename: string): unknown {
  switch (envelope.e) {
    case undefined:
      return envelope.d;
    case 'invalid':
      throw new RouterError(CloseReason.routerInvalid, `invalid decision: ${String(envelope.m)}`);
    case 'throw':
    case 'noproxy': {
      const where = typeof envelope.k === 'string' ? routerFrames(envelope.k, filename) : undefined;
      const at = where === undefined ? '' : ` (at ${filename}:${where.line}:${where.column})`;
      throw new RouterError(CloseReason.routerThrow, `router threw: ${String(envelope.m)}${at}`, { where });
    }
    default:
      throw new RouterError(CloseReason.routerInvalid, 'sandbox returned an unknown result');
  }
}

/** The hooks a loaded script registered, or the RouterLoadError its load amounts to. */
export function loadedHooks(envelope: Envelope, filename: string): RouterHooks {
  if (envelope.e === 'noproxy') throw new RouterLoadError('ERR_ROUTER_NO_PROXY', String(envelope.m ?? 'the script never calls proxy()'));
  if (envelope.e !== undefined) {
    const where = typeof envelope.k === 'string' ? routerFrames(envelope.k, filename) : undefined;
    throw new RouterLoadError('ERR_ROUTER_THROW', `router threw while loading: ${String(envelope.m)}`, where);
  }
  const d = envelope.d;
  if (!Array.isArray(d) || d.length !== 3 || !d.every((x) => typeof x === 'boolean')) {
    throw new RouterLoadError('ERR_ROUTER_THROW', 'sandbox returned a malformed load result');
  }
  const [accept, connectError, inactivityError] = d as [boolean, boolean, boolean];
  return { accept, connectError, inactivityError };
}
