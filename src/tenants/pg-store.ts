/**
 * TenantStore on PostgreSQL, shared by every node of a cluster (`switchyard serve --store
 * postgres://…`).
 *
 * Durability and atomicity are PostgreSQL's: every method is one transaction, and a resolved
 * promise means it committed. Every write also bumps the cluster's revision and records a Change
 * (revision, tenant, kind) in the same transaction, and NOTIFYs the revision, so that other nodes
 * apply it (./changes.ts). Connections come from a bounded pool (node-postgres); subscribe() holds
 * one more connection for LISTEN.
 *
 * A failure to reach the server (refused, reset, terminated, pool wait timed out) is a
 * StoreUnavailableError; any other failure of the server is a StoreError or passes through.
 */
import pg from 'pg';
import { CHANGE_CHANNEL, CHANGES_KEPT, MIGRATION_LOCK, MIGRATIONS } from './pg-schema.js';
import {
  type Change,
  type ChangeKind,
  type ClusterStore,
  isPlainObject,
  limitsJson,
  rolloutOf,
  nextVersion,
  rolloutPercent,
  type RouterVersionInfo,
  versionInfo,
  StoreClosedError,
  StoreConflictError,
  StoreError,
  StoreUnavailableError,
  type Subscription,
  TenantNotFoundError,
  type NewTenant,
  type RouterVersion,
  type StoreSnapshot,
  type TenantRecord,
} from './store.js';

export interface PgStoreOptions {
  /** `postgres://user:password@host:port/database` (libpq's PG* environment variables fill in what it leaves out). */
  readonly url: string;
  /** Pool size: connections this node opens at most for queries (default 4; LISTEN takes one more). */
  readonly poolSize?: number;
  /** How long a query waits for a pool connection, and a connection attempt for the server (default 3 s). */
  readonly connectTimeoutMs?: number;
  /** A query without an answer for this long fails as unavailable (default 15 s). */
  readonly queryTimeoutMs?: number;
  /** `application_name` of the connections, as pg_stat_activity shows it. */
  readonly applicationName?: string;
}

export const pgStoreDefaults = { poolSize: 4, connectTimeoutMs: 3000, queryTimeoutMs: 15_000, applicationName: 'switchyard' } as const;

interface TenantRow {
  id: string;
  name: string;
  port: number;
  limits: unknown;
  last_version: number;
  live_version: number | null;
  candidate_version: number | null;
  candidate_percent: number | null;
  created_at: Date;
}

const TENANT_COLUMNS = 'id, name, port, limits, last_version, live_version, candidate_version, candidate_percent, created_at';

/** SQLSTATE classes and codes that mean "the server is not there" rather than "the query is wrong". */
function isUnavailable(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) {
    return code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03' || code === '53300';
  }
  // No SQLSTATE: a socket error (ECONNREFUSED, ECONNRESET, …), a terminated connection or a
  // pool that could not connect in time.
  return err instanceof Error && !(err instanceof StoreError) && !(err instanceof TypeError) && !(err instanceof RangeError);
}

function storeFailure(err: unknown): unknown {
  if (err instanceof StoreError) return err;
  if (isUnavailable(err)) return new StoreUnavailableError(`the PostgreSQL store is unavailable: ${(err as Error).message}`, { cause: err });
  return err;
}

