/**
 * Every failure Switchyard reports has a class here and a stable `code`. Codes are what logs,
 * metrics and rejections carry; messages are for people and may change.
 */

/** Why a client connection was closed without being relayed. One value per rejection reason. */
export const CloseReason = {
  routerClose: 'router_close',
  routerThrow: 'router_throw',
  routerTimeout: 'router_timeout',
  routerMemory: 'router_memory',
  routerInvalid: 'router_invalid',
  routerUnavailable: 'router_unavailable',
  sourcePenalty: 'source_penalty',
  policyDenied: 'policy_denied',
  connectFailed: 'connect_failed',
  connectionLimit: 'connection_limit',
  bufferLimit: 'buffer_limit',
  decisionTimeout: 'decision_timeout',
  clientClosed: 'client_closed',
  inactivityTimeout: 'inactivity_timeout',
  shutdown: 'shutdown',
  killed: 'killed',
} as const;
export type CloseReason = (typeof CloseReason)[keyof typeof CloseReason];

export class SwitchyardError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A place in a router's source, and the router's own stack frames there (innermost first). */
export interface SourceLocation {
  readonly line: number;
  readonly column: number;
  readonly stack: readonly string[];
}

/** A router call failed: it threw, ran out of time or memory, or returned something invalid. */
export class RouterError extends SwitchyardError {
  readonly reason: CloseReason;
  /** Where in the router's source a thrown error came from, when its stack says. */
  readonly where: SourceLocation | undefined;
  /**
   * A time-out the router is not to blame for: the call used under a quarter of its time limit as
   * CPU, so it spent the rest waiting for a busy CPU. The connection is closed all the same (the
   * limit is of wall time), but it is no strike towards the slow lane or a source penalty.
   */
  readonly starved: boolean;
  constructor(reason: CloseReason, message: string, options?: ErrorOptions & { starved?: boolean; where?: SourceLocation | undefined }) {
    super(`ERR_${reason.toUpperCase()}`, message, options);
    this.reason = reason;
    this.starved = options?.starved === true;
    this.where = options?.where;
  }

  /** A time-out that counts against the router: one it spent its CPU on. */
  get isStrike(): boolean {
    return this.reason === CloseReason.routerTimeout && !this.starved;
  }
}

/** A decision that is not one of the shapes of the contract. */
export class InvalidDecisionError extends RouterError {
  constructor(message: string) {
    super(CloseReason.routerInvalid, message);
  }
}

/** A router script that cannot be loaded: it does not compile, throws, times out or never calls proxy(). */
export class RouterLoadError extends SwitchyardError {
  readonly line: number | undefined;
  readonly column: number | undefined;
  /** The router's own stack frames, for a script that threw while loading. */
  readonly frames: readonly string[] | undefined;
  constructor(code: RouterLoadCode, message: string, position?: { line: number; column: number; stack?: readonly string[] | undefined }) {
    super(code, message);
    this.line = position?.line;
    this.column = position?.column;
    this.frames = position?.stack !== undefined && position.stack.length > 0 ? position.stack : undefined;
  }
}
export type RouterLoadCode =
  | 'ERR_ROUTER_SYNTAX'
  | 'ERR_ROUTER_THROW'
  | 'ERR_ROUTER_TIMEOUT'
  | 'ERR_ROUTER_MEMORY'
  | 'ERR_ROUTER_NO_PROXY'
  | 'ERR_ROUTER_CRASH'
  | 'ERR_ROUTER_TOO_LARGE';

/** Every candidate backend of a `remote` decision refused or timed out. */
export class ConnectError extends SwitchyardError {
  readonly backend: string;
  constructor(backend: string, message: string, options?: ErrorOptions) {
    super('ERR_CONNECT_FAILED', message, options);
    this.backend = backend;
  }
}

/**
 * Why the tenant service refused a request, as a kind the admin API maps to a status code
 * (admin/server.ts) and a stable `code`. The domain knows nothing of HTTP.
 */
export type RefusalKind = 'invalid' | 'not_found' | 'conflict' | 'rejected' | 'too_many' | 'busy';

export class ServiceRefusal extends SwitchyardError {
  readonly kind: RefusalKind;
  /** Fields the answer carries besides `error` (a script's `line` and `column`, say). */
  readonly details: Readonly<Record<string, unknown>>;
  /** For `too_many` and `busy`: when to try again, in seconds. */
  readonly retryAfterS: number | undefined;
  constructor(kind: RefusalKind, code: string, message: string, options: { details?: Record<string, unknown>; retryAfterS?: number } = {}) {
    super(code, message);
    this.kind = kind;
    this.details = options.details ?? {};
    this.retryAfterS = options.retryAfterS;
  }
}
