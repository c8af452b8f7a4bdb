/**
 * `switchyard serve`'s settings: embedded defaults, then the configuration file, then the
 * command line's flags. The file is JSON: its keys are the options' names (`admin`, `ports`,
 * `bind`, `allow`, `sandboxWorkers`, …, `logLevel`) and `limits`, keyed as the admin API keys
 * a tenant's limits (`routerTimeoutMs`, …). Each value is checked by the same parser as its flag.
 */
import type { Command, Option } from 'commander';
import { limitTable } from './config.js';

export type Source = 'flag' | 'env' | 'file' | 'default';

export interface Resolved {
  /** Option values by commander attribute name, as the action receives them. */
  readonly values: Readonly<Record<string, unknown>>;
  /** Where each setting came from, by its configuration-file key (`limits.routerTimeoutMs`). */
  readonly sources: Readonly<Record<string, Source>>;
  /** The settings as the operator reads them: configuration-file keys, values as they were given or defaulted. */
  readonly view: Readonly<Record<string, unknown>>;
}

export class SettingsError extends Error {}

/** commander's attribute name for a flag: --router-timeout → routerTimeout. */
export function attributeOf(flag: string): string {
  return flag.replace(/^--/, '').replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** Options that are not settings: where the file is, and the data directory it may be in. */
const notSettings = new Set(['help', 'configFile', 'data']);

/**
 * Resolves `command`'s parsed options against a configuration file's parsed JSON (or none).
 * Throws SettingsError naming the file's key when a value or a key is wrong.
 */
export function resolveSettings(command: Command, file: unknown): Resolved {
  if (file !== undefined && (typeof file !== 'object' || file === null || Array.isArray(file))) throw new SettingsError('the configuration must be a JSON object');
  const top = (file ?? {}) as Record<string, unknown>;
  const limits = top.limits ?? {};
  if (typeof limits !== 'object' || limits === null || Array.isArray(limits)) throw new SettingsError('limits must be an object');
  const values: Record<string, unknown> = { ...command.opts() };
  const sources: Record<string, Source> = {};
  const view: Record<string, unknown> = {};
  const known = new Set<string>(['limits']);
  const knownLimits = new Set<string>();

  for (const option of command.options as readonly Option[]) {
    const attr = option.attributeName();
    if (notSettings.has(attr)) continue;
    const limit = limitTable.find((l) => attributeOf(l.flag) === attr);
    const key = limit === undefined ? attr : `limits.${limit.key}`;
    if (limit === undefined) known.add(attr);
    else knownLimits.add(limit.key);
    const given = limit === undefined ? top[attr] : (limits as Record<string, unknown>)[limit.key];
    const source = command.getOptionValueSource(attr);
    if (source === 'cli') sources[key] = 'flag';
    // An environment variable (SWITCHYARD_STORE) is set for this process, like a flag: it wins over the file.
    else if (source === 'env') sources[key] = 'env';
    else if (given !== undefined) {
      values[attr] = parseGiven(option, key, given);
      sources[key] = 'file';
    } else sources[key] = 'default';
    view[key] = redact(sources[key] === 'file' ? given : display(values[attr]));
  }
  for (const k of Object.keys(top)) if (!known.has(k)) throw new SettingsError(`unknown key "${k}"; known: ${[...known].join(', ')}`);
  for (const k of Object.keys(limits)) if (!knownLimits.has(k)) throw new SettingsError(`unknown limit "${k}"; known: ${[...knownLimits].join(', ')}`);
  return { values, sources, view };
}

/** A file value through its flag's parser: numbers for numeric options, strings otherwise, an array of strings for repeatable ones. */
function parseGiven(option: Option, key: string, given: unknown): unknown {
  const fallback = option.defaultValue as unknown;
  try {
    if (Array.isArray(fallback) && option.attributeName() === 'allow') {
      if (!Array.isArray(given) || given.some((g) => typeof g !== 'string')) throw new SettingsError('must be an array of strings');
      return (given as string[]).reduce<unknown>((acc, g) => option.parseArg!(g, acc), []);
    }
    if (typeof fallback === 'number') {
      if (typeof given !== 'number') throw new SettingsError('must be a number');
      return option.parseArg === undefined ? given : option.parseArg(String(given), fallback);
    }
    if (typeof given !== 'string') throw new SettingsError('must be a string');
    return option.parseArg === undefined ? given : option.parseArg(given, fallback);
  } catch (err) {
    throw new SettingsError(`${key}: ${(err as Error).message}`);
  }
}

/** A parsed default as the operator writes it: { host, port } as HOST:PORT, [lo, hi] as LO-HI, rules as their text. */
function display(value: unknown): unknown {
  if (Array.isArray(value)) {
    if (value.length === 2 && value.every((v) => typeof v === 'number')) return `${value[0]}-${value[1]}`;
    return value.map((v) => (typeof v === 'object' && v !== null && 'text' in v ? (v as { text: string }).text : v));
  }
  if (typeof value === 'object' && value !== null && 'host' in value && 'port' in value) {
    const { host, port } = value as { host: string; port: number };
    return `${host.includes(':') ? `[${host}]` : host}:${port}`;
  }
  return value;
}

/** A URL's password is never shown (the store's, in logs and GET /v1/config). */
function redact(value: unknown): unknown {
  if (typeof value !== 'string' || !/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) return value;
  try {
    const u = new URL(value);
    if (u.password === '') return value;
    u.password = '***';
    return u.toString();
  } catch {
    return value;
  }
}

/** What changed between two resolutions, by configuration-file key. */
export function changedKeys(before: Resolved, after: Resolved): string[] {
  return Object.keys(after.view).filter((k) => JSON.stringify(before.view[k]) !== JSON.stringify(after.view[k]));
}
