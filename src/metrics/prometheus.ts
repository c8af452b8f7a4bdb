import { processDataPath } from '../connection/data-path.js';
import type { TenantPort } from '../listener.js';
import { runtimeInfo } from '../runtime.js';
import { type RelayFigures, routerCallBuckets, type RouterOutcomes } from './stats.js';

/** Process-wide figures of the sandbox. */
export interface SandboxFigures {
  readonly workers: number;
  readonly isolates: number;
  readonly heapBytes: number;
  /** Blank isolates built ahead of tenants' cold starts. */
  readonly spareIsolates: number;
  /** Isolates built from a spare by the workers alive now (not a counter: it restarts with a worker). */
  readonly coldStartsFromSpare: number;
  readonly workerRssBytes: number;
  readonly restarts: number;
  readonly quarantined: number;
  readonly slowLane: number;
  /** Penalties imposed on client sources so far, per tenant name. */
  readonly penalties: Readonly<Record<string, number>>;
  /** Client sources refused now, over all tenants. */
  readonly penalizedSources: number;
}

/** The tenant store as this node sees it. */
export interface StoreFigures {
  /** Whether the store can be reached (always true for the embedded one). */
  readonly up: boolean;
  /** With a cluster store: the last cluster revision applied here, changes applied, and the time spent applying them. */
  readonly revision?: number;
  readonly changesApplied?: number;
  readonly changeSeconds?: number;
}

type Labels = Readonly<Record<string, string>>;

/** Prometheus text exposition (format 0.0.4): each family's HELP and TYPE once, then its samples. */
class Exposition {
  readonly #out: string[] = [];

  family(name: string, type: 'counter' | 'gauge' | 'histogram', help: string, samples: Iterable<[Labels, number, string?]>): void {
    this.#out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value, suffix = ''] of samples) this.#out.push(`${name}${suffix}${format(labels)} ${value}`);
  }

  text(): string {
    return `${this.#out.join('\n')}\n`;
  }
}

