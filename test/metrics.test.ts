/** The Prometheus exposition: per-tenant series labelled tenant="…", and the sandbox's figures. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { renderMetrics, type SandboxFigures } from '../src/metrics/prometheus.js';
import { runtimeInfo } from '../src/runtime.js';
import { exchange, startEchoBackend, startProxy } from './helpers.js';

function sample(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  assert.ok(line !== undefined, `no sample ${series} in:\n${text}`);
  return Number(line.slice(series.length + 1));
}

describe('metrics', () => {
  it('counts connections, decisions, router errors, call durations, bytes and rejections', async () => {
    const echo = await startEchoBackend();
    const proxy = await startProxy(
      `proxy((data) => {
        if (data === 'route') return { remote: '127.0.0.1:${echo.port}' };
        if (data === 'loop') for (;;) {}
        if (data === 'bad') return { nope: 1 };
        if (data === 'throw') throw new Error('x');
        return { close: 'bye' };
      });`,
      // A limit long enough that a busy test machine cannot starve the looping call below a
      // quarter of it in CPU (a starved time-out would not move it to the slow lane).
      { tenant: 'acme', limits: { routerTimeoutMs: 200 } },
    );
    try {
      for (const d of ['route', 'route', 'loop', 'bad', 'throw', 'other']) await exchange(proxy.port, [d]);
      await proxy.log.closed(6);
      const text = renderMetrics([proxy.listener], await proxy.pool!.figures(), { up: true }, proxy.listener.dataPath.figures());
      const t = 'tenant="acme"';
      assert.equal(sample(text, `switchyard_connections_total{${t}}`), 6);
      assert.equal(sample(text, `switchyard_connections_active{${t}}`), 0);
      assert.equal(sample(text, `switchyard_decisions_total{${t},kind="remote"}`), 2);
      assert.equal(sample(text, `switchyard_decisions_total{${t},kind="close"}`), 1);
      assert.equal(sample(text, `switchyard_router_errors_total{${t},kind="timeout"}`), 1);
      assert.equal(sample(text, `switchyard_router_errors_total{${t},kind="invalid"}`), 1);
      assert.equal(sample(text, `switchyard_router_errors_total{${t},kind="throw"}`), 1);
      assert.equal(sample(text, `switchyard_router_call_duration_seconds_count{${t}}`), 6);
      assert.equal(sample(text, `switchyard_router_call_duration_seconds_bucket{${t},le="+Inf"}`), 6);
      assert.ok(sample(text, `switchyard_router_call_duration_seconds_bucket{${t},le="0.025"}`) <= 5, 'the looping call took longer');
      assert.equal(sample(text, `switchyard_client_bytes_received_total{${t}}`), 5 + 5 + 4 + 3 + 5 + 5);
      assert.equal(sample(text, `switchyard_client_bytes_sent_total{${t}}`), 2 * `${echo.port}:route`.length + 3);
      assert.equal(sample(text, `switchyard_rejections_total{${t},reason="router_timeout"}`), 1);
      assert.equal(sample(text, `switchyard_rejections_total{${t},reason="router_close"}`), 1);
      // The looping call moved the tenant to the slow lane: its shared worker and that one.
      assert.equal(sample(text, 'switchyard_sandbox_workers'), 2);
      assert.equal(sample(text, 'switchyard_sandbox_slow_lane_tenants'), 1);
      assert.equal(sample(text, 'switchyard_sandbox_quarantined_tenants'), 0);
      assert.ok(sample(text, 'switchyard_sandbox_isolates') >= 1);
      assert.ok(sample(text, 'switchyard_sandbox_heap_bytes') > 100_000);
      assert.ok(sample(text, 'switchyard_sandbox_worker_rss_bytes') > 10_000_000);
      const native = proxy.listener.dataPath.kind === 'splice';
      assert.equal(sample(text, 'switchyard_relay_native'), native ? 1 : 0);
      if (native) {
        assert.equal(sample(text, 'switchyard_relay_connections'), 0, 'every relayed connection has ended');
        assert.equal(sample(text, 'switchyard_relay_pipes_lent'), 0);
      }
      assert.match(text, /^# TYPE switchyard_router_call_duration_seconds histogram$/m);
      const build = `switchyard_build_info{version="0.1.0",node="${process.versions.node}",v8="${process.versions.v8}",isolated_vm="${runtimeInfo().isolatedVm}"}`;
      assert.equal(sample(text, build), 1);
      assert.match(runtimeInfo().isolatedVm, /^7\./);
      for (const line of text.trim().split('\n')) assert.match(line, /^(# (HELP|TYPE) \w+ .+|\w+(\{[^}]*\})? [\d.e+-]+)$/, line);
    } finally {
      await proxy.close();
      await echo.close();
    }
  });

  it('shows the data path from the figures it is given, not from the process', () => {
    const sandbox: SandboxFigures = {
      workers: 0,
      isolates: 0,
      heapBytes: 0,
      spareIsolates: 0,
      coldStartsFromSpare: 0,
      workerRssBytes: 0,
      restarts: 0,
      quarantined: 0,
      slowLane: 0,
      penalties: {},
      penalizedSources: 0,
    };
    const native = renderMetrics([], sandbox, { up: true }, { relay: 'splice', stats: { connections: 3, lentPipes: 2, sparePipes: 1, shed: 7 } });
    assert.deepEqual(
      ['switchyard_relay_native', 'switchyard_relay_connections', 'switchyard_relay_pipes_lent', 'switchyard_relay_shed_total'].map((s) => sample(native, s)),
      [1, 3, 2, 7],
    );
    const node = renderMetrics([], sandbox, { up: true }, { relay: 'node' });
    assert.equal(sample(node, 'switchyard_relay_native'), 0);
    assert.doesNotMatch(node, /switchyard_relay_connections/);
  });
});
