/**
 * A node with proxy processes (`serve --processes N`): clients spread over the processes, a
 * push is atomic across them, maxConnections holds per node, the kill switch and the metrics
 * span them, a process killed with SIGKILL costs only its own connections, and a reload (SIGHUP
 * or `switchyard reload`) under load refuses and resets nothing.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readdirSync, readFileSync, readlinkSync as readlinkNow } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { bucketOf } from '../src/routing/rollout.js';
import {
  AdminApi,
  cliPath,
  type CliProcess,
  dial,
  eventually,
  exchange,
  freePortRange,
  removeDir,
  runCommand,
  startCliServe,
  startServer,
  type TestServer,
  within,
  alive,
} from './helpers.js';

const token = 'sy_op_processes_test';

interface Node {
  readonly proc: CliProcess & { adminPort: number };
  readonly api: AdminApi;
  readonly dataDir: string;
  close(): Promise<void>;
}

async function startNode(processes: number, extra: string[] = []): Promise<Node> {
  const dataDir = join(tmpdir(), `sy-processes-${process.pid}-${randomBytes(4).toString('hex')}`);
  const [lo, hi] = await freePortRange(8);
  const proc = await startCliServe(
    ['--data', dataDir, '--admin', '127.0.0.1:0', '--ports', `${lo}-${hi}`, '--bind', '127.0.0.1', '--allow', '127.0.0.0/8', '--sandbox-workers', '1', '--processes', String(processes), ...extra],
    { SWITCHYARD_ADMIN_TOKEN: token },
  );
  await proc.log.waitFor((r) => r.msg === 'proxy process serving' && r.proxy === processes - 1, 10_000);
  return {
    proc,
    api: new AdminApi(proc.adminPort, token),
    dataDir,
    close: async () => {
      proc.child.kill('SIGTERM');
      await proc.exited;
      removeDir(dataDir);
    },
  };
}

/** The pids of the proxy processes serving now, from the master's log. */
function proxyPids(node: Node): Set<number> {
  const serving = new Map<number, number>();
  for (const r of node.proc.log.records) if (r.msg === 'proxy process serving') serving.set(r.proxy as number, r.proxyPid as number);
  return new Set(serving.values());
}

/** Which process logged a connection from `client` ("127.0.0.1:PORT"). */
async function handledBy(node: Node, client: string): Promise<number> {
  const r = await node.proc.log.waitFor((x) => x.msg === 'connection closed' && x.client === client, 5000);
  return r.pid as number;
}

/** A backend that answers each line with `tag:line` and keeps the connection open. */
function lineBackend(tag: string): Promise<TestServer> {
  return startServer((socket) => {
    socket.setEncoding('latin1');
    let buffered = '';
    socket.on('data', (d: string) => {
      buffered += d;
      let i: number;
      while ((i = buffered.indexOf('\n')) >= 0) {
        socket.write(`${tag}:${buffered.slice(0, i)}\n`);
        buffered = buffered.slice(i + 1);
      }
    });
    socket.on('end', () => socket.end());
  });
}

/** A router sending every client to `port`, with `tag` in a reply before the backend's bytes. */
function routerTo(port: number, tag = 'v'): string {
  return `proxy(function (data) { if (data.indexOf('\\n') < 0) return { noop: true }; return { remote: '127.0.0.1:${port}', reply: '${tag};' }; });`;
}

/** Opens a relayed connection that stays open: resolves once its first line came back. */
async function held(port: number, line = 'hello'): Promise<Socket & { got: string }> {
  const s = (await dial(port)) as Socket & { got: string };
  s.got = '';
  s.setEncoding('latin1');
  s.on('data', (d: string) => (s.got += d));
  s.write(`${line}\n`);
  await within(
    new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (s.got.endsWith('\n')) resolve();
        else if (s.destroyed) reject(new Error(`closed before answering: ${JSON.stringify(s.got)}`));
        else s.once('data', check).once('close', check);
      };
      check();
    }),
    5000,
    'a relayed connection answered',
  );
  return s;
}

