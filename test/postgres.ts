/**
 * A real PostgreSQL for the tests, never a mock: a throwaway cluster (initdb, pg_ctl) in a
 * temporary directory on a free port, or, when SWITCHYARD_TEST_PG_URL names a server, fresh
 * databases on that server.
 *
 * PostgreSQL refuses to run as root: as root, the cluster runs as the system user
 * `switchyard-pg` (created when missing), through setpriv.
 */
import { execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { runCommand } from './helpers.js';

const user = 'switchyard-pg';

/** Where initdb and pg_ctl are: SWITCHYARD_TEST_PG_BIN, else the newest Debian/Ubuntu install, else PATH. */
function binDir(): string {
  const fromEnv = process.env.SWITCHYARD_TEST_PG_BIN;
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  for (const v of ['17', '16', '15', '14', '13']) {
    const dir = `/usr/lib/postgresql/${v}/bin`;
    if (existsSync(join(dir, 'pg_ctl'))) return dir;
  }
  return '';
}

function bin(name: string): string {
  const dir = binDir();
  return dir === '' ? name : join(dir, name);
}

/** The ids to run PostgreSQL's programs as: ourselves, or `switchyard-pg` when we are root. */
function identity(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  try {
    execFileSync('id', ['-u', user], { stdio: 'ignore' });
  } catch {
    execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', user], { stdio: 'ignore' });
  }
  const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim());
  return { uid, gid };
}

/** Runs one of PostgreSQL's programs (as the unprivileged user when we are root); throws with its output on failure. */
async function pgRun(program: string, args: readonly string[], timeoutMs = 60_000): Promise<string> {
  const id = identity();
  const [file, argv] =
    id === undefined ? [bin(program), args] : ['setpriv', [`--reuid=${id.uid}`, `--regid=${id.gid}`, '--clear-groups', '--', bin(program), ...args]];
  const r = await runCommand(file, argv, { timeoutMs, env: { ...process.env, LC_ALL: 'C' } });
  if (r.code !== 0) throw new Error(`${program} ${args.join(' ')} failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** A port below the tests' other ranges that refuses connections now (see helpers.refusingPort). */
async function unusedPort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 15000 + Math.floor(Math.random() * 5000);
    const refused = await new Promise<boolean>((resolve) => {
      const probe = connect({ port, host: '127.0.0.1' });
      probe.once('connect', () => {
        probe.destroy();
        resolve(false);
      });
      probe.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
    });
    if (refused) return port;
  }
  throw new Error('no free port for PostgreSQL');
}

export interface TestPostgres {
  /** The URL of a new, empty database on this server. */
  newDatabase(): Promise<string>;
  /** A URL of the server's `postgres` database, for inspecting. */
  readonly adminUrl: string;
  /** Stops the server (`pg_ctl stop -m fast`): connections are terminated. Only for a throwaway cluster. */
  stop(): Promise<void>;
  /** Starts it again on the same port and data. */
  start(): Promise<void>;
  /** Stops and removes everything (databases created on a given server are dropped). */
  destroy(): Promise<void>;
}

let databases = 0;

/** A throwaway cluster, or the server SWITCHYARD_TEST_PG_URL names. */
export async function startPostgres(): Promise<TestPostgres> {
  const given = process.env.SWITCHYARD_TEST_PG_URL;
  if (given !== undefined && given !== '') return onServer(given, undefined);
  const dir = mkdtempSync(join(tmpdir(), 'switchyard-pg-'));
  const data = join(dir, 'data');
  const id = identity();
  if (id !== undefined) chownSync(dir, id.uid, id.gid);
  await pgRun('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync', '--locale=C']);
  let port = 0;
  const start = async (): Promise<void> => {
    await pgRun('pg_ctl', [
      'start', '-w', '-t', '60', '-D', data, '-l', join(dir, 'log'),
      '-o', `-p ${port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off -c max_connections=200 -c shared_buffers=16MB`,
    ]);
  };
  for (let attempt = 0; ; attempt++) {
    port = await unusedPort();
    try {
      await start();
      break;
    } catch (err) {
      if (attempt >= 3) {
        rmSync(dir, { recursive: true, force: true });
        throw err;
      }
    }
  }
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return onServer(url, {
    stop: () => pgRun('pg_ctl', ['stop', '-w', '-m', 'fast', '-D', data]).then(() => undefined),
    start,
    destroy: async () => {
      await pgRun('pg_ctl', ['stop', '-w', '-m', 'immediate', '-D', data]).catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  });
}

function onServer(adminUrl: string, cluster: { stop(): Promise<void>; start(): Promise<void>; destroy(): Promise<void> } | undefined): TestPostgres {
  const created: string[] = [];
  const withAdmin = async <T>(fn: (c: pg.Client) => Promise<T>): Promise<T> => {
    const c = new pg.Client({ connectionString: adminUrl });
    await c.connect();
    try {
      return await fn(c);
    } finally {
      await c.end();
    }
  };
  return {
    adminUrl,
    newDatabase: async () => {
      const name = `switchyard_test_${process.pid}_${++databases}_${Date.now().toString(36)}`;
      await withAdmin((c) => c.query(`CREATE DATABASE ${name}`));
      created.push(name);
      const u = new URL(adminUrl);
      u.pathname = `/${name}`;
      return u.toString();
    },
    stop: async () => {
      if (cluster === undefined) throw new Error('cannot stop a server named by SWITCHYARD_TEST_PG_URL');
      await cluster.stop();
    },
    start: async () => {
      if (cluster === undefined) throw new Error('cannot start a server named by SWITCHYARD_TEST_PG_URL');
      await cluster.start();
    },
    destroy: async () => {
      if (cluster !== undefined) {
        await cluster.destroy();
        return;
      }
      await withAdmin(async (c) => {
        for (const name of created) await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      });
    },
  };
}

/** Runs one query on `url` on a connection of its own. */
export async function pgQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(url: string, text: string, values?: unknown[]): Promise<R[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<R>(text, values)).rows;
  } finally {
    await c.end();
  }
}
