import { checkLimit, limitTable, type LimitSpec, type Limits } from '../config.js';
import { type AllowRule, parseAllowRule } from '../routing/policy.js';

/** The per-tenant limits an operator may set (CONTRACT §5): config.ts's table, where `tenant` is set. */
type TenantSpec = Extract<LimitSpec, { tenant: true }>;
const tenantLimits = new Map<string, TenantSpec>(limitTable.filter((l): l is TenantSpec => l.tenant).map((l) => [l.key, l]));
type NumericKey = TenantSpec['key'];

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
    const spec = tenantLimits.get(key);
    if (spec === undefined) return `unknown limit "${key}"; known: ${[...tenantLimits.keys(), 'allow'].join(', ')}`;
    if (value === null) {
      delete next[spec.key];
      continue;
    }
    const wrong = checkLimit(spec, value);
    if (wrong !== undefined) return wrong;
    next[spec.key] = value as number;
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
