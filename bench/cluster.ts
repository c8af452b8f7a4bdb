/**
 * A cluster under pushes: three `switchyard serve` processes on one PostgreSQL (the tests'
 * throwaway server, test/postgres.ts, or SWITCHYARD_TEST_PG_URL), bound on 127.0.0.2-4, with
 * 1,000 tenants, and router pushes at 10 a second spread over the tenants and the nodes for 60 s.
 *
 * For each push it measures the time from its 2xx answer until a new connection on every node
 * is routed by the pushed version (a probe every 5 ms per node; the router is built cold on each
 * other node, so that is included), and reports p50/p99 of it; the PostgreSQL connections each
 * node holds (sampled); and the CPU of each node's main process during the pushes, with the time
 * its change stream spent applying changes (switchyard_cluster_change_seconds_total).
 *
 *   node --no-node-snapshot dist/bench/cluster.js [--tenants 1000] [--rate 10] [--seconds 60]
 *
 * Prints a table and one JSON line.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AdminApi, freePortRange, startCliServe, type CliProcess } from '../test/helpers.js';
import { pgQuery, startPostgres } from '../test/postgres.js';
import { numberArg, parseArgs, processTicks, ticksPerSecond } from './common.js';

const args = parseArgs(process.argv.slice(2));
const tenants = Math.floor(numberArg(args, 'tenants', 1000));
const rate = numberArg(args, 'rate', 10);
const seconds = numberArg(args, 'seconds', 60);
const hosts = ['127.0.0.2', '127.0.0.3', '127.0.0.4'] as const;
setTimeout(() => {
  process.stderr.write('cluster bench: time limit reached\n');
  process.exit(2);
}, 1_200_000).unref();

const token = `sy_op_${randomBytes(32).toString('base64url')}`;
const router = (tag: string): string => `proxy(() => ({ close: '${tag}\\n' }));`;

/** What a new connection to host:port is answered before it is closed. */
function probe(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let text = '';
    socket.setTimeout(2000, () => socket.destroy());
    socket.on('connect', () => socket.write('x'));
    socket.on('data', (b: Buffer) => (text += b.toString('latin1')));
    socket.on('error', () => undefined);
    socket.on('close', () => resolve(text));
  });
}

/** Probes until the answer starts with `tag`; resolves the last answer seen when the deadline passes. */
async function until(host: string, port: number, tag: string, deadlineMs: number): Promise<true | string> {
  let last = '';
  while (Date.now() < deadlineMs) {
    last = await probe(host, port);
    if (last.startsWith(tag)) return true;
    await sleep(5);
  }
  return last;
}

const metric = async (api: AdminApi, name: string): Promise<number> =>
  Number(new RegExp(`^${name} ([0-9.e+-]+)$`, 'm').exec((await api.call('GET', '/metrics')).text)?.[1] ?? NaN);

