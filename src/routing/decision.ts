import { decisionLimits } from '../config.js';
import { InvalidDecisionError } from '../errors.js';
import { type Endpoint, formatEndpoint, parseEndpoint } from './endpoint.js';

/**
 * What a router decided for one connection (CONTRACT §2), after validation. The three kinds
 * mirror an inspection filter's answer: `remote` is done, `noop` is continue, `close` ends it.
 */
export type Decision = RemoteDecision | NoopDecision | CloseDecision;

export interface RemoteDecision {
  readonly kind: 'remote';
  /** Candidates in failover order, 1 to 16. */
  readonly remotes: readonly Endpoint[];
  /** Sent to the backend instead of the buffer the router saw. */
  readonly data?: string;
  /** Sent to the client once the backend is connected. */
  readonly reply?: string;
  readonly connectTimeoutMs?: number;
  readonly inactivityTimeoutMs?: number;
  readonly proxyProtocol?: 1 | 2;
}
export interface NoopDecision {
  readonly kind: 'noop';
  readonly reply?: string;
}
export interface CloseDecision {
  readonly kind: 'close';
  /** Sent to the client before it is closed. */
  readonly reply?: string;
}
export type DecisionKind = Decision['kind'];

const remoteKeys = new Set(['remote', 'data', 'reply', 'connectTimeout', 'inactivityTimeout', 'proxyProtocol']);
const noopKeys = new Set(['noop', 'reply']);
const closeKeys = new Set(['close']);
const notLatin1 = /[^\u0000-\u00ff]/;

/**
 * Validates a decision as plain data: the sandbox has already unwrapped it into JSON values,
 * so this sees no getters or prototypes, only keys and values. Everything is checked
 * exactly: no truthiness, no unknown keys, no coercion. Throws InvalidDecisionError.
 */
export function validateDecision(value: unknown): Decision {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InvalidDecisionError(`decision must be an object, got ${describe(value)}`);
  }
  const v = value as Record<string, unknown>;
  const kinds = (['remote', 'noop', 'close'] as const).filter((k) => Object.hasOwn(v, k));
  if (kinds.length !== 1) {
    throw new InvalidDecisionError(
      kinds.length === 0
        ? 'decision has none of remote, noop, close'
        : `decision has more than one of remote, noop, close (${kinds.join(', ')})`,
    );
  }
  const kind = kinds[0]!;
  const allowed = kind === 'remote' ? remoteKeys : kind === 'noop' ? noopKeys : closeKeys;
  for (const key of Object.keys(v)) {
    if (!allowed.has(key)) throw new InvalidDecisionError(`unknown key "${key}" in a ${kind} decision`);
  }
  switch (kind) {
    case 'remote':
      return validateRemote(v);
    case 'noop': {
      if (v.noop !== true) throw new InvalidDecisionError(`noop must be true, got ${describe(v.noop)}`);
      const reply = optionalBytes(v, 'reply');
      return reply === undefined ? { kind } : { kind, reply };
    }
    case 'close': {
      if (v.close === true) return { kind };
      if (typeof v.close !== 'string') {
        throw new InvalidDecisionError(`close must be true or a string, got ${describe(v.close)}`);
      }
      return { kind, reply: bytes(v.close, 'close') };
    }
  }
}

function validateRemote(v: Record<string, unknown>): RemoteDecision {
  const list = typeof v.remote === 'string' ? [v.remote] : v.remote;
  if (!Array.isArray(list)) {
    throw new InvalidDecisionError(`remote must be "host:port" or an array of them, got ${describe(v.remote)}`);
  }
  if (list.length < 1 || list.length > decisionLimits.maxRemotes) {
    throw new InvalidDecisionError(`remote must list 1 to ${decisionLimits.maxRemotes} backends, got ${list.length}`);
  }
  const remotes = list.map((item: unknown): Endpoint => {
    if (typeof item !== 'string') throw new InvalidDecisionError(`remote entries must be strings, got ${describe(item)}`);
    if (item.length > decisionLimits.maxRemoteChars) {
      throw new InvalidDecisionError(`remote "${item.slice(0, 40)}…" is longer than ${decisionLimits.maxRemoteChars} characters`);
    }
    const endpoint = parseEndpoint(item);
    if (typeof endpoint === 'string') throw new InvalidDecisionError(`remote ${endpoint}`);
    return endpoint;
  });
  const decision: {
    -readonly [K in keyof RemoteDecision]: RemoteDecision[K];
  } = { kind: 'remote', remotes };
  const data = optionalBytes(v, 'data');
  if (data !== undefined) decision.data = data;
  const reply = optionalBytes(v, 'reply');
  if (reply !== undefined) decision.reply = reply;
  const connectTimeout = optionalSeconds(v, 'connectTimeout');
  if (connectTimeout !== undefined) decision.connectTimeoutMs = connectTimeout;
  const inactivityTimeout = optionalSeconds(v, 'inactivityTimeout');
  if (inactivityTimeout !== undefined) decision.inactivityTimeoutMs = inactivityTimeout;
  if (Object.hasOwn(v, 'proxyProtocol')) {
    if (v.proxyProtocol !== 1 && v.proxyProtocol !== 2) {
      throw new InvalidDecisionError(`proxyProtocol must be 1 or 2, got ${describe(v.proxyProtocol)}`);
    }
    decision.proxyProtocol = v.proxyProtocol;
  }
  return decision;
}

function optionalBytes(v: Record<string, unknown>, key: string): string | undefined {
  if (!Object.hasOwn(v, key)) return undefined;
  const value = v[key];
  if (typeof value !== 'string') throw new InvalidDecisionError(`${key} must be a string, got ${describe(value)}`);
  return bytes(value, key);
}

function bytes(value: string, key: string): string {
  if (value.length > decisionLimits.maxStringChars) {
    throw new InvalidDecisionError(`${key} is longer than ${decisionLimits.maxStringChars} characters`);
  }
  if (notLatin1.test(value)) throw new InvalidDecisionError(`${key} has a character above U+00FF`);
  return value;
}

function optionalSeconds(v: Record<string, unknown>, key: string): number | undefined {
  if (!Object.hasOwn(v, key)) return undefined;
  const value = v[key];
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new InvalidDecisionError(`${key} must be a finite number of seconds > 0, got ${describe(value)}`);
  }
  return value * 1000;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  switch (typeof value) {
    case 'string':
      return value.length > 40 ? `a string "${value.slice(0, 40)}…"` : `"${value}"`;
    case 'number':
    case 'boolean':
      return String(value);
    default:
      return typeof value;
  }
}

/** A decision as a router writes it (CONTRACT §2), for the dry-run answer. */
export function decisionView(d: Decision): Record<string, unknown> {
  switch (d.kind) {
    case 'remote': {
      const remotes = d.remotes.map(formatEndpoint);
      const view: Record<string, unknown> = { remote: remotes.length === 1 ? remotes[0] : remotes };
      if (d.data !== undefined) view.data = d.data;
      if (d.reply !== undefined) view.reply = d.reply;
      if (d.connectTimeoutMs !== undefined) view.connectTimeout = d.connectTimeoutMs / 1000;
      if (d.inactivityTimeoutMs !== undefined) view.inactivityTimeout = d.inactivityTimeoutMs / 1000;
      if (d.proxyProtocol !== undefined) view.proxyProtocol = d.proxyProtocol;
      return view;
    }
    case 'noop':
      return d.reply === undefined ? { noop: true } : { noop: true, reply: d.reply };
    case 'close':
      return { close: d.reply ?? true };
  }
}
