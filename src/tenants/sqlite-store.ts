/**
 * TenantStore on an embedded SQLite database: `switchyard.db` in the data directory.
 *
 * Durability: WAL journal with synchronous=FULL, so every commit fsyncs the WAL before the
 * promise resolves. Atomicity: every method runs in one BEGIN IMMEDIATE transaction. Integrity is
 * also enforced by the schema (foreign keys on, unique name / port / token hash, the live version
 * must be a stored version of that tenant, so a half-written state cannot even be committed).
 *
 * better-sqlite3 is synchronous: a write blocks the event loop for the length of its fsync
 * (typically well under 10 ms on local disks). Admin writes are rare, so that is acceptable.
 */
import { closeSync, chmodSync, constants, fsyncSync, mkdirSync, openSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import {
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
  TenantNotFoundError,
  type NewTenant,
  type RouterVersion,
  type TenantRecord,
  type TenantStore,
} from './store.js';

/** The database file inside the data directory. */
export const DB_FILE = 'switchyard.db';

/**
 * Schema migrations, in order: MIGRATIONS[i] takes the schema from version i to i + 1. Append
 * only; never edit a released one. Each runs in one transaction with its row in schema_version.
 */
export const MIGRATIONS: readonly string[] = [
  /* 1 */ `
  CREATE TABLE tenants (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    port INTEGER NOT NULL UNIQUE CHECK (port BETWEEN 1 AND 65535),
    token_hash TEXT NOT NULL UNIQUE,
    limits TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(limits) AND json_type(limits) = 'object'),
    -- the highest version ever uploaded: the next upload is last_version + 1
    last_version INTEGER NOT NULL DEFAULT 0 CHECK (last_version >= 0),
    live_version INTEGER CHECK (live_version BETWEEN 1 AND last_version),
    created_at TEXT NOT NULL,
    FOREIGN KEY (id, live_version) REFERENCES router_versions (tenant_id, version)
  ) STRICT;

  CREATE TABLE router_versions (
    tenant_id INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version INTEGER NOT NULL CHECK (version >= 1),
    source TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, version)
  ) STRICT;

  CREATE TABLE routing_tables (
    tenant_id INTEGER PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    json TEXT NOT NULL,
    updated_at TEXT NOT NULL
  ) STRICT;
  `,
  /* 2: gradual rollouts, a newer version live for a share of new connections */ `
  ALTER TABLE tenants ADD COLUMN candidate_version INTEGER CHECK (candidate_version BETWEEN 1 AND last_version);
  ALTER TABLE tenants ADD COLUMN candidate_percent INTEGER CHECK (candidate_percent BETWEEN 1 AND 99 AND (candidate_version IS NULL) = (candidate_percent IS NULL));
  `,
];

/** The schema version this code writes. */
export const SCHEMA_VERSION = MIGRATIONS.length;

interface TenantRow {
  id: number;
  name: string;
  port: number;
  limits: string;
  last_version: number;
  live_version: number | null;
  candidate_version: number | null;
  candidate_percent: number | null;
  created_at: string;
}

const TENANT_COLUMNS = 'id, name, port, limits, last_version, live_version, candidate_version, candidate_percent, created_at';

export class SqliteTenantStore implements TenantStore {
  #db: Database.Database | undefined;
  readonly path: string;

  private constructor(db: Database.Database, path: string) {
    this.#db = db;
    this.path = path;
  }

  /**
   * Opens (creating when missing) the store in `dataDir`: the directory is created with mode
   * 0700 (an existing one is left as it is), the database file gets mode 0600 (its WAL and
   * shared-memory files inherit it), and the schema is created or migrated.
   */
  static async open(dataDir: string): Promise<SqliteTenantStore> {
    const dir = resolve(dataDir);
    const path = join(dir, DB_FILE);
    createPrivateFile(dir, path);
    const db = new Database(path);
    try {
      db.pragma('foreign_keys = ON');
      // One Switchyard per data directory: the first write takes an exclusive lock it keeps.
      db.pragma('locking_mode = EXCLUSIVE');
      try {
        db.exec('BEGIN IMMEDIATE; COMMIT');
      } catch (err) {
        if ((err as { code?: string }).code?.startsWith('SQLITE_BUSY') === true) {
          throw new StoreError('ERR_STORE_LOCKED', `${dir} is in use by another Switchyard process`);
        }
        throw err;
      }
      const mode = db.pragma('journal_mode = WAL', { simple: true });
      if (mode !== 'wal') throw new StoreError('ERR_STORE_INVALID', `cannot use a WAL journal for ${path} (got ${String(mode)})`);
      db.pragma('synchronous = FULL');
      // 2 = FULL. Checked because a build's compile-time defaults could otherwise weaken it silently.
      if (db.pragma('synchronous', { simple: true }) !== 2) throw new StoreError('ERR_STORE_INVALID', `cannot set synchronous=FULL on ${path}`);
      db.pragma('busy_timeout = 5000');
      // The WAL is cut back to 1 MiB after each checkpoint instead of keeping its largest size.
      db.pragma('journal_size_limit = 1048576');
      migrate(db, path);
    } catch (err) {
      db.close();
      throw err;
    }
    return new SqliteTenantStore(db, path);
  }

  async createTenant(tenant: NewTenant): Promise<TenantRecord> {
    const db = this.#open();
    return db
      .transaction(() => {
        // Checked first so that the error names the field; the unique indexes remain the rule.
        if (db.prepare('SELECT 1 FROM tenants WHERE name = ?').get(tenant.name) !== undefined) {
          throw new StoreConflictError('name', `the name ${JSON.stringify(tenant.name)} is taken`);
        }
        if (db.prepare('SELECT 1 FROM tenants WHERE port = ?').get(tenant.port) !== undefined) {
          throw new StoreConflictError('port', `port ${tenant.port} is taken`);
        }
        if (db.prepare('SELECT 1 FROM tenants WHERE token_hash = ?').get(tenant.tokenHash) !== undefined) {
          throw new StoreConflictError('tokenHash', 'the token hash is taken');
        }
        const row = db
          .prepare<[string, number, string, string], TenantRow>(
            `INSERT INTO tenants (name, port, token_hash, created_at) VALUES (?, ?, ?, ?) RETURNING ${TENANT_COLUMNS}`,
          )
          .get(tenant.name, tenant.port, tenant.tokenHash, now());
        if (row === undefined) throw new StoreError('ERR_STORE_CORRUPT', 'INSERT … RETURNING returned no row');
        return toRecord(row);
      })
      .immediate();
  }

  async getTenant(name: string): Promise<TenantRecord | undefined> {
    const row = this.#open().prepare<[string], TenantRow>(`SELECT ${TENANT_COLUMNS} FROM tenants WHERE name = ?`).get(name);
    return row === undefined ? undefined : toRecord(row);
  }

  async listTenants(): Promise<TenantRecord[]> {
    return this.#open().prepare<[], TenantRow>(`SELECT ${TENANT_COLUMNS} FROM tenants ORDER BY name`).all().map(toRecord);
  }

  async tenantByTokenHash(tokenHash: string): Promise<TenantRecord | undefined> {
    const row = this.#open().prepare<[string], TenantRow>(`SELECT ${TENANT_COLUMNS} FROM tenants WHERE token_hash = ?`).get(tokenHash);
    return row === undefined ? undefined : toRecord(row);
  }

  async deleteTenant(name: string): Promise<boolean> {
    const db = this.#open();
    // ON DELETE CASCADE removes its router versions and table in the same statement.
    return db.transaction(() => db.prepare('DELETE FROM tenants WHERE name = ?').run(name).changes > 0).immediate();
  }

  async addRouterVersion(name: string, source: string, keep?: number, rollout?: { readonly percent: number }): Promise<number> {
    const db = this.#open();
    return db
      .transaction(() => {
        const tenant = this.#tenantRow(name);
        const { version, live, candidate, percent, pruneBelow } = nextVersion(tenant, rollout, keep);
        db.prepare('INSERT INTO router_versions (tenant_id, version, source, created_at) VALUES (?, ?, ?, ?)').run(tenant.id, version, source, now());
        db.prepare('UPDATE tenants SET last_version = ?, live_version = ?, candidate_version = ?, candidate_percent = ? WHERE id = ?').run(version, live, candidate, percent, tenant.id);
        if (pruneBelow !== undefined) {
          db.prepare('DELETE FROM router_versions WHERE tenant_id = ? AND version <= ? AND version IS NOT ?').run(tenant.id, pruneBelow, live);
        }
        return version;
      })
      .immediate();
  }

  async rollbackRouter(name: string): Promise<number | undefined> {
    const db = this.#open();
    return db
      .transaction(() => {
        const tenant = this.#tenantRow(name);
        if (tenant.live_version === null) return undefined;
        if (tenant.candidate_version !== null) {
          db.prepare('UPDATE tenants SET candidate_version = NULL, candidate_percent = NULL WHERE id = ?').run(tenant.id);
          return tenant.live_version;
        }
        const previous = db
          .prepare<[number, number], number | null>('SELECT max(version) FROM router_versions WHERE tenant_id = ? AND version < ?')
          .pluck()
          .get(tenant.id, tenant.live_version);
        if (previous === null || previous === undefined) return undefined;
        db.prepare('UPDATE tenants SET live_version = ? WHERE id = ?').run(previous, tenant.id);
        return previous;
      })
      .immediate();
  }

  async promoteRouter(name: string, percent?: number): Promise<number | undefined> {
    const db = this.#open();
    const share = percent === undefined || percent === 100 ? null : rolloutPercent(percent);
    return db
      .transaction(() => {
        const tenant = this.#tenantRow(name);
        const candidate = tenant.candidate_version;
        if (candidate === null) return undefined;
        if (share === null) db.prepare('UPDATE tenants SET live_version = ?, candidate_version = NULL, candidate_percent = NULL WHERE id = ?').run(candidate, tenant.id);
        else db.prepare('UPDATE tenants SET candidate_percent = ? WHERE id = ?').run(share, tenant.id);
        return candidate;
      })
      .immediate();
  }

  async liveRouter(name: string): Promise<RouterVersion | undefined> {
    return this.#versionRow(name, 'v.version = t.live_version');
  }

  async rolloutRouter(name: string): Promise<(RouterVersion & { readonly percent: number }) | undefined> {
    const row = this.#open()
      .prepare<[string], { version: number; source: string; created_at: string; percent: number }>(
        `SELECT v.version, v.source, v.created_at, t.candidate_percent AS percent FROM tenants t
         JOIN router_versions v ON v.tenant_id = t.id AND v.version = t.candidate_version
         WHERE t.name = ?`,
      )
      .get(name);
    return row === undefined ? undefined : { version: row.version, source: row.source, createdAt: row.created_at, percent: row.percent };
  }

  async routerVersion(name: string, version: number): Promise<RouterVersion | undefined> {
    return this.#versionRow(name, 'v.version = ?', version);
  }

  async listRouterVersions(name: string): Promise<RouterVersionInfo[]> {
    return this.#open()
      .prepare<[string], { version: number; source: string; created_at: string }>(
        `SELECT v.version, v.source, v.created_at FROM tenants t JOIN router_versions v ON v.tenant_id = t.id WHERE t.name = ? ORDER BY v.version DESC`,
      )
      .all(name)
      .map((row) => versionInfo(row.version, row.source, row.created_at));
  }

  /** The one version of tenant `name` that `where` selects (`v` is router_versions, `t` tenants). */
  #versionRow(name: string, where: string, ...values: number[]): RouterVersion | undefined {
    const row = this.#open()
      .prepare<[string, ...number[]], { version: number; source: string; created_at: string }>(
        `SELECT v.version, v.source, v.created_at FROM tenants t
         JOIN router_versions v ON v.tenant_id = t.id
         WHERE t.name = ? AND ${where}`,
      )
      .get(name, ...values);
    return row === undefined ? undefined : { version: row.version, source: row.source, createdAt: row.created_at };
  }

  async setTable(name: string, json: string): Promise<void> {
    const db = this.#open();
    db.transaction(() => {
      const tenant = this.#tenantRow(name);
      db.prepare(
        `INSERT INTO routing_tables (tenant_id, json, updated_at) VALUES (?, ?, ?)
         ON CONFLICT (tenant_id) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at`,
      ).run(tenant.id, json, now());
    }).immediate();
  }

  async getTable(name: string): Promise<string | undefined> {
    return this.#open()
      .prepare<[string], string>('SELECT r.json FROM tenants t JOIN routing_tables r ON r.tenant_id = t.id WHERE t.name = ?')
      .pluck()
      .get(name);
  }

  async setLimits(name: string, limits: Readonly<Record<string, unknown>>): Promise<void> {
    const db = this.#open();
    const json = limitsJson(limits);
    db.transaction(() => {
      const tenant = this.#tenantRow(name);
      db.prepare('UPDATE tenants SET limits = ? WHERE id = ?').run(json, tenant.id);
    }).immediate();
  }

  async close(): Promise<void> {
    const db = this.#db;
    this.#db = undefined;
    db?.close();
  }

  #open(): Database.Database {
    if (this.#db === undefined) throw new StoreClosedError();
    return this.#db;
  }

  /** The tenant's row, inside a transaction; TenantNotFoundError when there is none. */
  #tenantRow(name: string): TenantRow {
    const row = this.#open().prepare<[string], TenantRow>(`SELECT ${TENANT_COLUMNS} FROM tenants WHERE name = ?`).get(name);
    if (row === undefined) throw new TenantNotFoundError(name);
    return row;
  }
}

