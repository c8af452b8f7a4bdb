/**
 * The persistent state of hosting mode (CONTRACT §4, §5): tenants, their router versions,
 * routing tables, limits and token hashes.
 *
 * Every method returns a Promise so that the implementation over a network database
 * (./pg-store.ts, PostgreSQL, shared by the nodes of a cluster) sits behind the same interface as
 * the embedded one (./sqlite-store.ts). The guarantees every implementation gives:
 *
 * - Durability: a resolved promise means the change is on stable storage; it survives a crash
 *   of the process or of the machine.
 * - Atomicity: each method is one transaction. A crash at any moment leaves the state from
 *   before the call or the state after it, never a mix.
 * - Failures are rejections, never synchronous throws.
 *
 * The store does not validate what the admin API validates (name syntax, port range, limit keys
 * and values, that a table is a JSON object, script size): callers do that first. It does not
 * know about defaults either: `limits` are only the per-tenant values the operator set.
 */
import { createHash } from 'node:crypto';
import { SwitchyardError } from '../errors.js';

/** A tenant as stored. Fresh objects on every call: mutating one changes nothing. */
export interface TenantRecord {
  /** Unique; reusable once the tenant is deleted. */
  readonly name: string;
  /** Unique among tenants; reusable once the tenant is deleted. */
  readonly port: number;
  /** The per-tenant limits (CONTRACT §5) as last set with setLimits; `{}` until then. */
  readonly limits: Readonly<Record<string, unknown>>;
  /** The live router version, or null before the first upload. */
  readonly liveVersion: number | null;
  /**
   * A gradual rollout: a newer version live for `percent` of new connections (1–99), the live
   * version for the rest. Absent when there is none.
   */
  readonly rollout?: Rollout;
  /** ISO 8601, UTC. */
  readonly createdAt: string;
}

/** One accepted router script. */
export interface RouterVersion {
  /** 1, 2, … per tenant, in upload order. */
  readonly version: number;
  readonly source: string;
  /** ISO 8601, UTC: when it was uploaded (not when it last became live). */
  readonly createdAt: string;
}

/** A version in a gradual rollout, and the share of new connections it gets. */
export interface Rollout {
  readonly version: number;
  /** 1–99. */
  readonly percent: number;
}

/** A stored router version, described without its source. */
export interface RouterVersionInfo {
  readonly version: number;
  /** ISO 8601, UTC: when it was uploaded. */
  readonly createdAt: string;
  /** The source's size in bytes (UTF-8). */
  readonly size: number;
  /** The source's SHA-256, hex. */
  readonly sha256: string;
}

export interface NewTenant {
  readonly name: string;
  readonly port: number;
  /** A hash of the tenant's token; the token itself is never stored. Unique among tenants. */
  readonly tokenHash: string;
}

export interface TenantStore {
  /** Rejects with StoreConflictError when the name, the port or the token hash is taken. */
  createTenant(tenant: NewTenant): Promise<TenantRecord>;

  /** undefined when there is no such tenant. */
  getTenant(name: string): Promise<TenantRecord | undefined>;

  /** Every tenant, ordered by name. */
  listTenants(): Promise<TenantRecord[]>;

  /** The tenant whose token has this hash, or undefined. */
  tenantByTokenHash(tokenHash: string): Promise<TenantRecord | undefined>;

  /**
   * Removes the tenant and everything it owns (router versions, table, limits, token hash).
   * Its name and port can be used again; a tenant created again under the same name starts
   * from router version 1. Resolves false when there was no such tenant.
   */
  deleteTenant(name: string): Promise<boolean>;

  /**
   * Stores an accepted router script as the tenant's next version and makes it live, in one
   * transaction. Resolves the new version: 1 for the first upload, then always one more than
   * the highest version the tenant ever had, so a number is never reused (not even after
   * rollbacks). With `keep`, only the `keep` newest versions are kept (in the same transaction);
   * older ones are deleted, but never the live version. Rejects with TenantNotFoundError.
   *
   * With `rollout`, the new version is instead the tenant's rollout at `percent` (1–99): the
   * live version stays live for the other new connections (a rollout before it is replaced).
   * Rejects with StoreError ERR_STORE_INVALID when there is no live version yet. Without it, a
   * rollout in progress ends: the new version is live for every new connection.
   */
  addRouterVersion(name: string, source: string, keep?: number, rollout?: { readonly percent: number }): Promise<number>;

