/**
 * A Switchyard cluster: several nodes on one real PostgreSQL (a throwaway cluster, see
 * postgres.ts), each binding the same tenant port range on its own loopback address (127.0.0.2,
 * 127.0.0.3, 127.0.0.4) with its own admin API. Changes made on any node reach every node through
 * the change stream: pushes, rollbacks, tables, limits, deletions, tokens and the kill switch;
 * concurrent creation on two nodes; a broken LISTEN connection caught up; PostgreSQL stopped under
 * traffic (routing goes on, writes are 503, every node converges once it is back); and a node
 * killed with SIGKILL and restarted (as processes).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  AdminApi,
  dial,
  eventually,
  exchange,
  freePortRange,
  httpCall,
  removeDir,
  spawnCli,
  startCliServe,
  startEchoBackend,
  startTestHosting,
  within,
  type CliProcess,
  type TestHosting,
  type TestServer,
  tryConnect,
} from './helpers.js';
import { pgQuery, startPostgres, type TestPostgres } from './postgres.js';

const operatorToken = `sy_op_${randomBytes(32).toString('base64url')}`;
const hosts = ['127.0.0.2', '127.0.0.3', '127.0.0.4'] as const;

/** A router that tags what it sends the echo backend with its version and the table's tag; "hold" waits. */
function router(version: string, backendPort: number): string {
  return `proxy((data, conn) => {
    if (data.startsWith('hold')) return { noop: true };
    return { remote: '127.0.0.1:${backendPort}', data: '${version}|' + (table.tag ?? '') + '|' + conn.localAddress + '|' + data };
  });`;
}

interface Node {
  readonly host: string;
  readonly api: AdminApi;
}

/** What a new connection to `port` on `node` is answered ('' when closed without an answer). */
async function ask(node: Node, port: number): Promise<string> {
  const r = await exchange(port, ['hi'], { host: node.host });
  return r.data;
}

/** Waits until a new connection on every node gets an answer containing `expected`; resolves each node's time in ms since `since`. */
async function convergence(nodes: readonly Node[], port: number, expected: string, since: number): Promise<number[]> {
  return Promise.all(
    nodes.map(async (n) => {
      let last = '';
      await eventually(
        async () => {
          last = await ask(n, port).catch((e: Error) => e.message);
          return last.includes(expected);
        },
        `${n.host}:${port} answering ${expected} (last: ${last})`,
        20_000,
        5,
      );
      return Date.now() - since;
    }),
  );
}

function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