/** A URL with its password replaced, for logs and GET /v1/config. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString();
  } catch {
    return url.replace(/:[^:@/]*@/, ':***@');
  }
}

export class PgTenantStore implements ClusterStore {
  readonly clustered = true as const;
  readonly #o: Required<PgStoreOptions>;
  #pool: pg.Pool | undefined;
  readonly #subscriptions = new Set<pg.Client>();

  private constructor(pool: pg.Pool, options: Required<PgStoreOptions>) {
    this.#pool = pool;
    this.#o = options;
  }

  /** Connects, and creates or migrates the schema (under an advisory lock). Rejects with StoreUnavailableError when the server cannot be reached. */
  static async open(options: PgStoreOptions): Promise<PgTenantStore> {
    const o: Required<PgStoreOptions> = { ...pgStoreDefaults, ...options };
    const pool = new pg.Pool({
      connectionString: o.url,
      max: o.poolSize,
      connectionTimeoutMillis: o.connectTimeoutMs,
      query_timeout: o.queryTimeoutMs,
      idleTimeoutMillis: 30_000,
      keepAlive: true,
      application_name: o.applicationName,
    });
    // An idle connection that the server closes (a restart) is an 'error' of the pool: the pool
    // drops it and opens another when needed. Without a listener it would end the process.
    pool.on('error', () => undefined);
    const store = new PgTenantStore(pool, o);
    try {
      await store.#migrate();
    } catch (err) {
      await pool.end();
      throw storeFailure(err);
    }
    return store;
  }

  async #migrate(): Promise<void> {
    const c = await this.#open().connect();
    const onError = (): void => undefined; // its failure is the failed query's
    c.on('error', onError);
    try {
      await c.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK.toString()]);
      try {
        await c.query('CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())');
        const r = await c.query<{ v: number | null }>('SELECT max(version) AS v FROM schema_version');
        const current = r.rows[0]?.v ?? 0;
        if (current > MIGRATIONS.length) {
          throw new StoreError('ERR_STORE_SCHEMA', `the database has schema version ${current}; this Switchyard knows up to ${MIGRATIONS.length} (was it written by a newer release?)`);
        }
        for (let version = current + 1; version <= MIGRATIONS.length; version++) {
          await c.query('BEGIN');
          try {
            await c.query(MIGRATIONS[version - 1] ?? '');
            await c.query('INSERT INTO schema_version (version) VALUES ($1)', [version]);
            await c.query('COMMIT');
          } catch (err) {
            await c.query('ROLLBACK').catch(() => undefined);
            throw err;
          }
        }
      } finally {
        await c.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK.toString()]).catch(() => undefined);
      }
    } finally {
      c.off('error', onError);
      c.release();
    }
  }

  async createTenant(tenant: NewTenant): Promise<TenantRecord> {
    return this.#transaction(async (c) => {
      // Checked first so that the error names the field; the unique constraints remain the rule.
      const taken = await c.query<{ name: boolean; port: boolean; hash: boolean }>(
        'SELECT bool_or(name = $1) AS name, bool_or(port = $2) AS port, bool_or(token_hash = $3) AS hash FROM tenants WHERE name = $1 OR port = $2 OR token_hash = $3',
        [tenant.name, tenant.port, tenant.tokenHash],
      );
      const t = taken.rows[0];
      if (t?.name === true) throw new StoreConflictError('name', `the name ${JSON.stringify(tenant.name)} is taken`);
      if (t?.port === true) throw new StoreConflictError('port', `port ${tenant.port} is taken`);
      if (t?.hash === true) throw new StoreConflictError('tokenHash', 'the token hash is taken');
      let row: TenantRow | undefined;
      try {
        const r = await c.query<TenantRow>(`INSERT INTO tenants (name, port, token_hash) VALUES ($1, $2, $3) RETURNING ${TENANT_COLUMNS}`, [tenant.name, tenant.port, tenant.tokenHash]);
        row = r.rows[0];
      } catch (err) {
        throw conflictOf(err, tenant) ?? err;
      }
      if (row === undefined) throw new StoreError('ERR_STORE_CORRUPT', 'INSERT … RETURNING returned no row');
      await recordChange(c, tenant.name, 'create');
      return toRecord(row);
    });
  }

  async getTenant(name: string): Promise<TenantRecord | undefined> {
    const r = await this.#query<TenantRow>(`SELECT ${TENANT_COLUMNS} FROM tenants WHERE name = $1`, [name]);
    return r.rows[0] === undefined ? undefined : toRecord(r.rows[0]);
  }

  async listTenants(): Promise<TenantRecord[]> {
    // COLLATE "C": byte order, as SQLite sorts, whatever the database's collation.
    const r = await this.#query<TenantRow>(`SELECT ${TENANT_COLUMNS} FROM tenants ORDER BY name COLLATE "C"`);
    return r.rows.map(toRecord);
  }

  async tenantByTokenHash(tokenHash: string): Promise<TenantRecord | undefined> {
    const r = await this.#query<TenantRow>(`SELECT ${TENANT_COLUMNS} FROM tenants WHERE token_hash = $1`, [tokenHash]);
    return r.rows[0] === undefined ? undefined : toRecord(r.rows[0]);
  }

  async deleteTenant(name: string): Promise<boolean> {
    return this.#transaction(async (c) => {
      // ON DELETE CASCADE removes its router versions and table in the same statement.
      const r = await c.query('DELETE FROM tenants WHERE name = $1', [name]);
      if (r.rowCount === 0) return false;
      await recordChange(c, name, 'delete');
      return true;
    });
  }

  async addRouterVersion(name: string, source: string, keep?: number, rollout?: { readonly percent: number }): Promise<number> {
    return this.#transaction(async (c) => {
      const tenant = await tenantRow(c, name);
      const { version, live, candidate, percent, pruneBelow } = nextVersion(tenant, rollout, keep);
      await c.query('INSERT INTO router_versions (tenant_id, version, source) VALUES ($1, $2, $3)', [tenant.id, version, Buffer.from(source, 'utf8')]);
      await c.query('UPDATE tenants SET last_version = $1, live_version = $2, candidate_version = $3, candidate_percent = $4 WHERE id = $5', [version, live, candidate, percent, tenant.id]);
      if (pruneBelow !== undefined) {
        await c.query('DELETE FROM router_versions WHERE tenant_id = $1 AND version <= $2 AND version IS DISTINCT FROM $3', [tenant.id, pruneBelow, live]);
      }
      await recordChange(c, name, 'router');
      return version;
    });
  }

  async rollbackRouter(name: string): Promise<number | undefined> {
    return this.#transaction(async (c) => {
      const tenant = await tenantRow(c, name);
      if (tenant.live_version === null) return undefined;
      if (tenant.candidate_version !== null) {
        await c.query('UPDATE tenants SET candidate_version = NULL, candidate_percent = NULL WHERE id = $1', [tenant.id]);
        await recordChange(c, name, 'router');
        return tenant.live_version;
      }
      const r = await c.query<{ v: number | null }>('SELECT max(version) AS v FROM router_versions WHERE tenant_id = $1 AND version < $2', [tenant.id, tenant.live_version]);
      const previous = r.rows[0]?.v ?? null;
      if (previous === null) return undefined;
      await c.query('UPDATE tenants SET live_version = $1 WHERE id = $2', [previous, tenant.id]);
      await recordChange(c, name, 'router');
      return previous;
    });
  }

  async promoteRouter(name: string, percent?: number): Promise<number | undefined> {
    const share = percent === undefined || percent === 100 ? null : rolloutPercent(percent);
    return this.#transaction(async (c) => {
      const tenant = await tenantRow(c, name);
      const candidate = tenant.candidate_version;
      if (candidate === null) return undefined;
      if (share === null) await c.query('UPDATE tenants SET live_version = $1, candidate_version = NULL, candidate_percent = NULL WHERE id = $2', [candidate, tenant.id]);
      else await c.query('UPDATE tenants SET candidate_percent = $1 WHERE id = $2', [share, tenant.id]);
      await recordChange(c, name, 'router');
      return candidate;
    });
  }

  async liveRouter(name: string): Promise<RouterVersion | undefined> {
    return plain((await this.#versionRows(name, 'v.version = t.live_version'))[0]);
  }

  async rolloutRouter(name: string): Promise<(RouterVersion & { readonly percent: number }) | undefined> {
    const [v] = await this.#versionRows(name, 'v.version = t.candidate_version');
    return v?.percent == null ? undefined : { version: v.version, source: v.source, createdAt: v.createdAt, percent: v.percent };
  }

  async routerVersion(name: string, version: number): Promise<RouterVersion | undefined> {
    return plain((await this.#versionRows(name, 'v.version = $2', [version]))[0]);
  }

  async listRouterVersions(name: string): Promise<RouterVersionInfo[]> {
    return (await this.#versionRows(name, 'true')).map((v) => versionInfo(v.version, v.source, v.createdAt));
  }

  /** The versions of tenant `name` that `where` selects (`v` is router_versions, `t` tenants), newest first, with the rollout's share. */
  async #versionRows(name: string, where: string, values: unknown[] = []): Promise<(RouterVersion & { percent: number | null })[]> {
    const r = await this.#query<{ version: number; source: Buffer; created_at: Date; percent: number | null }>(
      `SELECT v.version, v.source, v.created_at, t.candidate_percent AS percent FROM tenants t
       JOIN router_versions v ON v.tenant_id = t.id
       WHERE t.name = $1 AND ${where} ORDER BY v.version DESC`,
      [name, ...values],
    );
    return r.rows.map((row) => ({ version: row.version, source: row.source.toString('utf8'), createdAt: row.created_at.toISOString(), percent: row.percent }));
  }

  async setTable(name: string, json: string): Promise<void> {
    await this.#transaction(async (c) => {
      const tenant = await tenantRow(c, name);
      await c.query(
        `INSERT INTO routing_tables (tenant_id, json, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (tenant_id) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at`,
        [tenant.id, Buffer.from(json, 'utf8')],
      );
      await recordChange(c, name, 'table');
    });
  }

  async getTable(name: string): Promise<string | undefined> {
    const r = await this.#query<{ json: Buffer }>('SELECT r.json FROM tenants t JOIN routing_tables r ON r.tenant_id = t.id WHERE t.name = $1', [name]);
    return r.rows[0]?.json.toString('utf8');
  }

  async setLimits(name: string, limits: Readonly<Record<string, unknown>>): Promise<void> {
    const json = limitsJson(limits);
    await this.#transaction(async (c) => {
      const tenant = await tenantRow(c, name);
      await c.query('UPDATE tenants SET limits = $1::jsonb WHERE id = $2', [json, tenant.id]);
      await recordChange(c, name, 'limits');
    });
  }

  async revision(): Promise<number> {
    const r = await this.#query<{ revision: string }>('SELECT revision FROM cluster');
    return Number(r.rows[0]?.revision ?? 0);
  }

  async changesAfter(revision: number, limit: number): Promise<{ changes: Change[]; complete: boolean }> {
    return this.#transaction(async (c) => {
      const r = await c.query<{ revision: string; tenant: string; kind: ChangeKind }>(
        'SELECT revision, tenant, kind FROM changes WHERE revision > $1 ORDER BY revision LIMIT $2',
        [revision, limit],
      );
      const changes = r.rows.map((row) => ({ revision: Number(row.revision), tenant: row.tenant, kind: row.kind }));
      const first = changes[0];
      // Revisions have no gaps: the next one missing means it was pruned, unless nothing came after.
      if (first !== undefined) return { changes, complete: first.revision === revision + 1 };
      const now = await c.query<{ revision: string }>('SELECT revision FROM cluster');
      return { changes, complete: Number(now.rows[0]?.revision ?? 0) <= revision };
    }, 'snapshot');
  }

  async snapshot(): Promise<StoreSnapshot> {
    return this.#transaction(async (c) => {
      const head = await c.query<{ revision: string }>('SELECT revision FROM cluster');
      const r = await c.query<TenantRow & { json: Buffer | null; version: number | null; source: Buffer | null; v_created_at: Date | null }>(
        `SELECT ${TENANT_COLUMNS.split(', ').map((col) => `t.${col}`).join(', ')}, r.json, v.version, v.source, v.created_at AS v_created_at
         FROM tenants t
         LEFT JOIN routing_tables r ON r.tenant_id = t.id
         LEFT JOIN router_versions v ON v.tenant_id = t.id AND v.version = t.live_version
         ORDER BY t.name COLLATE "C"`,
      );
      return {
        revision: Number(head.rows[0]?.revision ?? 0),
        tenants: r.rows.map((row) => ({
          record: toRecord(row),
          table: row.json?.toString('utf8'),
          live: row.version === null || row.source === null || row.v_created_at === null ? undefined : { version: row.version, source: row.source.toString('utf8'), createdAt: row.v_created_at.toISOString() },
        })),
      };
    }, 'snapshot');
  }

  async recordKill(name: string): Promise<number> {
    return this.#transaction(async (c) => {
      await tenantRow(c, name);
      return recordChange(c, name, 'kill');
    });
  }

  async subscribe(onNotify: (revision: number) => void, onLost: (err: Error) => void): Promise<Subscription> {
    this.#open();
    const client = new pg.Client({
      connectionString: this.#o.url,
      connectionTimeoutMillis: this.#o.connectTimeoutMs,
      query_timeout: this.#o.queryTimeoutMs,
      keepAlive: true,
      keepAliveInitialDelayMillis: 5000,
      application_name: `${this.#o.applicationName} listen`,
    });
    let lost = false;
    const lose = (err: Error): void => {
      if (lost) return;
      lost = true;
      this.#subscriptions.delete(client);
      client.removeAllListeners('notification');
      void client.end().catch(() => undefined);
      onLost(err);
    };
    client.on('error', lose);
    client.on('end', () => lose(new Error('the LISTEN connection was closed')));
    try {
      await client.connect();
      await client.query(`LISTEN ${CHANGE_CHANNEL}`);
    } catch (err) {
      lost = true;
      client.removeAllListeners('end');
      await client.end().catch(() => undefined);
      throw storeFailure(err);
    }
    client.on('notification', (m) => {
      if (m.channel === CHANGE_CHANNEL) onNotify(Number(m.payload));
    });
    this.#subscriptions.add(client);
    return {
      close: async () => {
        lost = true;
        this.#subscriptions.delete(client);
        client.removeAllListeners('end');
        client.removeAllListeners('notification');
        await client.end().catch(() => undefined);
      },
    };
  }

  /** A query outside a transaction; failures mapped (StoreUnavailableError). */
  async #query<R extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>> {
    const pool = this.#open();
    try {
      return await pool.query<R>(text, values);
    } catch (err) {
      throw storeFailure(err);
    }
  }

  /**
   * Runs `fn` in one transaction on a pool connection; a connection broken meanwhile is discarded,
   * not reused. `snapshot`: read only, and every statement sees the same snapshot (REPEATABLE
   * READ), so that two reads agree with each other.
   */
  async #transaction<T>(fn: (c: pg.PoolClient) => Promise<T>, kind: 'write' | 'snapshot' = 'write'): Promise<T> {
    const pool = this.#open();
    let c: pg.PoolClient;
    try {
      c = await pool.connect();
    } catch (err) {
      throw storeFailure(err);
    }
    let broken: Error | undefined;
    // A checked-out client whose server goes away emits 'error' besides failing its query: kept
    // here (the query's failure is what is reported), never an uncaught exception.
    const onError = (err: Error): void => {
      broken = err;
    };
    c.on('error', onError);
    try {
      await c.query(kind === 'write' ? 'BEGIN' : 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const result = await fn(c);
      await c.query('COMMIT');
      return result;
    } catch (err) {
      await c.query('ROLLBACK').catch((e: unknown) => {
        broken = e as Error;
      });
      throw storeFailure(err);
    } finally {
      c.off('error', onError);
      c.release(broken);
    }
  }

  async close(): Promise<void> {
    const pool = this.#pool;
    this.#pool = undefined;
    if (pool === undefined) return;
    await Promise.all([...this.#subscriptions].map((c) => c.end().catch(() => undefined)));
    this.#subscriptions.clear();
    await pool.end();
  }

  /** Connections of this node's pool: [total, idle, waiting] (for metrics and the bench). */
  get poolFigures(): { total: number; idle: number; waiting: number } {
    const p = this.#pool;
    return { total: p?.totalCount ?? 0, idle: p?.idleCount ?? 0, waiting: p?.waitingCount ?? 0 };
  }

  #open(): pg.Pool {
    if (this.#pool === undefined) throw new StoreClosedError();
    return this.#pool;
  }
}

/**
 * Records a change in the transaction of `c`: bumps the cluster's revision (its row lock orders
 * concurrent writers by commit), adds the change, NOTIFYs it at commit, and prunes old changes.
 */
async function recordChange(c: pg.PoolClient, tenant: string, kind: ChangeKind): Promise<number> {
  const r = await c.query<{ revision: string }>('UPDATE cluster SET revision = revision + 1 RETURNING revision');
  const revision = Number(r.rows[0]?.revision);
  await c.query('INSERT INTO changes (revision, tenant, kind) VALUES ($1, $2, $3)', [revision, tenant, kind]);
  await c.query('SELECT pg_notify($1, $2)', [CHANGE_CHANNEL, String(revision)]);
  if (revision % 100 === 0) await c.query('DELETE FROM changes WHERE revision <= $1', [revision - CHANGES_KEPT]);
  return revision;
}

/** A version without the rollout's share its row came with. */
function plain(v: (RouterVersion & { percent: number | null }) | undefined): RouterVersion | undefined {
  return v === undefined ? undefined : { version: v.version, source: v.source, createdAt: v.createdAt };
}

/** The tenant's row, locked for this transaction; TenantNotFoundError when there is none. */
async function tenantRow(c: pg.PoolClient, name: string): Promise<TenantRow> {
  const r = await c.query<TenantRow>(`SELECT ${TENANT_COLUMNS} FROM tenants WHERE name = $1 FOR UPDATE`, [name]);
  const row = r.rows[0];
  if (row === undefined) throw new TenantNotFoundError(name);
  return row;
}

/** A unique violation of a concurrent insert, as the field it is about. */
function conflictOf(err: unknown, tenant: NewTenant): StoreConflictError | undefined {
  const e = err as { code?: string; constraint?: string };
  if (e.code !== '23505') return undefined;
  if (e.constraint === 'tenants_port_key') return new StoreConflictError('port', `port ${tenant.port} is taken`);
  if (e.constraint === 'tenants_token_hash_key') return new StoreConflictError('tokenHash', 'the token hash is taken');
  return new StoreConflictError('name', `the name ${JSON.stringify(tenant.name)} is taken`);
}

function toRecord(row: TenantRow): TenantRecord {
  if (!isPlainObject(row.limits)) throw new StoreError('ERR_STORE_CORRUPT', `the stored limits of ${row.name} are not an object`);
  return { name: row.name, port: row.port, limits: row.limits, liveVersion: row.live_version, ...rolloutOf(row.candidate_version, row.candidate_percent), createdAt: row.created_at.toISOString() };
}

