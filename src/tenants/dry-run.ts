/**
 * Dry runs: what a router decides for some bytes, and whether policy would let it connect, with
 * no backend contacted. One dry run answers `POST …/route` and `switchyard router try`; a series
 * of them replays a tenant's captured rejections against two versions of its router
 * (`POST …/router/replay`) to show where their decisions differ before the newer one goes live.
 */
import { failureView, type FailureView } from '../authoring/diagnostics.js';
import { CloseReason, RouterError } from '../errors.js';
import type { Rejection } from '../connection/connection.js';
import { type Decision, decisionView } from '../routing/decision.js';
import { admissionReason, admit, type BackendPolicy } from '../routing/policy.js';
import type { CachingResolver } from '../routing/resolver.js';
import type { ConnInfo, Router } from '../sandbox/router.js';

/** What a dry run answers: a decision and the policy's verdict, or the router's failure. */
export type DryRunResult =
  | { readonly decision: Record<string, unknown>; readonly allowed: boolean; readonly reason?: string; readonly durationMs: number }
  | (Omit<FailureView, 'code'> & { readonly code: string; readonly reason: string; readonly durationMs: number });

/** Backends are checked as a connection would check them; without a gate (single-router mode) any is allowed. */
export type Gate = { readonly policy: BackendPolicy; readonly resolver: CachingResolver } | undefined;

/** Calls `router` on `data` as the connection `conn` would, and checks its decision against `gate`. `source` gives failures a code frame. */
export async function dryRun(router: Router, source: string | undefined, data: string, conn: ConnInfo, gate: Gate): Promise<DryRunResult> {
  const started = performance.now();
  const ms = (): number => Math.round((performance.now() - started) * 1000) / 1000;
  let decision: Decision;
  try {
    decision = await router.route(data, conn);
  } catch (err) {
    const e = err instanceof RouterError ? err : new RouterError(CloseReason.routerUnavailable, String(err));
    return { ...failureView(e, source), reason: e.reason, durationMs: ms() };
  }
  const durationMs = ms();
  if (decision.kind !== 'remote' || gate === undefined) return { decision: decisionView(decision), allowed: true, durationMs };
  const admission = await admit(decision.remotes, gate.policy, gate.resolver);
  if (admission.candidates.length > 0) return { decision: decisionView(decision), allowed: true, durationMs };
  return { decision: decisionView(decision), allowed: false, reason: admissionReason(admission), durationMs };
}

/** One rejection replayed: what it was, and what each version makes of its first bytes. */
export interface ReplayedRejection {
  readonly time: string;
  readonly client: string;
  /** Why the connection was rejected then. */
  readonly rejected: string;
  readonly firstBytes: string;
  readonly live: DryRunResult;
  readonly candidate: DryRunResult;
  readonly differs: boolean;
}

export interface ReplayReport {
  readonly version: number;
  /** The live version it was compared with. */
  readonly against: number;
  /** Rejections replayed, and those skipped for having no bytes (refused at accept, say). */
  readonly replayed: number;
  readonly skipped: number;
  readonly differ: number;
  /** Newest first. */
  readonly results: readonly ReplayedRejection[];
}

/** The two routers compared, and the connection each rejection is replayed as. */
export interface ReplayInput {
  readonly version: number;
  readonly against: number;
  readonly live: { readonly router: Router; readonly source: string };
  readonly candidate: { readonly router: Router; readonly source: string };
  readonly conn: (client: string) => ConnInfo;
  readonly gate: Gate;
}

/**
 * Replays `rejections` (newest first), one after another so that a tenant's replay takes no
 * more of its workers than one connection would, against both routers.
 */
export async function replay(rejections: readonly Rejection[], input: ReplayInput): Promise<ReplayReport> {
  const results: ReplayedRejection[] = [];
  let skipped = 0;
  for (const r of [...rejections].reverse()) {
    if (r.firstBytes.length === 0) {
      skipped++;
      continue;
    }
    const data = r.firstBytes.toString('latin1');
    const conn = input.conn(r.client);
    const live = await dryRun(input.live.router, input.live.source, data, conn, input.gate);
    const candidate = await dryRun(input.candidate.router, input.candidate.source, data, conn, input.gate);
    results.push({
      time: r.time.toISOString(),
      client: r.client,
      rejected: r.reason,
      firstBytes: r.firstBytes.toString('base64'),
      live,
      candidate,
      differs: gist(live) !== gist(candidate),
    });
  }
  return { version: input.version, against: input.against, replayed: results.length, skipped, differ: results.filter((r) => r.differs).length, results };
}

/** What two results are compared by: the decision and the verdict, or the kind of failure (not its wording, which names places). */
function gist(r: DryRunResult): string {
  return 'decision' in r ? JSON.stringify([r.decision, r.allowed]) : JSON.stringify(['failed', r.reason]);
}

/** A client as a rejection names it (`address:port`, an IPv6 address unbracketed) as the fields of `conn`. */
export function clientOf(client: string): { address: string; port: number } {
  const at = client.lastIndexOf(':');
  return { address: client.slice(0, at), port: Number(client.slice(at + 1)) || 0 };
}