function format(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`);
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

/** A tenant's port as the metrics read it. */
type Metered = Pick<TenantPort, 'tenant' | 'stats' | 'bytes'>;

/**
 * Every metric of the service, per tenant (labelled `tenant`) and process-wide, from the figures
 * it is given. `relay` is the data path's the listeners were given (`DataPath.figures()`, or the
 * sum of a node's proxy processes'); a caller that does not pass it gets the process's.
 * `processes`: each proxy process's connections, when the node runs them.
 */
export function renderMetrics(
  listeners: readonly Metered[],
  sandbox: SandboxFigures,
  store: StoreFigures = { up: true },
  relay: RelayFigures = processDataPath().figures(),
  processes?: readonly { readonly index: number; readonly connections: number }[],
): string {
  const e = new Exposition();
  const per = (f: (l: Metered) => Iterable<[Labels, number, string?]> | number): [Labels, number, string?][] =>
    listeners.flatMap((l): [Labels, number, string?][] => {
      const r = f(l);
      return typeof r === 'number' ? [[{ tenant: l.tenant }, r]] : [...r];
    });

  const r = runtimeInfo();
  e.family('switchyard_build_info', 'gauge', 'The running Switchyard and its runtime; always 1.', [[{ version: r.version, node: r.node, v8: r.v8, isolated_vm: r.isolatedVm }, 1]]);
  e.family('switchyard_connections_active', 'gauge', 'Client connections open now.', per((l) => l.stats.active));
  e.family('switchyard_connections_total', 'counter', 'Client connections accepted.', per((l) => l.stats.connections));
  e.family('switchyard_decisions_total', 'counter', 'Router decisions, by kind.', per((l) => Object.entries(l.stats.decisions).map(([kind, n]) => [{ tenant: l.tenant, kind }, n])));
  e.family('switchyard_router_errors_total', 'counter', 'Router calls that failed, by kind.', per((l) => Object.entries(l.stats.routerErrors).map(([kind, n]) => [{ tenant: l.tenant, kind }, n])));
  const byVersion = (pick: (o: RouterOutcomes) => Record<string, number>) =>
    per((l) => [...l.stats.versions].flatMap(([version, o]) => Object.entries(pick(o)).map(([kind, n]): [Labels, number] => [{ tenant: l.tenant, version: String(version), kind }, n])));
  e.family('switchyard_version_decisions_total', 'counter', 'Router decisions, by router version and kind (a gradual rollout compares its versions by these).', byVersion((o) => o.decisions));
  e.family('switchyard_version_router_errors_total', 'counter', 'Router calls that failed, by router version and kind.', byVersion((o) => o.routerErrors));
  e.family(
    'switchyard_router_call_duration_seconds',
    'histogram',
    'Duration of router calls, as the proxy waits for them.',
    per((l) => {
      const s = l.stats;
      let cumulative = 0;
      const rows: [Labels, number, string][] = routerCallBuckets.map((le, i) => {
        cumulative += s.routerCallBuckets[i]!;
        return [{ tenant: l.tenant, le: String(le) }, cumulative, '_bucket'];
      });
      const count = cumulative + s.routerCallBuckets[routerCallBuckets.length]!;
      rows.push([{ tenant: l.tenant, le: '+Inf' }, count, '_bucket'], [{ tenant: l.tenant }, s.routerCallSeconds, '_sum'], [{ tenant: l.tenant }, count, '_count']);
      return rows;
    }),
  );
  e.family('switchyard_client_bytes_received_total', 'counter', 'Bytes received from clients.', per((l) => l.bytes.in));
  e.family('switchyard_client_bytes_sent_total', 'counter', 'Bytes sent to clients.', per((l) => l.bytes.out));
  e.family(
    'switchyard_source_penalties_total',
    'counter',
    'Penalties imposed on client sources (an IPv4 address, an IPv6 /64) whose calls kept running into the time limit, hanging or crashing a worker.',
    per((l) => sandbox.penalties[l.tenant] ?? 0),
  );
  e.family('switchyard_rejections_total', 'counter', 'Connections closed without being relayed, by reason.', per((l) => [...l.stats.rejections].map(([reason, n]) => [{ tenant: l.tenant, reason }, n])));

  e.family('switchyard_sandbox_workers', 'gauge', 'Sandbox worker processes.', [[{}, sandbox.workers]]);
  e.family('switchyard_sandbox_isolates', 'gauge', 'Router isolates alive in the sandbox workers.', [[{}, sandbox.isolates]]);
  e.family('switchyard_sandbox_heap_bytes', 'gauge', 'V8 heap used by router isolates.', [[{}, sandbox.heapBytes]]);
  e.family('switchyard_sandbox_spare_isolates', 'gauge', 'Blank isolates built ahead of router cold starts.', [[{}, sandbox.spareIsolates]]);
  e.family('switchyard_sandbox_worker_rss_bytes', 'gauge', 'Resident memory of the sandbox workers.', [[{}, sandbox.workerRssBytes]]);
  e.family('switchyard_sandbox_worker_restarts_total', 'counter', 'Sandbox workers restarted after a crash or a hang.', [[{}, sandbox.restarts]]);
  e.family('switchyard_sandbox_quarantined_tenants', 'gauge', 'Tenants moved to a quarantine worker.', [[{}, sandbox.quarantined]]);
  e.family('switchyard_sandbox_penalized_sources', 'gauge', 'Client sources refused now (source_penalty), over all tenants.', [[{}, sandbox.penalizedSources]]);
  e.family('switchyard_sandbox_slow_lane_tenants', 'gauge', 'Tenants moved to the low-priority slow-lane worker after repeated time-outs.', [[{}, sandbox.slowLane]]);
  e.family('switchyard_store_up', 'gauge', 'Whether the tenant store can be reached (1) or not (0): while 0, tenants route with the configuration in force and writes are refused.', [[{}, store.up ? 1 : 0]]);
  if (store.revision !== undefined) {
    e.family('switchyard_cluster_revision', 'gauge', 'The last cluster revision (change) applied on this node.', [[{}, store.revision]]);
    e.family('switchyard_cluster_changes_applied_total', 'counter', 'Cluster changes applied on this node.', [[{}, store.changesApplied ?? 0]]);
    e.family('switchyard_cluster_change_seconds_total', 'counter', 'Time spent applying cluster changes on this node (reading the store included).', [[{}, store.changeSeconds ?? 0]]);
  }
  if (processes !== undefined) {
    e.family('switchyard_proxy_processes', 'gauge', 'Proxy processes serving (accepting) now.', [[{}, processes.length]]);
    e.family(
      'switchyard_proxy_process_connections_total',
      'counter',
      'Client connections each serving proxy process accepted since it started (the balance between them).',
      processes.map((p): [Labels, number] => [{ process: String(p.index) }, p.connections]),
    );
  }
  e.family('switchyard_relay_native', 'gauge', 'Whether connections are accepted and relayed by the native data path (splice) rather than by Node streams.', [[{}, relay.relay === 'splice' ? 1 : 0]]);
  switch (relay.relay) {
    case 'splice':
      e.family('switchyard_relay_connections', 'gauge', 'Client connections (and backend connects) held by the native data path now.', [[{}, relay.stats.connections]]);
      e.family('switchyard_relay_pipes_lent', 'gauge', 'Pipes holding bytes for a slow destination now (SWITCHYARD_RELAY_PIPES caps them).', [[{}, relay.stats.lentPipes]]);
      e.family('switchyard_relay_shed_total', 'counter', 'Clients accepted and closed at once because the process was out of file descriptors.', [[{}, relay.stats.shed]]);
      break;
    case 'node':
      break;
    default:
      relay satisfies never;
  }
  return e.text();
}
