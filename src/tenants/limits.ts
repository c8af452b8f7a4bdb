import type { Limits } from '../config.js';
import { type AllowRule, parseAllowRule } from '../routing/policy.js';

/** The per-tenant limits an operator may set (CONTRACT §5), with the values each accepts. */
const ranges = {
  routerTimeoutMs: [1, 60_000],
  memoryMb: [8, 4096],
  maxBufferBytes: [1, 64 * 1024 * 1024],
  decisionTimeoutMs: [1, 3_600_000],
  maxConnections: [0, 10_000_000],
  connectTimeoutMs: [1, 3_600_000],
} as const satisfies Partial<Record<keyof Limits, readonly [number, number]>>;
type NumericKey = keyof typeof ranges;

/** A tenant's limits as stored: only what the operator set. */
export type LimitOverrides = Partial<Record<NumericKey, number>> & { allow?: string[] };

/** What a tenant runs with: the service's defaults, overridden. */
export interface EffectiveLimits {
  readonly limits: Limits;
  readonly allow: readonly AllowRule[];
  /** As the admin API shows them. */
  readonly view: Record<NumericKey, number> & { allow: string[] };
}

/**
 * Applies a `PUT …/limits` body to the current overrides. Keys that are present replace the
 * current value; `null` resets a key to the service default; other keys are kept. Returns the
 * new overrides, or a reason string for a 400.
 */
export function updateOverrides(current: LimitOverrides, body: unknown): LimitOverrides | string {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'limits must be a JSON object';
  const next: LimitOverrides = { ...current };
  for (const [key, value] of Object.entries(body)) {
    if (key === 'allow') {
      if (value === null) {
        delete next.allow;
        continue;
      }
      if (!Array.isArray(value) || value.length > 256) return 'allow must be an array of at most 256 rules';
      for (const rule of value) {
        if (typeof rule !== 'string') return 'allow rules must be strings';
        const parsed = parseAllowRule(rule);
        if (typeof parsed === 'string') return `allow: ${parsed}`;
      }
      next.allow = [...(value as string[])];
      continue;
    }
    if (!Object.hasOwn(ranges, key)) return `unknown limit "${key}"; known: ${[...Object.keys(ranges), 'allow'].join(', ')}`;
    const k = key as NumericKey;
    if (value === null) {
      delete next[k];
      continue;
    }
    const [lo, hi] = ranges[k];
    if (typeof value !== 'number' || !Number.isInteger(value) || value < lo || value > hi) {
      return `${key} must be an integer from ${lo} to ${hi}`;
    }
    next[k] = value;
  }
  return next;
}

/** Reads stored overrides back, keeping only what is still valid. */
export function storedOverrides(stored: Readonly<Record<string, unknown>>): LimitOverrides {
  const result = updateOverrides({}, stored);
  return typeof result === 'string' ? {} : result;
}

export function effectiveLimits(defaults: Limits, o: LimitOverrides): EffectiveLimits {
  const limits: Limits = { ...defaults, ...o };
  const allowText = o.allow ?? [];
  const allow = allowText.map((t) => parseAllowRule(t)).filter((r): r is AllowRule => typeof r !== 'string');
  const view = {
    routerTimeoutMs: limits.routerTimeoutMs,
    memoryMb: limits.memoryMb,
    maxBufferBytes: limits.maxBufferBytes,
    decisionTimeoutMs: limits.decisionTimeoutMs,
    maxConnections: limits.maxConnections,
    connectTimeoutMs: limits.connectTimeoutMs,
    allow: [...allowText],
  };
  return { limits, allow, view };
}
