import { scriptLimits } from '../config.js';
import type { Logger } from '../log.js';

export type LogStream = 'log' | 'error';

/**
 * Where a tenant's console lines go: the service log, as JSON lines carrying the tenant,
 * through a token bucket so a chatty router cannot flood it. Dropped lines are counted and
 * reported once the bucket refills.
 */
export class RouterConsole {
  readonly #log: Logger;
  #tokens: number = scriptLimits.logBurst;
  #refilledAt = Date.now();
  #dropped = 0;

  constructor(log: Logger, tenant: string) {
    this.#log = log.child({ tenant, source: 'router' });
  }

  write(stream: LogStream, line: string): void {
    const now = Date.now();
    this.#tokens = Math.min(
      scriptLimits.logBurst,
      this.#tokens + ((now - this.#refilledAt) / 1000) * scriptLimits.logLinesPerSecond,
    );
    this.#refilledAt = now;
    if (this.#tokens < 1) {
      this.#dropped++;
      return;
    }
    this.#tokens--;
    if (this.#dropped > 0) {
      this.#log.warn({ dropped: this.#dropped }, 'router log lines dropped by the rate limit');
      this.#dropped = 0;
    }
    if (stream === 'error') this.#log.error({ stream }, line);
    else this.#log.info({ stream }, line);
  }

  /** A message about the router from the service itself (not rate-limited). */
  warn(message: string): void {
    this.#log.warn({ source: 'switchyard' }, message);
  }

  /** Lines the sandbox itself dropped past the per-call cap. */
  droppedInSandbox(count: number): void {
    this.#dropped += count;
  }
}