  /**
   * Makes the highest version below the live one live again and resolves it. Twice in a row
   * goes back two versions. Resolves undefined, changing nothing, when there is no earlier
   * version (no upload yet, or version 1 is live). Rejects with TenantNotFoundError.
   * During a rollout, ends it instead: the live version is live for every new connection again,
   * and is what it resolves.
   *
   * Example: uploads 1, 2, 3; rollback → 2; upload → 4 (live); rollback → 3.
   */
  rollbackRouter(name: string): Promise<number | undefined>;

  /**
   * The rollout's version becomes live for every new connection (without `percent`, or with
   * 100), or gets `percent` (1–99) of them. Resolves the rollout's version; undefined, changing
   * nothing, when there is no rollout. Rejects with TenantNotFoundError.
   */
  promoteRouter(name: string, percent?: number): Promise<number | undefined>;

  /** The live router, or undefined when there is no such tenant or nothing was uploaded yet. */
  liveRouter(name: string): Promise<RouterVersion | undefined>;

  /** The rollout's router and share, or undefined when there is none (or no such tenant). */
  rolloutRouter(name: string): Promise<(RouterVersion & { readonly percent: number }) | undefined>;

  /** One kept version, or undefined (no such tenant or version, or pruned). */
  routerVersion(name: string, version: number): Promise<RouterVersion | undefined>;

  /** Every kept version, newest first; [] for no such tenant. */
  listRouterVersions(name: string): Promise<RouterVersionInfo[]>;

  /** Replaces the tenant's routing table, JSON text stored as given. Rejects with TenantNotFoundError. */
  setTable(name: string, json: string): Promise<void>;

  /** The JSON text last given to setTable; undefined when there is no such tenant or no table yet. */
  getTable(name: string): Promise<string | undefined>;

  /**
   * Replaces the tenant's limits with `limits` (already validated and merged by the caller;
   * stored as JSON). Rejects with TenantNotFoundError, or with StoreError when `limits` is not
   * a plain JSON-serialisable object.
   */
  setLimits(name: string, limits: Readonly<Record<string, unknown>>): Promise<void>;

  /** Releases the store. Idempotent. Every later call but close() rejects with StoreClosedError. */
  close(): Promise<void>;
}

/** Any failure of the store. `code` is stable; see the subclasses. */
export class StoreError extends SwitchyardError {
  declare readonly code: StoreErrorCode;
  constructor(code: StoreErrorCode, message: string, options?: ErrorOptions) {
    super(code, message, options);
  }
}

/** Which unique value of a new tenant is already used by another tenant. */
export type ConflictField = 'name' | 'port' | 'tokenHash';

/** createTenant: the name, port or token hash is already taken (the admin API answers 409). */
export class StoreConflictError extends StoreError {
  readonly field: ConflictField;
  constructor(field: ConflictField, message: string) {
    super('ERR_STORE_CONFLICT', message);
    this.field = field;
  }
}

/** A write named a tenant that does not exist (the admin API answers 404). */
export class TenantNotFoundError extends StoreError {
  readonly tenant: string;
  constructor(tenant: string) {
    super('ERR_TENANT_NOT_FOUND', `no tenant named ${JSON.stringify(tenant)}`);
    this.tenant = tenant;
  }
}

/** The store was used after close(). */
export class StoreClosedError extends StoreError {
  constructor() {
    super('ERR_STORE_CLOSED', 'the tenant store is closed');
  }
}

/**
 * The store cannot be reached now (a network database that is down or unreachable). The admin
 * API answers 503: the write was not made, or (when the connection broke during the commit) its
 * outcome is unknown and the change stream applies it if it was.
 */
export class StoreUnavailableError extends StoreError {
  constructor(message: string, options?: ErrorOptions) {
    super('ERR_STORE_UNAVAILABLE', message, options);
  }
}

/**
 * Other StoreError codes:
 * - ERR_STORE_SCHEMA: the data was written by a newer Switchyard (unknown schema version).
 * - ERR_STORE_INVALID: a value the store cannot keep (limits that are not a plain object).
 * - ERR_STORE_CORRUPT: a stored value that does not read back (should never happen).
 * - ERR_STORE_LOCKED: another process has the data directory open.
 */
export type StoreErrorCode =
  | 'ERR_STORE_CONFLICT'
  | 'ERR_TENANT_NOT_FOUND'
  | 'ERR_STORE_CLOSED'
  | 'ERR_STORE_SCHEMA'
  | 'ERR_STORE_INVALID'
  | 'ERR_STORE_CORRUPT'
  | 'ERR_STORE_LOCKED'
  | 'ERR_STORE_UNAVAILABLE';

