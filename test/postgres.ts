/**
 * A real PostgreSQL for the tests, never a mock: a throwaway cluster (initdb, pg_ctl) in a
 * temporary directory on a free port, or, when SWITCHYARD_TEST_PG_URL names a server, fresh
 * databases on that server.
 *
 * PostgreSQL refuses to run as root: as root, the cluster runs as the system user
 * `switchyard-pg` (created when missing), through setpriv.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
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
    try {
      execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', user], { stdio: 'ignore' });
    } catch (err) {
      // Another test file may have created it at the same moment: only its absence is an error.
      execFileSync('id', ['-u', user], { stdio: 'ignore' });
      void err;
    }
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

/**
 * A free port from the kernel's ephemeral range (bound on port 0, then released): the tests'
 * other ranges are kept for tenant ports (freePortRange) and for ports that must keep refusing
 * (refusingPort). Should something take it before PostgreSQL binds it, starting fails and another
 * is tried.
 */
async function unusedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * A process that stops the cluster and removes its directory once this test process is gone,
 * however it ends (a crash, a kill): a throwaway server must never outlive its tests.
 */
function watchdog(dir: string, data: string): ChildProcess {
  const id = identity();
  const stop = [...(id === undefined ? [] : ['setpriv', `--reuid=${id.uid}`, `--regid=${id.gid}`, '--clear-groups', '--']), bin('pg_ctl'), 'stop', '-m', 'immediate', '-D', data];
  const quoted = (a: string): string => `'${a.replaceAll("'", "'\\''")}'`;
  const script = `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done; ${stop.map(quoted).join(' ')} >/dev/null 2>&1; rm -rf ${quoted(dir)}`;
  const child = spawn('sh', ['-c', script], { detached: true, stdio: 'ignore' });
  child.unref();
  return child;
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
  const guard = watchdog(dir, data);
  return onServer(url, {
    stop: () => pgRun('pg_ctl', ['stop', '-w', '-m', 'fast', '-D', data]).then(() => undefined),
    start,
    destroy: async () => {
      if (guard.pid !== undefined) process.kill(-guard.pid, "SIGKILL");
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
