import { CloseReason } from '../errors.js';
import type { DecisionKind } from '../routing/decision.js';

/** Upper bounds (seconds) of the router call duration histogram's buckets. */
export const routerCallBuckets = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1] as const;

/** Router failures by kind, as the metrics name them. */
export const routerErrorKinds = {
  [CloseReason.routerTimeout]: 'timeout',
  [CloseReason.routerMemory]: 'memory',
  [CloseReason.routerInvalid]: 'invalid',
  [CloseReason.routerThrow]: 'throw',
  [CloseReason.routerUnavailable]: 'unavailable',
  [CloseReason.sourcePenalty]: 'penalty',
} as const satisfies Partial<Record<CloseReason, string>>;
export type RouterErrorKind = (typeof routerErrorKinds)[keyof typeof routerErrorKinds];

/** What a router's calls came to: decisions by kind, failures by kind. */
export class RouterOutcomes {
  /** Decisions the router made, by kind. */
  readonly decisions: Record<DecisionKind, number> = { remote: 0, noop: 0, close: 0 };
  /** Router calls that failed, by kind. */
  readonly routerErrors: Record<RouterErrorKind, number> = { timeout: 0, memory: 0, invalid: 0, throw: 0, unavailable: 0, penalty: 0 };

  decided(kind: DecisionKind): void {
    this.decisions[kind]++;
  }

  routerFailed(reason: CloseReason): void {
    const kind = (routerErrorKinds as Partial<Record<CloseReason, RouterErrorKind>>)[reason];
    if (kind !== undefined) this.routerErrors[kind]++;
  }
}

/** Router versions whose outcomes a tenant's stats keep (the newest). */
const versionsKept = 20;

/**
 * A tenant's counters, all declared here (as Envoy declares its TCP proxy stats in one
 * table). Connections update them; the metrics endpoint reads them.
 */
export class TenantStats extends RouterOutcomes {
  /** Client connections open now. */
  active = 0;
  /** Client connections accepted since start. */
  connections = 0;
  /** Bytes received from and sent to clients of finished connections (open ones are added when read). */
  bytesIn = 0;
  bytesOut = 0;
  /**
   * The same outcomes per router version (so that a gradual rollout's versions can be compared),
   * the newest kept. Given when the counters are put together from elsewhere (a master's view of
   * its proxy processes) and these live on.
   */
  readonly versions: Map<number, RouterOutcomes>;

  constructor(versions: Map<number, RouterOutcomes> = new Map()) {
    super();
    this.versions = versions;
  }
  /** Router call durations: a count per bucket of routerCallBuckets (and one past the last), and their sum. */
  readonly routerCallBuckets: number[] = new Array<number>(routerCallBuckets.length + 1).fill(0);
  routerCallSeconds = 0;
  /** Connections closed without being relayed, by reason. */
  readonly rejections = new Map<CloseReason, number>();

  /** The outcomes of one router version, kept from now on (the oldest version kept goes past `versionsKept`). */
  version(version: number): RouterOutcomes {
    let outcomes = this.versions.get(version);
    if (outcomes === undefined) {
      outcomes = new RouterOutcomes();
      this.versions.set(version, outcomes);
      if (this.versions.size > versionsKept) this.versions.delete(Math.min(...this.versions.keys()));
    }
    return outcomes;
  }

  routerCall(seconds: number): void {
    let i = 0;
    while (i < routerCallBuckets.length && seconds > routerCallBuckets[i]!) i++;
    this.routerCallBuckets[i]!++;
    this.routerCallSeconds += seconds;
  }

  rejected(reason: CloseReason): void {
    this.rejections.set(reason, (this.rejections.get(reason) ?? 0) + 1);
  }
}

/** The native data path's figures, process-wide: the addon keeps them (`NativeRelay.stats()`). */
export interface NativeStats {
  /** Clients, dials and relays open now. */
  readonly connections: number;
  /** Pipes holding bytes for a direction now (two descriptors each), at most `maxPipes`. */
  readonly lentPipes: number;
  /** Empty pipes kept for reuse (two descriptors each), at most 64. */
  readonly sparePipes: number;
  /** Clients accepted and closed at once because the process was out of file descriptors (a counter). */
  readonly shed: number;
}

/** What the metrics show of a process's data path (`DataPath.figures()`). */
export type RelayFigures = { readonly relay: 'node' } | { readonly relay: 'splice'; readonly stats: NativeStats };