/** What a change of the cluster's change stream did to its tenant. */
export const ChangeKind = {
  create: 'create',
  delete: 'delete',
  router: 'router',
  table: 'table',
  limits: 'limits',
  /** The kill switch: every node closes the tenant's open connections. */
  kill: 'kill',
} as const;
export type ChangeKind = (typeof ChangeKind)[keyof typeof ChangeKind];

/** One committed write, numbered by the cluster's revision: 1, 2, 3, … without gaps, in commit order. */
export interface Change {
  readonly revision: number;
  readonly tenant: string;
  readonly kind: ChangeKind;
}

/**
 * A store shared by several nodes (PostgreSQL): besides TenantStore, every write also records a
 * Change in the same transaction, and nodes follow them (./changes.ts).
 */
export interface ClusterStore extends TenantStore {
  readonly clustered: true;
  /** The revision of the last committed change (0 before any). */
  revision(): Promise<number>;
  /**
   * Changes after `revision`, oldest first, at most `limit`. `complete` is false when changes
   * right after `revision` were already pruned: the caller must reload everything.
   */
  changesAfter(revision: number, limit: number): Promise<{ changes: Change[]; complete: boolean }>;
  /**
   * Every tenant with its table and live router, and the revision they reflect, read at one
   * moment (one snapshot): what a node loads at start.
   */
  snapshot(): Promise<StoreSnapshot>;
  /** Records the kill switch for `name` as a change; resolves its revision. Rejects with TenantNotFoundError. */
  recordKill(name: string): Promise<number>;
  /** A connection that receives a call of `onNotify` for each committed change, until closed. */
  subscribe(onNotify: (revision: number) => void, onLost: (err: Error) => void): Promise<Subscription>;
}

export interface StoreSnapshot {
  readonly revision: number;
  /** Ordered by name. */
  readonly tenants: readonly { readonly record: TenantRecord; readonly table: string | undefined; readonly live: RouterVersion | undefined }[];
}

export interface Subscription {
  close(): Promise<void>;
}

export function isClusterStore(store: TenantStore): store is ClusterStore {
  return (store as Partial<ClusterStore>).clustered === true;
}

/** Limits as stored: a plain object's JSON, or StoreError ERR_STORE_INVALID. */
export function limitsJson(limits: Readonly<Record<string, unknown>>): string {
  if (!isPlainObject(limits)) throw new StoreError('ERR_STORE_INVALID', 'limits must be a plain object');
  let json: string | undefined;
  try {
    json = JSON.stringify(limits);
  } catch (err) {
    throw new StoreError('ERR_STORE_INVALID', 'limits must be JSON-serialisable', { cause: err });
  }
  if (json === undefined || !isPlainObject(JSON.parse(json))) throw new StoreError('ERR_STORE_INVALID', 'limits must be a plain object');
  return json;
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** A stored version described without its source: its size and SHA-256. */
export function versionInfo(version: number, source: string, createdAt: string): RouterVersionInfo {
  return { version, createdAt, size: Buffer.byteLength(source, 'utf8'), sha256: createHash('sha256').update(source, 'utf8').digest('hex') };
}

/** A rollout's share as the stores keep it: an integer from 1 to 99, or StoreError ERR_STORE_INVALID. */
/**
 * The numbers of a new router version, for both stores: the version, what is live after it (the
 * new one, or in a rollout the one live before), the candidate and its share, and the versions
 * pruned (those at or below `pruneBelow`, but never the live one). Throws when a rollout has
 * nothing live to share new connections with.
 */
export function nextVersion(
  tenant: { readonly last_version: number; readonly live_version: number | null },
  rollout: { readonly percent: number } | undefined,
  keep: number | undefined,
): { version: number; live: number | null; candidate: number | null; percent: number | null; pruneBelow: number | undefined } {
  const percent = rollout === undefined ? null : rolloutPercent(rollout.percent);
  if (percent !== null && tenant.live_version === null) throw new StoreError('ERR_STORE_INVALID', 'a rollout needs a live version to share new connections with');
  const version = tenant.last_version + 1;
  return {
    version,
    live: percent === null ? version : tenant.live_version,
    candidate: percent === null ? null : version,
    percent,
    pruneBelow: keep === undefined ? undefined : version - Math.max(1, keep),
  };
}

export function rolloutPercent(percent: number): number {
  if (!Number.isInteger(percent) || percent < 1 || percent > 99) throw new StoreError('ERR_STORE_INVALID', 'a rollout percent is an integer from 1 to 99');
  return percent;
}

/** A tenant row's rollout columns as the record's `rollout`, absent when there is none. */
export function rolloutOf(version: number | null, percent: number | null): { rollout?: Rollout } {
  return version === null || percent === null ? {} : { rollout: { version, percent } };
}