describe('proxy processes', { concurrency: false }, () => {
  let node: Node;
  let backend: TestServer;

  before(async () => {
    node = await startNode(2);
    backend = await lineBackend('b');
  });
  after(async () => {
    await node?.close();
    await backend?.close();
  });

  it('spreads clients over every process, each relayed by the native path', async () => {
    const { port } = await node.api.createTenant('spread');
    await node.api.putRouter('spread', routerTo(backend.port));
    const seen = new Set<number>();
    for (let i = 0; i < 40; i++) {
      const r = await exchange(port, [`n${i}\n`], { end: true });
      assert.equal(r.data, `v;b:n${i}\n`);
      seen.add(await handledBy(node, r.client));
    }
    assert.deepEqual(seen, proxyPids(node), 'both processes served clients');
  });

  it('makes a push live in every process once it has its 200', async () => {
    const { port } = await node.api.createTenant('swap');
    for (let version = 1; version <= 4; version++) {
      assert.equal(await node.api.putRouter('swap', routerTo(backend.port, `v${version}`)), version);
      // Right after the answer, whichever process accepts: the new version.
      const answers = await Promise.all(Array.from({ length: 12 }, (_, i) => exchange(port, [`x${i}\n`], { end: true })));
      for (const [i, a] of answers.entries()) assert.equal(a.data, `v${version};b:x${i}\n`);
    }
  });

  it('holds maxConnections per node, across processes, exactly', async () => {
    const { port } = await node.api.createTenant('limited');
    await node.api.putRouter('limited', routerTo(backend.port));
    assert.equal((await node.api.call('PUT', '/v1/tenants/limited/limits', { body: { maxConnections: 3 } })).status, 200);
    const open: Socket[] = [];
    try {
      for (let round = 0; round < 5; round++) {
        while (open.length < 3) open.push(await held(port, `r${round}`));
        // Every further client is refused, whichever process it reaches.
        for (let k = 0; k < 6; k++) {
          assert.equal(await refused(port), '', `round ${round}: a client over the limit was relayed`);
        }
        open.shift()!.destroy();
        // The freed place is given back once the proxy has seen the close (a reset meanwhile: try again).
        await eventually(async () => (await exchange(port, ['again\n'], { end: true }).catch(() => ({ data: '' }))).data === 'v;b:again\n', 'a place freed');
      }
      const rejected = await node.api.rejections('limited');
      assert.ok(rejected.filter((r) => r.reason === 'connection_limit').length >= 30);
    } finally {
      for (const s of open) s.destroy();
    }
  });

  it('reaches every process with the kill switch, and counts one rejections ring per node', async () => {
    const { port } = await node.api.createTenant('killed');
    await node.api.putRouter('killed', routerTo(backend.port));
    const open = await Promise.all(Array.from({ length: 10 }, (_, i) => held(port, `k${i}`)));
    const servers = new Set(open.map((s) => ownerOf(proxyPids(node), s.localPort!)));
    assert.equal(servers.size, 2, 'the connections are held by both processes');
    const closedAll = Promise.all(open.map(ended));
    const r = await node.api.call('DELETE', '/v1/tenants/killed/connections');
    assert.equal(r.status, 200);
    assert.equal((r.json as { closed: number }).closed, 10);
    await within(closedAll, 5000, 'every connection closed');
    const show = await node.api.show('killed');
    assert.equal(show.stats.connections.total, 10);
    assert.equal(show.stats.connections.active, 0);
  });

  it('aggregates the metrics of every process', async () => {
    const { port } = await node.api.createTenant('metered');
    await node.api.putRouter('metered', routerTo(backend.port));
    const clients = await Promise.all(Array.from({ length: 20 }, (_, i) => exchange(port, [`m${i}\n`], { end: true })));
    const by = new Set(await Promise.all(clients.map((c) => handledBy(node, c.client))));
    assert.equal(by.size, 2, 'the clients reached both processes');
    const text = (await node.api.call('GET', '/metrics')).text;
    assert.match(text, /^switchyard_connections_total\{tenant="metered"\} 20$/m);
    assert.match(text, /^switchyard_decisions_total\{tenant="metered",kind="remote"\} 20$/m);
    assert.match(text, /^switchyard_relay_native 1$/m);
  });

  it('rolls a version out to a share of clients in every process; the tenant log and per-version metrics span them', async () => {
    const { port } = await node.api.createTenant('canary');
    assert.equal(await node.api.putRouter('canary', "proxy(() => { console.log('v1 here'); return { close: 'v1' }; });"), 1);
    const pushed = await node.api.call('PUT', '/v1/tenants/canary/router?percent=40', { body: "proxy(() => ({ close: 'v2' }));" });
    assert.deepEqual([pushed.status, pushed.json], [200, { version: 2 }]);
    const candidate: string[] = [];
    const stable: string[] = [];
    for (let i = 2; i < 250 && (candidate.length < 4 || stable.length < 4); i++) (bucketOf(`127.0.0.${i}`, 2) < 40 ? candidate : stable).push(`127.0.0.${i}`);
    // Several connections from each address: whichever process accepts, the same version answers.
    const answer = async (from: string): Promise<string[]> => (await Promise.all(Array.from({ length: 4 }, () => exchange(port, ['x'], { from })))).map((r) => r.data);
    for (const from of candidate.slice(0, 4)) assert.deepEqual(await answer(from), ['v2', 'v2', 'v2', 'v2'], from);
    for (const from of stable.slice(0, 4)) assert.deepEqual(await answer(from), ['v1', 'v1', 'v1', 'v1'], from);
    const text = (await node.api.call('GET', '/metrics')).text;
    assert.match(text, /^switchyard_version_decisions_total\{tenant="canary",version="1",kind="close"\} 16$/m);
    assert.match(text, /^switchyard_version_decisions_total\{tenant="canary",version="2",kind="close"\} 16$/m);
    const logs = (await node.api.call('GET', '/v1/tenants/canary/logs?since=0')).json as { entries: { kind: string; version?: number }[] };
    assert.equal(logs.entries.filter((e) => e.kind === 'log' && e.version === 1).length, 16);
    assert.equal(logs.entries.filter((e) => e.kind === 'rejection').length, 32);
    // Promoted: every process, every client.
    assert.deepEqual((await node.api.call('POST', '/v1/tenants/canary/router/promote')).json, { version: 2 });
    for (const from of stable.slice(0, 4)) assert.deepEqual(await answer(from), ['v2', 'v2', 'v2', 'v2'], from);
  });

  it('restarts a process killed with SIGKILL; only its own connections are lost', async () => {
    const { port } = await node.api.createTenant('crash');
    await node.api.putRouter('crash', routerTo(backend.port));
    const open: (Socket & { got: string })[] = [];
    const where = new Map<Socket, number>();
    const pids = proxyPids(node);
    // Connections on both processes.
    while (new Set(where.values()).size < 2 && open.length < 40) {
      const s = await held(port, `c${open.length}`);
      open.push(s);
      where.set(s, ownerOf(pids, s.localPort!));
    }
    const victim = [...pids][0]!;
    process.kill(victim, 'SIGKILL');
    await node.proc.log.waitFor((r) => r.msg === 'proxy process died; starting another' && r.proxyPid === victim, 5000);
    for (const s of open) {
      if (where.get(s) === victim) {
        await within(ended(s), 5000, 'a connection of the killed process ended');
        continue;
      }
      // The other process's connections carry on.
      const before = s.got.length;
      s.write('still\n');
      await eventually(() => s.got.length > before && s.got.endsWith('b:still\n'), 'a surviving connection answered', 5000);
    }
    await node.proc.log.waitFor((r) => r.msg === 'proxy process serving' && r.proxyPid !== victim && !pids.has(r.proxyPid as number), 10_000);
    // New clients are served, by both processes again.
    const seen = new Set<number>();
    for (let i = 0; i < 30; i++) seen.add(await handledBy(node, (await exchange(port, [`n${i}\n`], { end: true })).client));
    assert.equal(seen.size, 2);
    assert.ok(!seen.has(victim));
    for (const s of open) s.destroy();
    // Its connections were given back: the count is right again.
    assert.equal((await node.api.call('PUT', '/v1/tenants/crash/limits', { body: { maxConnections: 2 } })).status, 200);
    const a = await held(port, 'a');
    const b = await held(port, 'b');
    assert.equal(await refused(port), '');
    a.destroy();
    b.destroy();
  });

  it('keeps the operator token and the store out of the proxy processes', () => {
    for (const pid of proxyPids(node)) {
      const env = readFileSync(`/proc/${pid}/environ`, 'latin1');
      assert.ok(!env.includes(token), 'the operator token is in a proxy process');
      assert.ok(!env.includes('SWITCHYARD_ADMIN_TOKEN'));
    }
  });
});

