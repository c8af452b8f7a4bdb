import { scriptLimits } from '../config.js';
import type { Logger } from '../log.js';

export type LogStream = 'log' | 'error';

/** Where console lines go besides the service log: the tenant's own log, the terminal of `router try`. */
export interface ConsoleSink {
  line(stream: LogStream, line: string, version: number | undefined): void;
  /** Lines the rate limit dropped, once it lets lines through again. */
  dropped(count: number): void;
}

/** The token bucket of one tenant, shared by the consoles of each of its router versions. */
interface Bucket {
  tokens: number;
  refilledAt: number;
  dropped: number;
}

/**
 * Where a tenant's console lines go: the service log, as JSON lines carrying the tenant, and
 * the sink (the tenant's own log), through a token bucket so a chatty router cannot flood
 * either. Dropped lines are counted and reported once the bucket refills.
 */
export class RouterConsole {
  readonly #log: Logger;
  readonly #sink: ConsoleSink | undefined;
  readonly #bucket: Bucket;
  #version: number | undefined;

  /** `of`: for forVersion, the version and the bucket it shares (`log` is then the tenant's already). */
  constructor(log: Logger, tenant: string, sink?: ConsoleSink, of?: { readonly bucket: Bucket; readonly version: number | undefined }) {
    this.#log = of === undefined ? log.child({ tenant, source: 'router' }) : log;
    this.#sink = sink;
    this.#bucket = of?.bucket ?? { tokens: scriptLimits.logBurst, refilledAt: Date.now(), dropped: 0 };
    this.#version = of?.version;
  }

  /**
   * The console of one version of the tenant's router: its lines say which (once known: a
   * pushed script is loaded before it is stored and numbered, see `tag`), and share the
   * tenant's bucket.
   */
  forVersion(version?: number): RouterConsole {
    return new RouterConsole(this.#log, '', this.#sink, { bucket: this.#bucket, version });
  }

  /** Names the version whose lines these are, from now on (a console made by forVersion()). */
  tag(version: number): void {
    this.#version = version;
  }

  write(stream: LogStream, line: string): void {
    const b = this.#bucket;
    const now = Date.now();
    b.tokens = Math.min(scriptLimits.logBurst, b.tokens + ((now - b.refilledAt) / 1000) * scriptLimits.logLinesPerSecond);
    b.refilledAt = now;
    if (b.tokens < 1) {
      b.dropped++;
      return;
    }
    b.tokens--;
    if (b.dropped > 0) {
      this.#log.warn({ dropped: b.dropped }, 'router log lines dropped by the rate limit');
      this.#sink?.dropped(b.dropped);
      b.dropped = 0;
    }
    const version = this.#version === undefined ? {} : { version: this.#version };
    if (stream === 'error') this.#log.error({ stream, ...version }, line);
    else this.#log.info({ stream, ...version }, line);
    this.#sink?.line(stream, line, this.#version);
  }

  /** A message about the router from the service itself (not rate-limited). */
  warn(message: string): void {
    this.#log.warn({ source: 'switchyard' }, message);
  }

  /** Lines the sandbox itself dropped past the per-call cap. */
  droppedInSandbox(count: number): void {
    this.#bucket.dropped += count;
  }
}