/**
 * Creates `dir` (mode 0700, parents too) and `path` (mode 0600) when missing, tightens an
 * existing database file to 0600, and fsyncs the directory so that a new file's entry is durable.
 */
function createPrivateFile(dir: string, path: string): void {
  const created = mkdirSync(dir, { recursive: true, mode: 0o700 });
  // Creating the file ourselves is the only way to choose its mode: SQLite would use 0644.
  const fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600);
  closeSync(fd);
  chmodSync(path, 0o600);
  fsyncDir(dir);
  if (created !== undefined) {
    // mkdir -p created directories from `created` down to `dir`: make their entries durable too.
    for (let d = dir; d !== dirname(created) && d !== dirname(d); d = dirname(d)) fsyncDir(dirname(d));
  }
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, constants.O_RDONLY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function migrate(db: Database.Database, path: string): void {
  db.transaction(() => {
    db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL) STRICT');
    const current = db.prepare<[], number | null>('SELECT max(version) FROM schema_version').pluck().get() ?? 0;
    if (current > MIGRATIONS.length) {
      throw new StoreError(
        'ERR_STORE_SCHEMA',
        `${path} has schema version ${current}; this Switchyard knows up to ${MIGRATIONS.length} (was it written by a newer release?)`,
      );
    }
    for (let version = current + 1; version <= MIGRATIONS.length; version++) {
      db.exec(MIGRATIONS[version - 1] ?? '');
      db.prepare('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)').run(version, now());
    }
  }).immediate();
}

function toRecord(row: TenantRow): TenantRecord {
  let limits: unknown;
  try {
    limits = JSON.parse(row.limits);
  } catch (err) {
    throw new StoreError('ERR_STORE_CORRUPT', `the stored limits of ${row.name} are not JSON`, { cause: err });
  }
  if (!isPlainObject(limits)) throw new StoreError('ERR_STORE_CORRUPT', `the stored limits of ${row.name} are not an object`);
  return { name: row.name, port: row.port, limits, liveVersion: row.live_version, ...rolloutOf(row.candidate_version, row.candidate_percent), createdAt: row.created_at };
}


function now(): string {
  return new Date().toISOString();
}
