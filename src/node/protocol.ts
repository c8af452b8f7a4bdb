/**
 * The messages between a node's master and its proxy processes, over the Node IPC channel
 * (JSON; one channel per proxy, in order). Listening sockets and the shared counters' file do
 * not fit in JSON: they go over a second channel, a unix socket pair (handoff.ts), just before
 * the message that names them.
 *
 * Master → proxy: the proxy's configuration (init), each tenant's port, router and limits,
 * requests that expect an answer (`seq`), and the answers to the proxy's router calls.
 * Proxy → master: router calls, releases of routers no connection uses any more, rejections
 * (the master keeps each tenant's ring), and answers.
 */
import type { Limits } from '../config.js';
import type { RelayFigures } from '../metrics/stats.js';
import type { CloseReason } from '../errors.js';
import type { ConnInfo, RouterHooks } from '../sandbox/router.js';

/** A router as proxies know it: an id in the master's registry, with its hooks once known. */
export interface RouterRef {
  readonly id: number;
  readonly hooks?: RouterHooks;
}

/** What a proxy needs to build a tenant's backend policy: every rule's text, and the service's own ports. */
export interface PolicySpec {
  readonly rules: readonly string[];
  readonly ownPorts: { readonly range: readonly [number, number]; readonly extra: readonly number[] };
}

/** A gradual rollout's router, and the share of clients (by address) that get it (routing/rollout.ts). */
export interface CandidateRef {
  readonly router: RouterRef;
  readonly percent: number;
  readonly salt: number;
}

export interface TenantSpecMessage {
  readonly name: string;
  readonly port: number;
  readonly limits: Limits;
  readonly policy: PolicySpec | undefined;
  readonly router: RouterRef;
  readonly candidate?: CandidateRef;
}

/** A tenant's counters as one proxy saw them (TenantStats, and the bytes of its open connections). */
export interface TenantFigures {
  readonly connections: number;
  readonly active: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly decisions: Readonly<Record<string, number>>;
  readonly routerErrors: Readonly<Record<string, number>>;
  readonly routerCallBuckets: readonly number[];
  readonly routerCallSeconds: number;
  readonly rejections: Readonly<Record<string, number>>;
}

export interface ProxyFigures {
  readonly tenants: Readonly<Record<string, TenantFigures>>;
  readonly relay: RelayFigures;
}

/** Requests a proxy answers with `{ t: 'done', seq, value }`. */
export type ProxyRequest =
  | { readonly t: 'tenant'; readonly tenant: TenantSpecMessage; readonly sockets: number }
  | { readonly t: 'router'; readonly name: string; readonly router: RouterRef; readonly candidate?: CandidateRef }
  | { readonly t: 'limits'; readonly name: string; readonly limits: Limits; readonly policy: PolicySpec | undefined }
  | { readonly t: 'remove'; readonly name: string }
  | { readonly t: 'close'; readonly name: string }
  | { readonly t: 'kill'; readonly name: string }
  | { readonly t: 'stats' }
  | { readonly t: 'log-level'; readonly level: string };

export type ToProxy =
  | { readonly t: 'init'; readonly index: number; readonly row: number; readonly counters: { readonly base: number; readonly ports: number; readonly rows: number }; readonly logLevel: string }
  | (ProxyRequest & { readonly seq: number })
  /** The answer to a router call. */
  | { readonly t: 'ret'; readonly id: number; readonly value?: unknown; readonly error?: { readonly reason: CloseReason; readonly message: string } }
  /** Stop accepting on every port, finish the open connections, then exit. */
  | { readonly t: 'drain' }
  /** Close every connection now, then exit. */
  | { readonly t: 'exit' };

export type RouterOp = 'warm' | 'accept' | 'route' | 'connect-error' | 'inactivity-error';

export type FromProxy =
  | { readonly t: 'ready' }
  | { readonly t: 'done'; readonly seq: number; readonly value?: unknown; readonly error?: string }
  | { readonly t: 'call'; readonly id: number; readonly router: number; readonly op: RouterOp; readonly conn?: ConnInfo; readonly text?: string }
  | { readonly t: 'release'; readonly router: number }
  | {
      readonly t: 'rejected';
      readonly name: string;
      readonly time: string;
      readonly client: string;
      readonly reason: CloseReason;
      readonly message: string;
      readonly firstBytes: string;
    };