describe('cluster: three nodes on one PostgreSQL', () => {
  let pg: TestPostgres;
  let url: string;
  let backend: TestServer;
  let ports: [number, number];
  const nodes: TestHosting[] = [];
  const savedToken = process.env.SWITCHYARD_ADMIN_TOKEN;

  before(async () => {
    process.env.SWITCHYARD_ADMIN_TOKEN = operatorToken;
    [pg, backend, ports] = await Promise.all([startPostgres(), startEchoBackend(), freePortRange(40)]);
    url = await pg.newDatabase();
    for (const host of hosts) {
      nodes.push(
        await startTestHosting({ store: url, host, ports, allow: ['127.0.0.0/8'], rebindAfterMs: 100, changeFeed: { backoffMs: [50, 500], pollMs: 1000 } }),
      );
    }
  });

  after(async () => {
    for (const n of nodes) await n.close();
    await backend?.close();
    await pg?.destroy();
    if (savedToken === undefined) delete process.env.SWITCHYARD_ADMIN_TOKEN;
    else process.env.SWITCHYARD_ADMIN_TOKEN = savedToken;
    for (const n of nodes) removeDir(n.dataDir);
  });

  const node = (i: number): Node => ({ host: hosts[i]!, api: nodes[i]!.api });
  const all = (): Node[] => hosts.map((_, i) => node(i));

  it('a tenant created on node 1 listens on every node; a push on node 1 routes new connections with the new version on nodes 2 and 3', async (t) => {
    const created = await node(0).api.createTenant('alpha');
    for (const n of all()) await eventually(async () => (await tryConnect(created.port, n.host)) === 'connected', `alpha's port on ${n.host}`);
    await node(0).api.putRouter('alpha', router('v1', backend.port));
    await convergence(all(), created.port, 'v1|', Date.now());

    const times: number[] = [];
    for (let v = 2; v <= 6; v++) {
      const pushed = await node(0).api.call('PUT', '/v1/tenants/alpha/router', { body: router(`v${v}`, backend.port) });
      assert.equal(pushed.status, 200, pushed.text);
      assert.equal(pushed.json.version, v);
      const answered = Date.now();
      times.push(...(await convergence([node(1), node(2)], created.port, `v${v}|`, answered)));
    }
    // Each node answered from its own address: every node routes, none forwards to another.
    for (const n of all()) assert.match(await ask(n, created.port), new RegExp(`\\|${n.host.replaceAll('.', '\\.')}\\|hi$`));
    t.diagnostic(`push → routed on the other nodes (ms): p50 ${percentile(times, 50)}, p99 ${percentile(times, 99)}, max ${Math.max(...times)}`);
    for (const n of all()) {
      const listed = await n.api.call('GET', '/v1/tenants');
      assert.deepEqual(listed.json.tenants, [{ name: 'alpha', port: created.port, version: 6 }], n.host);
    }
  });

  it('rollback, tables and limits made on one node apply on every node', async () => {
    const { port } = await node(1).api.createTenant('beta');
    await node(1).api.putRouter('beta', router('b1', backend.port));
    await node(1).api.putRouter('beta', router('b2', backend.port));
    await convergence(all(), port, 'b2|', Date.now());

    const back = await node(2).api.call('POST', '/v1/tenants/beta/router/rollback');
    assert.equal(back.status, 200, back.text);
    assert.equal(back.json.version, 1);
    await convergence(all(), port, 'b1||', Date.now());

    const table = await node(2).api.call('PUT', '/v1/tenants/beta/table', { body: { tag: 'T1' } });
    assert.equal(table.status, 200, table.text);
    await convergence(all(), port, 'b1|T1|', Date.now());

    const limited = await node(0).api.call('PUT', '/v1/tenants/beta/limits', { body: { maxConnections: 0 } });
    assert.equal(limited.status, 200, limited.text);
    for (const n of all()) {
      await eventually(async () => (await ask(n, port)) === '', `maxConnections 0 on ${n.host}`);
      await eventually(async () => (await n.api.show('beta')).limits.maxConnections === 0, `limits shown on ${n.host}`);
    }
    await node(0).api.call('PUT', '/v1/tenants/beta/limits', { body: { maxConnections: null } });
    await convergence(all(), port, 'b1|T1|', Date.now());
  });

  it('the kill switch on node 1 closes the tenant\'s connections on every node', async () => {
    const { port } = await node(0).api.createTenant('gamma');
    await node(0).api.putRouter('gamma', router('g1', backend.port));
    await convergence(all(), port, 'g1|', Date.now());
    const held: Socket[] = [];
    for (const n of [node(1), node(2)]) {
      const socket = await dial(port, n.host);
      socket.write('hold');
      held.push(socket);
      await eventually(async () => (await n.api.show('gamma')).stats.connections.active >= 1, `a held connection on ${n.host}`);
    }
    // Closed by the node: a FIN ('end': these sockets allow half-open) or a reset ('close').
    const closedAll = Promise.all(
      held.map(
        (s) =>
          new Promise<void>((resolve) => {
            if (s.destroyed || s.readableEnded) return resolve();
            s.once('end', () => {
              s.end();
              resolve();
            });
            s.once('close', () => resolve());
          }),
      ),
    );
    const kill = await node(0).api.call('DELETE', '/v1/tenants/gamma/connections');
    assert.equal(kill.status, 200, kill.text);
    assert.equal(kill.json.closed, 0, "node 1's own connections");
    await within(closedAll, 10_000, 'the held connections on nodes 2 and 3 closed');
    for (const i of [1, 2]) {
      const applied = await nodes[i]!.log.waitFor((r) => r.msg === 'kill switch from the cluster' && r.tenant === 'gamma');
      assert.equal(applied.closed, 1, hosts[i]);
    }
    assert.equal(nodes[0]!.log.find('kill switch from the cluster').length, 0, 'node 1 applied its own kill once, when it was asked');
    // The port still accepts everywhere.
    for (const n of all()) assert.match(await ask(n, port), /g1\|/);
  });

  it("a tenant's token works on every node; deleted on one node, its port closes and its token stops working everywhere", async () => {
    const created = await node(2).api.createTenant('delta');
    for (const n of all()) {
      await eventually(async () => (await n.api.call('GET', '/v1/tenants/delta', { token: created.token })).status === 200, `delta's token on ${n.host}`);
    }
    const removed = await node(1).api.call('DELETE', '/v1/tenants/delta');
    assert.equal(removed.status, 204);
    for (const n of all()) {
      await eventually(async () => (await tryConnect(created.port, n.host)) !== 'connected', `delta's port closed on ${n.host}`);
      await eventually(async () => (await n.api.call('GET', '/v1/tenants/delta', { token: created.token })).status === 401, `delta's token refused on ${n.host}`);
    }
    // The name is free again, on any node.
    const again = await node(0).api.createTenant('delta');
    assert.notEqual(again.token, created.token);
    for (const n of all()) await eventually(async () => (await n.api.call('GET', '/v1/tenants/delta', { token: again.token })).status === 200, `the new delta on ${n.host}`);
  });

  it('two nodes creating tenants at once: unique names and ports, no write lost, every node serves all of them', async () => {
    const make = (i: number, prefix: string): Promise<{ name: string; port: number }[]> =>
      Promise.all(Array.from({ length: 8 }, (_, k) => node(i).api.createTenant(`${prefix}-${k}`)));
    const [one, two] = await Promise.all([make(0, 'one'), make(1, 'two')]);
    const made = [...one, ...two];
    assert.equal(new Set(made.map((m) => m.port)).size, 16, `ports: ${made.map((m) => m.port).join(' ')}`);
    // The same name on two nodes at once: exactly one wins.
    const race = await Promise.all([node(0).api.call('POST', '/v1/tenants', { body: { name: 'same' } }), node(2).api.call('POST', '/v1/tenants', { body: { name: 'same' } })]);
    assert.deepEqual(race.map((r) => r.status).sort(), [201, 409]);
    for (const n of all()) {
      await eventually(async () => {
        const listed = (await n.api.call('GET', '/v1/tenants')).json.tenants as { name: string; port: number }[];
        return made.every((m) => listed.some((l) => l.name === m.name && l.port === m.port)) && listed.some((l) => l.name === 'same');
      }, `every new tenant listed on ${n.host}`);
      for (const m of made) await eventually(async () => (await tryConnect(m.port, n.host)) === 'connected', `${m.name} listening on ${n.host}`);
    }
    const health = await Promise.all(all().map((n) => n.api.call('GET', '/healthz')));
    for (const h of health) assert.equal(h.status, 200, h.text);
  });

  it('a node whose LISTEN connection was cut catches up on everything it missed, in order', async () => {
    const { port } = await node(0).api.createTenant('epsilon');
    await node(0).api.putRouter('epsilon', router('e1', backend.port));
    await convergence(all(), port, 'e1|', Date.now());
    // Cut every connection of node 3 (its pool and its LISTEN), then write at once: node 3 gets no notification for these.
    const cut = await pgQuery<{ n: string }>(url, "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE application_name LIKE '%127.0.0.4%'");
    assert.ok(Number(cut[0]?.n) >= 1);
    for (let v = 2; v <= 4; v++) await node(0).api.putRouter('epsilon', router(`e${v}`, backend.port));
    await node(1).api.call('PUT', '/v1/tenants/epsilon/table', { body: { tag: 'late' } });
    await convergence([node(2)], port, 'e4|late|', Date.now());
    await eventually(async () => {
      const r = await Promise.all(all().map(async (n) => Number(/^switchyard_cluster_revision (\d+)$/m.exec((await n.api.call('GET', '/metrics')).text)?.[1])));
      return r.every((x) => x === r[0]);
    }, 'every node at the same revision');
  });

  it('PostgreSQL stopped for 10 s under traffic: zero routing failures, reads answer, writes are 503, /healthz says store down, switchyard_store_up 0; then every node converges', async (t) => {
    const { port, token: zetaToken } = await node(0).api.createTenant('zeta');
    await node(0).api.createTenant('zeta-idle'); // no traffic: for the kill switch during the outage
    await node(0).api.putRouter('zeta', router('z1', backend.port));
    await convergence(all(), port, 'z1|', Date.now());
    // The tenant's token is seen once on every node before the outage.
    for (const n of all()) assert.equal((await n.api.call('GET', '/v1/tenants/zeta', { token: zetaToken })).status, 200);

    let routed = 0;
    const failures: string[] = [];
    let traffic = true;
    const loops = all().map(async (n) => {
      while (traffic) {
        const answer = await ask(n, port).catch((e: Error) => `error ${e.message}`);
        // z1 throughout the outage; z2 once the push made after it has reached the node.
        if (answer.includes('z1|') || answer.includes('z2|')) routed++;
        else failures.push(`${n.host}: ${JSON.stringify(answer)}`);
      }
    });

    await pg.stop();
    const stoppedAt = Date.now();
    try {
      for (const n of all()) {
        await eventually(async () => (await n.api.call('GET', '/healthz')).json?.store === 'down', `store down on ${n.host}`, 15_000);
        const health = await n.api.call('GET', '/healthz');
        assert.equal(health.status, 200);
        assert.deepEqual(health.json.degraded, ['store']);
        assert.match((await n.api.call('GET', '/metrics')).text, /^switchyard_store_up 0$/m);
        // Reads answer from the node's configuration.
        assert.equal((await n.api.call('GET', '/v1/tenants')).status, 200);
        assert.equal((await n.api.show('zeta')).version, 1);
        // Writes: 503, with Retry-After and a clear error.
        const push = await n.api.call('PUT', '/v1/tenants/zeta/router', { body: router('z2', backend.port) });
        assert.equal(push.status, 503, push.text);
        assert.ok(Number(push.headers['retry-after']) >= 1);
        assert.match(push.json.error, /store is unavailable/);
        const create = await n.api.call('POST', '/v1/tenants', { body: { name: `during-${n.host.replaceAll('.', '-')}` } });
        assert.equal(create.status, 503, create.text);
        // The kill switch closes this node's connections and says the others could not be told.
        await eventually(() => n.api.call('GET', '/v1/tenants/zeta-idle').then((r) => r.status === 200), `zeta-idle on ${n.host}`);
        const kill = await n.api.call('DELETE', '/v1/tenants/zeta-idle/connections');
        assert.equal(kill.status, 503, kill.text);
        assert.equal(typeof kill.json.closed, 'number');
        assert.match(kill.json.error, /other nodes could not be told/);
        // A tenant token seen before still works (cached hash); one never seen cannot be checked.
        assert.equal((await n.api.call('GET', '/v1/tenants/zeta', { token: zetaToken })).status, 200);
        assert.equal((await n.api.call('GET', '/v1/tenants/zeta', { token: 'sy_tn_never-seen-token-never-seen-token-0000000' })).status, 503);
      }
      const remaining = 10_000 - (Date.now() - stoppedAt);
      if (remaining > 0) await new Promise((resolve) => setTimeout(resolve, remaining)); // the outage lasts 10 s: what is tested is routing throughout it
    } finally {
      await pg.start();
    }
    const restartedAt = Date.now();
    const upTimes = await Promise.all(
      all().map(async (n) => {
        await eventually(async () => (await n.api.call('GET', '/healthz')).json?.store === 'up', `store up again on ${n.host}`, 20_000);
        return Date.now() - restartedAt;
      }),
    );
    const pushed = await node(1).api.call('PUT', '/v1/tenants/zeta/router', { body: router('z2', backend.port) });
    assert.equal(pushed.status, 200, pushed.text);
    const converged = await convergence(all(), port, 'z2|', Date.now());
    traffic = false;
    await Promise.all(loops);
    for (const n of all()) assert.match((await n.api.call('GET', '/metrics')).text, /^switchyard_store_up 1$/m);
    for (const n of all()) assert.equal((await n.api.call('GET', '/v1/tenants')).json.tenants.some((x: { name: string }) => x.name.startsWith('during-')), false, 'no write refused with 503 was made');
    t.diagnostic(`outage: ${routed} connections routed, ${failures.length} failed; store up again after ${upTimes.join('/')} ms; push after it on every node in ${converged.join('/')} ms`);
    assert.deepEqual(failures, []);
    assert.ok(routed > 30, `${routed} connections routed during the test`);
  });
});

