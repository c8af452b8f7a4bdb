/**
 * The `switchyard` command as users run it: dist/src/cli.js started as an executable (so its
 * shebang line starts Node), its flags and errors, and its signals (CONTRACT §3): QUIT stops
 * accepting and waits for every connection; TERM and INT stop accepting, wait up to 10 s,
 * close the rest; every way out is exit 0.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { accessSync, constants, readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { cliPath, dial, exchange, spawnCli, startCliProxy, startServer, within, writeRouterFile, type CliProcess, type TestServer, tryConnect } from './helpers.js';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

/** Runs `switchyard args…` to completion (bounded) and returns its exit and output. */
async function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = spawnCli(args, { executable: true });
  const { code } = await within(proc.exited, 20_000, `switchyard ${args.join(' ')}`);
  return { code, stdout: proc.log.text, stderr: proc.stderr() };
}

/** Sends `line` and resolves once it has come back (the backend echoes). */
function roundTrip(socket: Socket, line: string): Promise<void> {
  let text = '';
  return within(
    new Promise<void>((resolve) => {
      const onData = (b: Buffer): void => {
        text += b.toString('latin1');
        if (!text.endsWith(line)) return;
        socket.off('data', onData);
        resolve();
      };
      socket.on('data', onData);
      socket.write(line);
    }),
    5000,
    `echo of ${JSON.stringify(line)}`,
  );
}

