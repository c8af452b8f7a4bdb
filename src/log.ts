import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * The service log: pino JSON lines on stdout. Payload bytes are never logged at info level.
 * Lines are written synchronously: the asynchronous default costs a thread-pool hop and three
 * context switches per line (bench/ measured +23 µs per connection), and a line is never lost
 * when the process exits.
 */
export function createLogger(level = process.env.SWITCHYARD_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid } }, pino.destination({ dest: 1, sync: true }));
}
