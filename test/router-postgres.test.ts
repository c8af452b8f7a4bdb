/**
 * routers/postgres.js with the real `psql` client through the proxy to small fake Postgres
 * backends written here: each reads the StartupMessage, answers with an ErrorResponse naming
 * itself and what it received, and closes — psql prints that message on stderr.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { after, before, describe, it, type TestContext } from 'node:test';
import { dial, readAll, routerSource, runCommand, startProxy, startServer, waitForDecisions, type TestProxy, type TestServer } from './helpers.js';

interface Startup {
  readonly protocol: number;
  readonly params: Record<string, string>;
  /** The first 8 bytes the backend received: the StartupMessage's own header. */
  readonly head: Buffer;
}

interface PgBackend extends TestServer {
  readonly startups: Startup[];
}

/** A backend ErrorResponse ('E') with severity FATAL. */
function errorResponse(code: string, message: string): Buffer {
  const fields = Buffer.from(`SFATAL\0VFATAL\0C${code}\0M${message}\0\0`, 'utf8');
  const head = Buffer.alloc(5);
  head.write('E', 0, 'latin1');
  head.writeInt32BE(4 + fields.length, 1);
  return Buffer.concat([head, fields]);
}

/** Reads one length-prefixed StartupMessage from `socket`, or null if it ends first. */
function readStartup(socket: Socket): Promise<Startup | null> {
  return new Promise((resolve) => {
    let buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      buffer = Buffer.concat([buffer, chunk]);
      if (buffer.length < 8 || buffer.length < buffer.readInt32BE(0)) return;
      socket.off('data', onData);
      const fields = buffer.subarray(8, buffer.readInt32BE(0) - 1).toString('utf8').split('\0');
      const params: Record<string, string> = {};
      for (let i = 0; i + 1 < fields.length; i += 2) params[fields[i]!] = fields[i + 1]!;
      resolve({ protocol: buffer.readInt32BE(4), params, head: buffer.subarray(0, 8) });
    };
    socket.on('data', onData);
    socket.once('end', () => resolve(null));
  });
}

async function startPgBackend(name: string): Promise<PgBackend> {
  const startups: Startup[] = [];
  const server = await startServer((socket) => {
    void readStartup(socket).then((startup) => {
      if (startup === null) return void socket.destroy();
      startups.push(startup);
      const p = startup.params;
      socket.end(errorResponse('28000', `backend ${name} got database=${p.database ?? '-'} user=${p.user ?? '-'} protocol=${startup.protocol}`));
    });
  });
  return Object.assign(server, { startups });
}

function startupMessage(params: Record<string, string>): Buffer {
  const body = Buffer.from(`${Object.entries(params).map(([k, v]) => `${k}\0${v}\0`).join('')}\0`, 'utf8');
  const head = Buffer.alloc(8);
  head.writeInt32BE(8 + body.length, 0);
  head.writeInt32BE(196608, 4);
  return Buffer.concat([head, body]);
}

const sslRequest = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

/** psql's environment without the caller's PG* settings, so only the connection string counts. */
function psqlEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PG')) env[k] = v;
  return env;
}

async function psql(port: number, conninfo: string): Promise<{ code: number | null; stderr: string }> {
  const result = await runCommand('psql', ['-X', '-w', `host=127.0.0.1 port=${port} ${conninfo} connect_timeout=5`, '-c', 'select 1'], { env: psqlEnv() });
  return { code: result.code, stderr: result.stderr };
}

let psqlMissing: string | undefined;
try {
  await runCommand('psql', ['--version']);
} catch (err) {
  psqlMissing = `psql is not installed (${(err as Error).message}); install postgresql-client to run this test`;
}

