/**
 * Every default and limit of Switchyard, in one place. CONTRACT §5 lists the per-tenant limits;
 * the rest are service-wide knobs an operator can change from the command line.
 */

/** Per-tenant limits (CONTRACT §5) plus the connect policy ProxyMachine used. */
export interface Limits {
  /** Wall time of one router call on its isolate. */
  readonly routerTimeoutMs: number;
  /** Heap limit of a tenant's isolate. */
  readonly memoryMb: number;
  /** Bytes buffered from a client before a decision. */
  readonly maxBufferBytes: number;
  /** From accept to a decision. */
  readonly decisionTimeoutMs: number;
  /** Concurrent client connections. */
  readonly maxConnections: number;
  /** One connect attempt to a backend. */
  readonly connectTimeoutMs: number;
  /** Connect attempts to the same backend before the next candidate (ProxyMachine: 10). */
  readonly connectTries: number;
  /** Pause between two attempts on the same backend (ProxyMachine: 100 ms). */
  readonly connectRetryDelayMs: number;
  /** Inactivity timeout once relaying when the decision sets none; 0 means none (ProxyMachine). */
  readonly inactivityTimeoutMs: number;
}

export const defaultLimits: Limits = Object.freeze({
  routerTimeoutMs: 50,
  memoryMb: 32,
  maxBufferBytes: 65536,
  decisionTimeoutMs: 10_000,
  maxConnections: 10_000,
  connectTimeoutMs: 10_000,
  connectTries: 10,
  connectRetryDelayMs: 100,
  inactivityTimeoutMs: 0,
});

/**
 * Every limit, declared once: its command-line flag and help, the values it accepts, and
 * whether a tenant's own value may be set (`PUT …/limits`, keyed by `key`, as in the
 * configuration file's `limits`). The CLI options and the validation of per-tenant and
 * configuration-file values are all derived from this table.
 */
export const limitTable = [
  { key: 'routerTimeoutMs', flag: '--router-timeout', arg: 'ms', min: 1, max: 60_000, tenant: true, help: 'time limit of one router call' },
  { key: 'memoryMb', flag: '--memory', arg: 'mb', min: 8, max: 4096, tenant: true, help: 'heap limit of a router isolate' },
  { key: 'maxBufferBytes', flag: '--max-buffer', arg: 'bytes', min: 1, max: 64 * 1024 * 1024, tenant: true, help: 'bytes buffered before a decision' },
  { key: 'decisionTimeoutMs', flag: '--decision-timeout', arg: 'ms', min: 1, max: 3_600_000, tenant: true, help: 'time from accept to a decision' },
  { key: 'maxConnections', flag: '--max-connections', arg: 'n', min: 0, max: 10_000_000, tenant: true, help: 'concurrent client connections (0: refuse every client)' },
  { key: 'connectTimeoutMs', flag: '--connect-timeout', arg: 'ms', min: 1, max: 3_600_000, tenant: true, help: 'time one connect attempt may take' },
  { key: 'connectTries', flag: '--connect-tries', arg: 'n', min: 1, max: 1000, tenant: false, help: 'connect attempts per backend before the next' },
  { key: 'connectRetryDelayMs', flag: '--connect-retry-delay', arg: 'ms', min: 0, max: 600_000, tenant: false, help: 'pause between connect attempts' },
  { key: 'inactivityTimeoutMs', flag: '--inactivity-timeout', arg: 'ms', min: 0, max: 2_147_483_647, tenant: false, help: 'idle relay timeout when the router sets none (0: none)' },
] as const satisfies readonly { key: keyof Limits; flag: string; arg: string; min: number; max: number; tenant: boolean; help: string }[];

export type LimitSpec = (typeof limitTable)[number];

/** Whether `value` is a valid `spec` value; the reason when it is not. */
export function checkLimit(spec: LimitSpec, value: unknown): string | undefined {
  if (typeof value === 'number' && Number.isInteger(value) && value >= spec.min && value <= spec.max) return undefined;
  return `${spec.key} must be an integer from ${spec.min} to ${spec.max}`;
}

/** Caps on what a router may hand back (CONTRACT §2). */
export const decisionLimits = Object.freeze({
  /** `host:port` of one candidate: a 253-character name, brackets and a port. */
  maxRemoteChars: 262,
  maxRemotes: 16,
  /** `data`, `reply` and `close` strings. */
  maxStringChars: 65536,
});

/** Caps on what a router script may be and print. */
export const scriptLimits = Object.freeze({
  maxScriptBytes: 256 * 1024,
  /** Time a script may run while loading (top-level code). */
  loadTimeoutMs: 1000,
  /** console lines kept per router call, and characters per line. */
  maxLogLinesPerCall: 20,
  maxLogLineChars: 1024,
  /** console lines per second per tenant reaching the service log, and the burst allowed. */
  logLinesPerSecond: 50,
  logBurst: 100,
});

/** Shutdown: TERM and INT wait this long for connections before closing the rest. */
export const shutdownGraceMs = 10_000;

/** Node's timers overflow past 2^31-1 ms; longer timeouts are clamped to this. */
export const maxTimerMs = 2_147_483_647;

/** The sandbox worker pool (see sandbox/pool.ts). */
export const sandboxDefaults = Object.freeze({
  /** Shared worker processes. */
  workers: 2,
  /** Calls one worker runs at once. */
  concurrency: 4,
  /**
   * Blame (see sandbox/blame.ts), kept per tenant name across new versions of its router. A
   * worker crash or hang is blamed only on the call that was running: `quarantineStrikes` of them
   * within `strikeWindowMs` move the tenant to a quarantine worker of its own, until
   * `quarantineQuietMs` pass without a strike.
   */
  quarantineStrikes: 3,
  strikeWindowMs: 10 * 60_000,
  quarantineQuietMs: 10 * 60_000,
  /**
   * Calls of one tenant that ran into their time limit (or hung) within `strikeWindowMs` before
   * the tenant moves to the slow lane: a shared worker at the lowest CPU priority, where a router
   * that spins takes CPU time only when other workers leave it. It returns after
   * `slowLaneQuietMs` without a time-out.
   */
  slowLaneStrikes: 1,
  slowLaneQuietMs: 10 * 60_000,
  /**
   * A client source (an IPv4 address, an IPv6 /64) whose calls to one tenant ran into the time
   * limit, hung or crashed a worker `penaltyStrikes` times within `penaltyWindowMs` has its new
   * connections to that tenant refused (`source_penalty`) for `penaltyMs`, doubling for each
   * penalty that follows within `penaltyWindowMs` of the last, up to `penaltyMaxMs`. At most
   * `penaltySources` sources are tracked per tenant. Nothing refuses a tenant's other clients.
   */
  penaltyStrikes: 3,
  penaltyWindowMs: 10_000,
  penaltyMs: 5_000,
  penaltyMaxMs: 120_000,
  penaltySources: 4096,
  /** How far past its own limit a call may run before its worker is killed. */
  stuckGraceMs: 3000,
  /** A worker over this resident size is replaced once its calls drain (which drops its isolates). */
  maxWorkerRssMb: 1024,
  /** Tenant isolates kept built, and their heap in MiB; past either the least recently used are unloaded. */
  maxWarmIsolates: 1000,
  maxWarmMb: 2048,
});