/** Resolves once the proxy has closed its side of `s` (FIN or reset). */
function ended(s: Socket): Promise<void> {
  return new Promise((resolve) => {
    if (s.readableEnded || s.destroyed) resolve();
    s.once('end', () => resolve()).once('close', () => resolve());
  });
}

/** What a client gets from `port` before it is closed (FIN or reset): '' for a refused one. */
async function refused(port: number): Promise<string> {
  const s = await dial(port);
  let got = '';
  s.setEncoding('latin1');
  s.on('data', (d: string) => (got += d));
  s.write('more\n');
  await within(ended(s), 5000, 'an over-the-limit client closed');
  s.destroy();
  return got;
}

/** The proxy process that holds the client socket whose peer port is `clientPort` (its fd table, via /proc). */
function ownerOf(pids: Set<number>, clientPort: number): number {
  const hex = clientPort.toString(16).toUpperCase().padStart(4, '0');
  const inodes = new Set<string>();
  for (const line of readFileSync('/proc/net/tcp', 'latin1').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    // rem_address is the client: the proxy's side of this connection.
    if (f[2]?.endsWith(`:${hex}`) && f[3] === '01') inodes.add(f[9]!);
  }
  for (const pid of pids) {
    const fds = readdirSafe(`/proc/${pid}/fd`);
    for (const fd of fds) {
      let link = '';
      try {
        link = readlinkNow(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      const m = /^socket:\[(\d+)\]$/.exec(link);
      if (m !== null && inodes.has(m[1]!)) return pid;
    }
  }
  throw new Error(`no proxy process holds the client port ${clientPort}`);
}

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

describe('reload under load', { concurrency: false }, () => {
  it('replaces the processes on SIGHUP and `switchyard reload`, then upgrades the master, with no client refused or reset, streams intact', { timeout: 120_000 }, async () => {
    const node = await startNode(2);
    const backend = await startServer((socket) => socket.pipe(socket));
    let successor: number | undefined;
    try {
      const { port } = await node.api.createTenant('busy');
      await node.api.putRouter('busy', `proxy(function (data) { return data.length < 4 ? { noop: true } : { remote: '127.0.0.1:${backend.port}' }; });`);
      const streams = await Promise.all(Array.from({ length: 50 }, () => startStream(port)));
      const load = startLoad(port, 200);
      try {
        await load.waitFor(200);
        const before = proxyPids(node);
        node.proc.child.kill('SIGHUP');
        await node.proc.log.waitFor((r) => r.msg === 'reloaded' && r.from === 'signal', 20_000);
        await load.waitFor(load.done + 200);
        const middle = proxyPids(node);
        assert.equal([...middle].filter((p) => before.has(p)).length, 0, 'new processes serve');
        const answer = await runCommand(process.execPath, ['--no-node-snapshot', cliPath, 'reload'], {
          env: { ...process.env, SWITCHYARD_URL: `http://127.0.0.1:${node.proc.adminPort}`, SWITCHYARD_TOKEN: token },
        });
        assert.equal(answer.code, 0, answer.stderr);
        assert.equal((JSON.parse(answer.stdout) as { processes: number[] }).processes.length, 2);
        await load.waitFor(load.done + 200);

        // The upgrade: a new master (the switchyard on disk) takes the sockets and the store over.
        const upgraded = await runCommand(process.execPath, ['--no-node-snapshot', cliPath, 'upgrade'], {
          env: { ...process.env, SWITCHYARD_URL: `http://127.0.0.1:${node.proc.adminPort}`, SWITCHYARD_TOKEN: token },
          timeoutMs: 60_000,
        });
        assert.equal(upgraded.code, 0, upgraded.stderr);
        successor = (JSON.parse(upgraded.stdout) as { successor: number }).successor;
        assert.notEqual(successor, node.proc.pid);
        await load.waitFor(load.done + 300);
        // The new master answers on the same admin address, with the tenant as it was.
        assert.equal((await node.api.show('busy')).version, 1);
        assert.equal((await node.api.putRouter('busy', `proxy(function (data) { return data.length < 4 ? { noop: true } : { remote: '127.0.0.1:${backend.port}' }; });`)), 2);
        await load.waitFor(load.done + 200);
      } finally {
        await load.stop();
      }
      assert.deepEqual(load.failures, [], 'no client refused or reset');
      assert.ok(load.done >= 600);
      // The long-lived streams, relayed since before both reloads by processes now gone: every byte.
      for (const s of streams) await s.finish();
      // Its streams done, the old master has exited.
      // (Its output pipe is the new master's too, so the process is watched, not the pipe.)
      await eventually(() => !alive(node.proc.pid), 'the old master exited', 20_000);
    } finally {
      if (successor !== undefined) {
        process.kill(successor, 'SIGTERM');
        await eventually(() => !alive(successor!), 'the new master stopped', 20_000);
      }
      await node.close();
      await backend.close();
    }
  });
});


/** A long-lived relayed connection streaming random bytes through an echo backend, checked by hash. */
async function startStream(port: number): Promise<{ finish(): Promise<void> }> {
  const s = await dial(port);
  const sent = createHash('sha256');
  const got = createHash('sha256');
  let sentBytes = 0;
  let gotBytes = 0;
  s.on('data', (d: Buffer) => {
    got.update(d);
    gotBytes += d.length;
  });
  let stop = false;
  const pump = (async () => {
    while (!stop) {
      const chunk = randomBytes(4096);
      sent.update(chunk);
      sentBytes += chunk.length;
      if (!s.write(chunk)) await once(s, 'drain');
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    finish: async () => {
      stop = true;
      await pump;
      await eventually(() => gotBytes === sentBytes || s.destroyed, 'a stream echoed in full', 10_000);
      assert.equal(gotBytes, sentBytes, 'a stream lost bytes');
      assert.equal(got.digest('hex'), sent.digest('hex'), 'a stream was corrupted');
      s.end();
    },
  };
}

/** New connections at `rate` a second, each relayed and echoed; failures recorded by kind. */
function startLoad(port: number, rate: number): { readonly done: number; readonly failures: string[]; waitFor(n: number): Promise<void>; stop(): Promise<void> } {
  let done = 0;
  const failures: string[] = [];
  const inflight = new Set<Promise<void>>();
  const one = async (i: number): Promise<void> => {
    const r = await exchange(port, [`ping${i}`], { end: true }).catch((e: Error) => ({ data: '', clean: false, error: e.message }));
    if (!r.clean || r.data !== `ping${i}`) failures.push(`${i}: ${'error' in r ? r.error : ''} ${JSON.stringify(r.data)}`);
    done++;
  };
  let i = 0;
  const timer = setInterval(() => {
    for (let k = 0; k < rate / 50; k++) {
      const p = one(i++);
      inflight.add(p);
      void p.then(() => inflight.delete(p));
    }
  }, 20);
  return {
    get done() {
      return done;
    },
    failures,
    waitFor: (n) => eventually(() => done >= n, `${n} connections`, 30_000),
    stop: async () => {
      clearInterval(timer);
      await Promise.all(inflight);
    },
  };
}

describe('started as root', { concurrency: false }, () => {
  const user = 'switchyard-serve-test';
  const skip = process.getuid?.() !== 0 ? 'needs root' : false;

  it('binds its admin port below 1024, then runs as --user: the master keeps only CAP_NET_BIND_SERVICE, proxy processes none', { skip, timeout: 60_000 }, async () => {
    if ((await runCommand('id', ['-u', user])).code !== 0) {
      const made = await runCommand('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', '--user-group', user]);
      if (made.code !== 0 && made.code !== 9) throw new Error(`useradd ${user}: ${made.stderr}`);
    }
    const uid = Number((await runCommand('id', ['-u', user])).stdout);
    const dataDir = join(tmpdir(), `sy-processes-root-${process.pid}-${randomBytes(4).toString('hex')}`);
    // The data directory is the user's: it is opened after the drop.
    assert.equal((await runCommand('install', ['-d', '-o', user, '-g', user, '-m', '0700', dataDir])).code, 0);
    const adminPort = await lowFreePort();
    const [lo, hi] = await freePortRange(4);
    const proc = await startCliServe(
      ['--data', dataDir, '--admin', `127.0.0.1:${adminPort}`, '--ports', `${lo}-${hi}`, '--bind', '127.0.0.1', '--allow', '127.0.0.0/8', '--sandbox-workers', '1', '--processes', '2', '--user', user],
      { SWITCHYARD_ADMIN_TOKEN: token },
    );
    const backend = await lineBackend('r');
    try {
      assert.equal(proc.adminPort, adminPort);
      const status = (pid: number): string => readFileSync(`/proc/${pid}/status`, 'latin1');
      const field = (pid: number, name: string): string => new RegExp(`^${name}:\\s+(.*)$`, 'm').exec(status(pid))?.[1] ?? '';
      assert.equal(field(proc.pid, 'Uid').split(/\s+/)[0], String(uid), 'the master runs as the user');
      assert.equal(field(proc.pid, 'CapEff'), '0000000000000400', 'the master keeps CAP_NET_BIND_SERVICE alone');
      await proc.log.waitFor((r) => r.msg === 'proxy process serving' && r.proxy === 1, 10_000);
      const pids = new Set<number>();
      for (const r of proc.log.records) if (r.msg === 'proxy process serving') pids.add(r.proxyPid as number);
      for (const pid of pids) {
        assert.equal(field(pid, 'Uid').split(/\s+/)[0], String(uid));
        for (const set of ['CapEff', 'CapPrm', 'CapAmb']) assert.equal(field(pid, set), '0000000000000000', `a proxy process holds ${set}`);
      }
      // It serves: a tenant, a router, a client.
      const api = new AdminApi(adminPort, token);
      const { port } = await api.createTenant('rooted');
      await api.putRouter('rooted', routerTo(backend.port));
      assert.equal((await exchange(port, ['x\n'], { end: true })).data, 'v;r:x\n');
    } finally {
      proc.child.kill('SIGTERM');
      await proc.exited;
      await backend.close();
      removeDir(dataDir);
    }
  });
});

/** A free port below 1024 (only root, or CAP_NET_BIND_SERVICE, may bind it). */
async function lowFreePort(): Promise<number> {
  const { createServer } = await import('node:net');
  for (let port = 900 + Math.floor(Math.random() * 100); port < 1024; port++) {
    const s = createServer();
    const ok = await new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => resolve(true));
    });
    if (ok) {
      await new Promise((r) => s.close(r));
      return port;
    }
  }
  throw new Error('no free port below 1024');
}
