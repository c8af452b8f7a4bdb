/**
 * The PostgreSQL schema of the tenant store (./pg-store.ts), as versioned migrations.
 *
 * MIGRATIONS[i] takes the schema from version i to i + 1. Append only; never edit a released
 * one. They run at start, one transaction each, under a session advisory lock, so that several
 * nodes starting at once migrate exactly once: the others wait, then find nothing left to do.
 */

/** The advisory lock key migrations run under (any 64-bit number unlikely to collide: "SWYD" "MIGR"). */
export const MIGRATION_LOCK = 0x5357_5944_4d49_4752n;

/** The channel every committed change is announced on (NOTIFY payload: its revision). */
export const CHANGE_CHANNEL = 'switchyard_changes';

/** Changes kept for nodes that fall behind; one further behind reloads everything. */
export const CHANGES_KEPT = 10_000;

export const MIGRATIONS: readonly string[] = [
  /* 1 */ `
  CREATE TABLE tenants (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    port integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    token_hash text NOT NULL,
    limits jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(limits) = 'object'),
    -- the highest version ever uploaded: the next upload is last_version + 1
    last_version integer NOT NULL DEFAULT 0 CHECK (last_version >= 0),
    live_version integer CHECK (live_version BETWEEN 1 AND last_version),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenants_name_key UNIQUE (name),
    CONSTRAINT tenants_port_key UNIQUE (port),
    CONSTRAINT tenants_token_hash_key UNIQUE (token_hash)
  );

  -- Scripts are bytes (UTF-8): a text column refuses NUL characters, which a script may hold.
  CREATE TABLE router_versions (
    tenant_id bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version integer NOT NULL CHECK (version >= 1),
    source bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, version)
  );

  ALTER TABLE tenants ADD CONSTRAINT tenants_live_version_fkey
    FOREIGN KEY (id, live_version) REFERENCES router_versions (tenant_id, version);

  CREATE TABLE routing_tables (
    tenant_id bigint PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    json bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
  );

  -- One row: the cluster's revision. Every write bumps it in its own transaction; the row lock
  -- makes revisions follow commit order without gaps, so "everything after N" is well defined.
  CREATE TABLE cluster (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    revision bigint NOT NULL CHECK (revision >= 0)
  );
  INSERT INTO cluster (id, revision) VALUES (true, 0);

  CREATE TABLE changes (
    revision bigint PRIMARY KEY,
    tenant text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('create', 'delete', 'router', 'table', 'limits', 'kill')),
    created_at timestamptz NOT NULL DEFAULT now()
  );
  `,
  /* 2: gradual rollouts, a newer version live for a share of new connections */ `
  ALTER TABLE tenants
    ADD COLUMN candidate_version integer,
    ADD COLUMN candidate_percent integer CHECK (candidate_percent BETWEEN 1 AND 99),
    ADD CONSTRAINT tenants_candidate_fkey FOREIGN KEY (id, candidate_version) REFERENCES router_versions (tenant_id, version),
    ADD CONSTRAINT tenants_candidate_check CHECK ((candidate_version IS NULL) = (candidate_percent IS NULL));
  `,
];

/** The schema version this code writes. */
export const PG_SCHEMA_VERSION = MIGRATIONS.length;