describe('command line', () => {
  before(() => {
    assert.doesNotThrow(() => accessSync(cliPath, constants.X_OK), `${cliPath} must be executable (npm run build does chmod +x)`);
  });

  it('--help prints the usage and exits 0', async () => {
    const r = await run(['--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^Usage: switchyard /m);
    assert.match(r.stdout, /-c, --config <file>/);
    assert.match(r.stdout, /-h, --host <host>/);
    assert.match(r.stdout, /-p, --port <port>/);
  });

  it('--version prints the version from package.json', async () => {
    const r = await run(['--version']);
    assert.equal(r.code, 0);
    assert.equal(r.stdout.trim(), pkg.version);
  });

  it('a missing router file: non-zero exit, the file named on stderr', async () => {
    const file = '/nonexistent/switchyard-test/router.js';
    const r = await run(['-c', file, '-h', '127.0.0.1', '-p', '0']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /^switchyard: \/nonexistent\/switchyard-test\/router\.js: no such file$/m);
  });

  it('a router with a syntax error: non-zero exit, file:line:col on stderr', async () => {
    const file = writeRouterFile("proxy(() => ({ noop: true }));\nconst x = ;\n", 'broken.js');
    const r = await run(['-c', file, '-h', '127.0.0.1', '-p', '0']);
    assert.notEqual(r.code, 0);
    assert.ok(r.stderr.includes(`${file}:2:11`), `stderr: ${r.stderr}`);
    assert.match(r.stderr, /Unexpected token/);
  });

  it('no -c: non-zero exit and says what is missing', async () => {
    const r = await run([]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /missing -c/);
  });

  it('a port already in use: non-zero exit, a clear message', async () => {
    const busy = await startServer(() => undefined);
    try {
      const file = writeRouterFile('proxy(() => ({ noop: true }));');
      const r = await run(['-c', file, '-h', '127.0.0.1', '-p', String(busy.port)]);
      assert.notEqual(r.code, 0);
      assert.ok(r.stderr.includes(`127.0.0.1:${busy.port} is already in use`), `stderr: ${r.stderr}`);
    } finally {
      await busy.close();
    }
  });
});

describe('single-router mode', () => {
  it("names the tenant after the router file's base name, in conn and in the log", async () => {
    const proc = await startCliProxy('proxy((data, conn) => ({ close: conn.tenant }));');
    try {
      const r = await exchange(proc.port, ['hi']);
      assert.equal(r.data, 'router.js');
      const line = await proc.log.waitFor((rec) => rec.msg === 'connection closed');
      assert.equal(line.tenant, 'router.js');
      assert.equal(line.decision, 'close');
    } finally {
      proc.child.kill('SIGKILL');
      await proc.exited;
    }
  });
});

describe('signals', { concurrency: true }, () => {
  let echo: TestServer;
  let router: string;

  before(async () => {
    // Echoes every chunk and stays open until the client's side closes.
    echo = await startServer((socket) => {
      socket.on('data', (b: Buffer) => socket.write(b));
      socket.on('end', () => socket.end());
    });
    router = `proxy(() => ({ remote: '127.0.0.1:${echo.port}' }));`;
  });
  after(async () => {
    await echo.close();
  });

  /** A `switchyard` process (the executable) with one relayed connection open. */
  async function withOpenConnection(): Promise<{ proxy: Awaited<ReturnType<typeof startCliProxy>>; client: Socket }> {
    const proxy = await startCliProxy(router, { executable: true });
    const client = await dial(proxy.port);
    await roundTrip(client, 'hello\n');
    return { proxy, client };
  }

  /**
   * Waits for the shutdown line, then for a round trip on the open connection: the line is
   * logged just before the listener closes, in the same handler, so only an event the service
   * handles afterwards proves that the port is closed.
   */
  async function stopped(proxy: CliProcess, client: Socket, signal: NodeJS.Signals): Promise<void> {
    await proxy.log.waitFor((r) => r.msg === 'shutting down: no longer accepting' && r.signal === signal);
    await roundTrip(client, 'after the signal\n');
  }

  /**
   * A `switchyard` process that has handled a connection (now closed) — so it has finished
   * starting up, signal handlers included.
   */
  async function idleProxy(): Promise<Awaited<ReturnType<typeof startCliProxy>>> {
    const proxy = await startCliProxy(router, { executable: true });
    const r = await exchange(proxy.port, ['ping'], { end: true });
    assert.equal(r.data, 'ping');
    await proxy.log.waitFor((rec) => rec.msg === 'connection closed');
    return proxy;
  }

  it('QUIT: refuses new connections, the open one keeps working, exit 0 once it closes', { timeout: 30_000 }, async () => {
    const { proxy, client } = await withOpenConnection();
    try {
      proxy.child.kill('SIGQUIT');
      await proxy.log.waitFor((r) => r.msg === 'shutting down: no longer accepting' && r.signal === 'SIGQUIT');
      await roundTrip(client, 'still there\n');
      // After that round trip the signal handler has surely run to its end (see stopped()).
      assert.equal(await tryConnect(proxy.port), 'ECONNREFUSED');
      assert.equal(proxy.child.exitCode, null, 'still running while a connection is open');
      const clientClosed = once(client, 'close');
      client.end();
      await within(clientClosed, 5000, 'client close');
      const { code, signal } = await within(proxy.exited, 10_000, 'exit after the last connection');
      assert.deepEqual({ code, signal }, { code: 0, signal: null });
      const closed = await proxy.log.waitFor((r) => r.msg === 'connection closed');
      assert.equal(closed.reason, undefined);
      assert.equal(closed.bytesIn, 'hello\nstill there\n'.length);
      await proxy.log.waitFor((r) => r.msg === 'stopped');
    } finally {
      client.destroy();
      if (proxy.child.exitCode === null && proxy.child.signalCode === null) proxy.child.kill('SIGKILL');
    }
  });

  it('TERM: refuses new connections, closes an idle one after the 10 s grace, exit 0', { timeout: 30_000 }, async () => {
    const { proxy, client } = await withOpenConnection();
    try {
      const clientClosed = once(client, 'close');
      client.on('end', () => client.end());
      const signalled = Date.now();
      proxy.child.kill('SIGTERM');
      await stopped(proxy, client, 'SIGTERM');
      assert.equal(await tryConnect(proxy.port), 'ECONNREFUSED');
      const { code, signal } = await within(proxy.exited, 20_000, 'exit after the grace period');
      const elapsed = Date.now() - signalled;
      assert.deepEqual({ code, signal }, { code: 0, signal: null });
      assert.ok(elapsed >= 9500 && elapsed < 15_000, `exited ${elapsed} ms after TERM`);
      await within(clientClosed, 5000, 'the held connection is closed');
      await proxy.log.waitFor((r) => r.msg === 'grace period over: closing remaining connections');
      const closed = await proxy.log.waitFor((r) => r.msg === 'connection closed');
      assert.equal(closed.reason, 'shutdown');
    } finally {
      client.destroy();
      if (proxy.child.exitCode === null && proxy.child.signalCode === null) proxy.child.kill('SIGKILL');
    }
  });

  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    it(`${sig}: exits 0 as soon as the open connection closes within the grace period`, { timeout: 30_000 }, async () => {
      const { proxy, client } = await withOpenConnection();
      try {
        proxy.child.kill(sig);
        await stopped(proxy, client, sig);
        assert.equal(await tryConnect(proxy.port), 'ECONNREFUSED');
        await roundTrip(client, 'one more\n');
        const closedAt = Date.now();
        client.end();
        const { code, signal } = await within(proxy.exited, 5000, 'exit after the connection closed');
        assert.deepEqual({ code, signal }, { code: 0, signal: null });
        assert.ok(Date.now() - closedAt < 5000);
        const closed = await proxy.log.waitFor((r) => r.msg === 'connection closed');
        assert.equal(closed.reason, undefined);
        assert.equal(proxy.log.records.filter((r) => r.msg.startsWith('grace period over')).length, 0);
      } finally {
        client.destroy();
        if (proxy.child.exitCode === null && proxy.child.signalCode === null) proxy.child.kill('SIGKILL');
      }
    });

    it(`${sig} with no connections: exits 0 promptly`, { timeout: 30_000 }, async () => {
      const proxy = await idleProxy();
      try {
        const signalled = Date.now();
        proxy.child.kill(sig);
        const { code, signal } = await within(proxy.exited, 5000, `exit after ${sig}`);
        assert.deepEqual({ code, signal }, { code: 0, signal: null });
        assert.ok(Date.now() - signalled < 3000, `took ${Date.now() - signalled} ms`);
        await proxy.log.waitFor((r) => r.msg === 'stopped');
      } finally {
        if (proxy.child.exitCode === null && proxy.child.signalCode === null) proxy.child.kill('SIGKILL');
      }
    });
  }

  it('QUIT with no connections: exits 0 promptly', { timeout: 30_000 }, async () => {
    const proxy = await idleProxy();
    try {
      proxy.child.kill('SIGQUIT');
      const { code, signal } = await within(proxy.exited, 5000, 'exit after SIGQUIT');
      assert.deepEqual({ code, signal }, { code: 0, signal: null });
    } finally {
      if (proxy.child.exitCode === null && proxy.child.signalCode === null) proxy.child.kill('SIGKILL');
    }
  });
});

// Alone, not next to the concurrent tests above: what it checks depends on timing.
describe('signals at startup', () => {
  it('a signal sent as soon as the "listening" line is printed is handled: exit 0', { timeout: 90_000 }, async () => {
    // The line tells a supervisor the service is up; a TERM or INT from then on must be the
    // graceful shutdown, not the default action (killed by the signal). Twenty tries, since the
    // window between the line and the handlers (if any) is short.
    const outcomes: string[] = [];
    const file = writeRouterFile('proxy(() => ({ noop: true }));');
    for (let i = 0; i < 20; i++) {
      const sig = i % 2 === 0 ? 'SIGTERM' : 'SIGINT';
      const proc = spawnCli(['-c', file, '-h', '127.0.0.1', '-p', '0'], { executable: true });
      await proc.log.waitFor((r) => r.msg === 'listening');
      proc.child.kill(sig);
      const { code, signal } = await within(proc.exited, 15_000, `exit after ${sig}`);
      outcomes.push(`${sig}: ${code === null ? `killed by ${String(signal)}` : `exit ${code}`}`);
    }
    assert.deepEqual(
      outcomes.filter((o) => !o.endsWith('exit 0')),
      [],
      `every run should exit 0; got:\n${outcomes.join('\n')}`,
    );
  });
});
