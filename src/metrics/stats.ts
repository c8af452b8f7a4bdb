import type { CloseReason } from '../errors.js';
import type { DecisionKind } from '../routing/decision.js';

/**
 * A tenant's counters, all declared here (as Envoy declares its TCP proxy stats in one
 * table). Connections update them; the metrics endpoint reads them.
 */
export class TenantStats {
  /** Client connections open now. */
  active = 0;
  /** Client connections accepted since start. */
  connections = 0;
  /** Bytes received from clients and sent to clients. */
  bytesIn = 0;
  bytesOut = 0;
  /** Decisions the router made, by kind. */
  readonly decisions: Record<DecisionKind, number> = { remote: 0, noop: 0, close: 0 };
  /** Connections closed without being relayed, by reason. */
  readonly rejections = new Map<CloseReason, number>();

  decided(kind: DecisionKind): void {
    this.decisions[kind]++;
  }

  rejected(reason: CloseReason): void {
    this.rejections.set(reason, (this.rejections.get(reason) ?? 0) + 1);
  }
}