describe('cluster: nodes as processes', () => {
  let pg: TestPostgres;
  let url: string;
  let backend: TestServer;
  let ports: [number, number];
  const procs: (CliProcess & { adminPort: number })[] = [];
  const dataDirs: string[] = [];

  const serve = async (host: string): Promise<CliProcess & { adminPort: number }> => {
    const data = mkdtempSync(join(tmpdir(), 'switchyard-node-'));
    dataDirs.push(data);
    const proc = await startCliServe(
      ['--store', url, '--bind', host, '--admin', `${host}:0`, '--ports', `${ports[0]}-${ports[1]}`, '--allow', '127.0.0.0/8', '--data', data, '--sandbox-workers', '1', '--log-level', 'info'],
      { SWITCHYARD_ADMIN_TOKEN: operatorToken },
    );
    procs.push(proc);
    return proc;
  };

  before(async () => {
    [pg, backend, ports] = await Promise.all([startPostgres(), startEchoBackend(), freePortRange(8)]);
    url = await pg.newDatabase();
  });

  after(async () => {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
    await backend?.close();
    await pg?.destroy();
    for (const d of dataDirs) removeDir(d);
  });

  it('serve --store from the flag, SWITCHYARD_STORE or the configuration file, its password never shown; without SWITCHYARD_ADMIN_TOKEN a node refuses to start', async () => {
    const data = mkdtempSync(join(tmpdir(), 'switchyard-node-'));
    dataDirs.push(data);
    const common = ['--data', data, '--admin', '127.0.0.5:0', '--bind', '127.0.0.5', '--ports', `${ports[0]}-${ports[1]}`, '--sandbox-workers', '1'];
    const noToken = spawnCli(['serve', '--store', url, ...common], { env: { SWITCHYARD_ADMIN_TOKEN: '' } });
    assert.equal((await noToken.exited).code, 1);
    assert.match(noToken.stderr(), /SWITCHYARD_ADMIN_TOKEN/);
    const notPg = spawnCli(['serve', '--store', 'http://127.0.0.1/x', ...common], { env: { SWITCHYARD_ADMIN_TOKEN: operatorToken } });
    assert.equal((await notPg.exited).code, 1);
    assert.match(notPg.stderr(), /postgres/);

    const secret = new URL(url);
    secret.password = 'sekrit-password'; // the throwaway cluster trusts every local connection: any password does
    for (const [how, args, env] of [
      ['env', common, { SWITCHYARD_STORE: secret.toString() }],
      ['flag', ['--store', secret.toString(), ...common], {}],
    ] as const) {
      const proc = await startCliServe(args, { SWITCHYARD_ADMIN_TOKEN: operatorToken, ...env });
      procs.push(proc);
      const config = await httpCall(proc.adminPort, 'GET', '/v1/config', { token: operatorToken, host: '127.0.0.5' });
      assert.equal(config.json.sources.store, how);
      assert.match(config.json.settings.store, /^postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:/);
      assert.doesNotMatch(config.text + proc.log.text + proc.stderr(), /sekrit/);
      assert.equal((await httpCall(proc.adminPort, 'GET', '/healthz', { host: '127.0.0.5' })).json.store, 'up');
      proc.child.kill('SIGTERM');
      assert.equal((await proc.exited).code, 0);
    }
    writeFileSync(join(data, 'switchyard.json'), JSON.stringify({ store: secret.toString() }));
    const fromFile = await startCliServe(common, { SWITCHYARD_ADMIN_TOKEN: operatorToken });
    procs.push(fromFile);
    const config = await httpCall(fromFile.adminPort, 'GET', '/v1/config', { token: operatorToken, host: '127.0.0.5' });
    assert.equal(config.json.sources.store, 'file');
    assert.doesNotMatch(config.text + fromFile.log.text, /sekrit/);
    fromFile.child.kill('SIGTERM');
    await fromFile.exited;
  });

  it('kill -9 of one node leaves the others serving and writable; restarted, it catches up and serves', async (t) => {
    const started = await Promise.all(hosts.map((h) => serve(h)));
    const cli = started.map((p, i): Node => ({ host: hosts[i]!, api: new AdminApi(p.adminPort, operatorToken, hosts[i]!) }));
    const { port } = await cli[0]!.api.createTenant('eta');
    await cli[0]!.api.putRouter('eta', router('h1', backend.port));
    await convergence(cli, port, 'h1|', Date.now());

    const victim = started[1]!;
    victim.child.kill('SIGKILL');
    assert.equal((await victim.exited).signal, 'SIGKILL');
    const survivors = [cli[0]!, cli[2]!];
    for (const n of survivors) assert.match(await ask(n, port), /h1\|/);
    await eventually(async () => (await tryConnect(port, hosts[1])) !== 'connected', 'the killed node no longer accepts');
    const pushed = await cli[2]!.api.call('PUT', '/v1/tenants/eta/router', { body: router('h2', backend.port) });
    assert.equal(pushed.status, 200, pushed.text);
    await convergence(survivors, port, 'h2|', Date.now());
    await cli[0]!.api.call('PUT', '/v1/tenants/eta/table', { body: { tag: 'while-down' } });
    const other = await cli[0]!.api.createTenant('theta');

    const restartedAt = Date.now();
    const again = await serve(hosts[1]);
    const back: Node = { host: hosts[1], api: new AdminApi(again.adminPort, operatorToken, hosts[1]) };
    const [ms] = await convergence([back], port, 'h2|while-down|', restartedAt);
    assert.equal((await tryConnect(other.port, hosts[1])), 'connected');
    t.diagnostic(`restarted node serving the latest configuration ${ms} ms after its start`);
    // And its own writes reach the others.
    await back.api.putRouter('eta', router('h3', backend.port));
    await convergence(cli.filter((_, i) => i !== 1), port, 'h3|', Date.now());
    const health = await back.api.call('GET', '/healthz');
    assert.equal(health.json.store, 'up');
  });
});