const pg = await startPostgres();
const dirs: string[] = [];
const nodes: (CliProcess & { adminPort: number })[] = [];
try {
  const url = await pg.newDatabase();
  const database = new URL(url).pathname.slice(1);
  const ports = await freePortRange(tenants + 10);
  const serve = (host: string, data: string): Promise<CliProcess & { adminPort: number }> =>
    startCliServe(
      ['--store', url, '--bind', host, '--admin', `${host}:0`, '--ports', `${ports[0]}-${ports[1]}`, '--data', data, '--sandbox-workers', '1', '--log-level', 'info', '--pushes-per-minute', '6000'],
      { SWITCHYARD_ADMIN_TOKEN: token },
      60_000,
    );
  for (const host of hosts) {
    const data = mkdtempSync(join(tmpdir(), 'switchyard-bench-node-'));
    dirs.push(data);
    nodes.push(await serve(host, data));
  }
  const apis = nodes.map((n, i) => new AdminApi(n.adminPort, token, hosts[i]!));

  // 1,000 tenants, created on node 1, each with version 1 of its router.
  const created: { name: string; port: number }[] = [];
  const t0 = Date.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < tenants) {
        const i = next++;
        const t = await apis[0]!.createTenant(`t${i}`);
        await apis[0]!.putRouter(t.name, router(`${t.name}-v0`));
        created.push(t);
      }
    }),
  );
  const setupS = (Date.now() - t0) / 1000;
  // Every node has every tenant before the measurement starts.
  for (const api of apis) {
    for (;;) {
      const listed = (await api.call('GET', '/v1/tenants')).json.tenants as unknown[];
      if (listed.length === tenants) break;
      await sleep(100);
    }
  }

  const ticks0 = nodes.map((n) => processTicks(n.pid) ?? 0);
  const change0 = await Promise.all(apis.map((a) => metric(a, 'switchyard_cluster_change_seconds_total')));
  const applied0 = await Promise.all(apis.map((a) => metric(a, 'switchyard_cluster_changes_applied_total')));
  const connections: Record<string, number[]> = Object.fromEntries(hosts.map((h) => [h, []]));
  const sampler = setInterval(() => {
    void pgQuery<{ app: string; n: string }>(pg.adminUrl, 'SELECT application_name AS app, count(*) AS n FROM pg_stat_activity WHERE datname = $1 GROUP BY 1', [database]).then((rows) => {
      for (const h of hosts) connections[h]!.push(rows.filter((r) => r.app.includes(h)).reduce((s, r) => s + Number(r.n), 0));
    });
  }, 2000);

  const everyNode: number[] = [];
  const otherNode: number[] = [];
  let refused = 0;
  let missed = 0;
  const refusals = new Map<string, number>();
  const misses: string[] = [];
  const inFlight: Promise<void>[] = [];
  const started = Date.now();
  for (let k = 0; Date.now() - started < seconds * 1000; k++) {
    const due = started + (k * 1000) / rate;
    if (due > Date.now()) await sleep(due - Date.now());
    const tenant = created[k % created.length]!;
    const from = k % hosts.length;
    const tag = `${tenant.name}-p${k}`;
    inFlight.push(
      (async () => {
        const r = await apis[from]!.call('PUT', `/v1/tenants/${tenant.name}/router`, { body: router(tag) });
        if (r.status !== 200) {
          refused++;
          const key = `${r.status} ${String(r.json?.error ?? r.text).slice(0, 80)}`;
          refusals.set(key, (refusals.get(key) ?? 0) + 1);
          return;
        }
        const answered = Date.now();
        const times = await Promise.all(
          hosts.map(async (h, i) => {
            const seen = await until(h, tenant.port, tag, answered + 30_000);
            if (seen === true) return Date.now() - answered;
            misses.push(`${tag} pushed to ${hosts[from]} not seen on ${h} (node ${i + 1}): last answer ${JSON.stringify(seen)}`);
            return Infinity;
          }),
        );
        if (times.some((t) => t === Infinity)) missed++;
        everyNode.push(Math.max(...times));
        times.forEach((t, i) => {
          if (i !== from) otherNode.push(t);
        });
      })(),
    );
  }
  await Promise.all(inFlight);
  const elapsedS = (Date.now() - started) / 1000;
  clearInterval(sampler);
  const cpuS = nodes.map((n, i) => ((processTicks(n.pid) ?? 0) - ticks0[i]!) / ticksPerSecond);
  const changeS = (await Promise.all(apis.map((a) => metric(a, 'switchyard_cluster_change_seconds_total')))).map((v, i) => v - change0[i]!);
  const applied = (await Promise.all(apis.map((a) => metric(a, 'switchyard_cluster_changes_applied_total')))).map((v, i) => v - applied0[i]!);
  // kill -9 of node 2, and its restart: until it serves (admin API up, every tenant loaded) and until every port listens.
  nodes[1]!.child.kill('SIGKILL');
  await nodes[1]!.exited;
  const restartAt = Date.now();
  nodes[1] = await serve(hosts[1], dirs[1]!);
  const servingMs = Date.now() - restartAt;
  const restarted = new AdminApi(nodes[1].adminPort, token, hosts[1]);
  while ((await restarted.call('GET', '/healthz')).status !== 200) await sleep(10);
  const healthyMs = Date.now() - restartAt;
  const p = (xs: number[], q: number): number => {
    const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor(s.length * q))] ?? NaN;
  };
  const result = {
    nodes: hosts.length,
    tenants,
    pushes: everyNode.length + refused,
    pushesPerSecond: (everyNode.length + refused) / elapsedS,
    refused,
    missed,
    setupSeconds: setupS,
    everyNodeMs: { p50: p(everyNode, 0.5), p99: p(everyNode, 0.99), max: p(everyNode, 1) },
    otherNodeMs: { p50: p(otherNode, 0.5), p99: p(otherNode, 0.99) },
    pgConnectionsPerNode: Object.fromEntries(hosts.map((h) => [h, { max: Math.max(...connections[h]!), samples: connections[h]!.length }])),
    nodeCpuSeconds: Object.fromEntries(hosts.map((h, i) => [h, cpuS[i]])),
    changeStream: Object.fromEntries(hosts.map((h, i) => [h, { changes: applied[i], seconds: changeS[i], msPerChange: (changeS[i]! * 1000) / applied[i]! }])),
    seconds: elapsedS,
    restart: { servingMs, healthyMs },
  };
  console.log(`${hosts.length} nodes, ${tenants} tenants (created and pushed once in ${setupS.toFixed(1)} s), ${result.pushes} pushes in ${elapsedS.toFixed(0)} s (${result.pushesPerSecond.toFixed(1)}/s), ${refused} refused, ${missed} not seen everywhere within 30 s`);
  console.log(`  push 2xx → routed by the new version on every node: p50 ${result.everyNodeMs.p50} ms, p99 ${result.everyNodeMs.p99} ms, max ${result.everyNodeMs.max} ms`);
  console.log(`  … on a node other than the one pushed to: p50 ${result.otherNodeMs.p50} ms, p99 ${result.otherNodeMs.p99} ms`);
  for (const [i, h] of hosts.entries()) {
    console.log(
      `  ${h}: PostgreSQL connections ≤ ${result.pgConnectionsPerNode[h]!.max}; main process CPU ${cpuS[i]!.toFixed(1)} s over ${elapsedS.toFixed(0)} s (pushes, probes and changes); change stream ${applied[i]} changes, ${(changeS[i]! * 1000 / applied[i]!).toFixed(2)} ms each (wall, store reads included)`,
    );
  }
  console.log(`  node 2 killed (SIGKILL) and restarted: serving after ${servingMs} ms, every one of the ${tenants} ports listening (/healthz 200) after ${healthyMs} ms`);
  for (const [why, n] of refusals) console.log(`  refused ${n}×: ${why}`);
  for (const m of misses.slice(0, 10)) console.log(`  missed: ${m}`);
  for (const [i, n] of nodes.entries()) {
    const warnings = new Map<string, number>();
    for (const r of n.log.records) if (r.level >= 40) warnings.set(r.msg, (warnings.get(r.msg) ?? 0) + 1);
    for (const [msg, count] of warnings) console.log(`  ${hosts[i]} logged ${count}× "${msg}"`);
  }
  console.log(JSON.stringify(result));
} finally {
  for (const n of nodes) n.child.kill('SIGKILL');
  await Promise.all(nodes.map((n) => n.exited));
  await pg.destroy();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}