describe('routers/postgres.js', () => {
  let alpha: PgBackend;
  let beta: PgBackend;
  let proxy: TestProxy;

  before(async () => {
    alpha = await startPgBackend('alpha');
    beta = await startPgBackend('beta');
    proxy = await startProxy(
      routerSource('postgres.js', {
        '127.0.0.1:5433': `127.0.0.1:${alpha.port}`,
        '127.0.0.1:5434': `127.0.0.1:${beta.port}`,
      }),
      { tenant: 'postgres' },
    );
  });
  after(async () => {
    await proxy.close();
    await alpha.close();
    await beta.close();
  });

  it('routes psql by database after refusing SSL, with a clean startup at the backend', async (t: TestContext) => {
    if (psqlMissing !== undefined) return void t.skip(psqlMissing);
    const noops = proxy.listener.stats.decisions.noop;
    const a = await psql(proxy.port, 'dbname=alpha user=u sslmode=prefer');
    assert.ok(proxy.listener.stats.decisions.noop > noops, 'psql asked for SSL and the router answered N (a noop with reply)');
    assert.notEqual(a.code, 0);
    assert.match(a.stderr, /FATAL: {2}backend alpha got database=alpha user=u protocol=196608\n/);
    const b = await psql(proxy.port, 'dbname=beta user=someone sslmode=prefer');
    assert.match(b.stderr, /FATAL: {2}backend beta got database=beta user=someone protocol=196608\n/);
    assert.equal(alpha.startups.length, 1);
    assert.equal(beta.startups.length, 1);
    // The backend's first bytes are the StartupMessage's header, not the SSLRequest.
    assert.equal(alpha.startups[0]!.head.readInt32BE(4), 196608);
    assert.notDeepEqual(alpha.startups[0]!.head, sslRequest);
    assert.equal(alpha.startups[0]!.params.application_name, 'psql');
  });

  it('routes psql without SSL negotiation too', async (t: TestContext) => {
    if (psqlMissing !== undefined) return void t.skip(psqlMissing);
    const b = await psql(proxy.port, 'dbname=beta user=v sslmode=disable');
    assert.match(b.stderr, /FATAL: {2}backend beta got database=beta user=v protocol=196608\n/);
  });

  it('answers an unknown database with its own ErrorResponse, which psql prints', async (t: TestContext) => {
    if (psqlMissing !== undefined) return void t.skip(psqlMissing);
    const before = alpha.startups.length + beta.startups.length;
    const g = await psql(proxy.port, 'dbname=gamma user=u sslmode=prefer');
    assert.notEqual(g.code, 0);
    assert.match(g.stderr, /FATAL: {2}switchyard: no route for database "gamma"\n/);
    assert.equal(alpha.startups.length + beta.startups.length, before, 'no backend saw it');
  });

  it('waits for each piece, answers SSLRequest with N, and defaults the database to the user', async () => {
    const socket = await dial(proxy.port);
    socket.on('end', () => socket.end());
    const received = readAll(socket);
    const gotN = once(socket, 'data');
    let noops = proxy.listener.stats.decisions.noop;
    socket.write(sslRequest.subarray(0, 5));
    await waitForDecisions(proxy, 'noop', ++noops);
    socket.write(sslRequest.subarray(5));
    const [n] = (await gotN) as [Buffer];
    assert.equal(n.toString('latin1'), 'N');
    const startup = startupMessage({ user: 'beta', application_name: 'raw' });
    socket.write(startup.subarray(0, 6));
    await waitForDecisions(proxy, 'noop', noops + 2); // the 'N' reply counted one more
    socket.write(startup.subarray(6, 20));
    await waitForDecisions(proxy, 'noop', noops + 3);
    socket.write(startup.subarray(20));
    const data = await received;
    assert.match(data, /^N/);
    assert.match(data, /backend beta got database=- user=beta protocol=196608/);
    const seen = beta.startups.at(-1);
    assert.deepEqual(seen?.params, { user: 'beta', application_name: 'raw' });
  });

  it('closes a startup without a user, or with another protocol, with an ErrorResponse', async () => {
    const noUser = await dial(proxy.port);
    noUser.on('end', () => noUser.end());
    const a = readAll(noUser);
    noUser.write(startupMessage({ database: 'alpha' }));
    assert.match(await a, /^E[^]*C28000\0Mno PostgreSQL user name specified in startup packet\0\0$/);

    const v2 = await dial(proxy.port);
    v2.on('end', () => v2.end());
    const b = readAll(v2);
    const old = startupMessage({ user: 'u' });
    old.writeInt32BE(0x00020000, 4);
    v2.write(old);
    assert.match(await b, /^E[^]*C0A000\0Munsupported frontend protocol 2\.0\0\0$/);
  });
});
