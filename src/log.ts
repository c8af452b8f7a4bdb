import { pino, type Logger } from 'pino';

export type { Logger };

/** The service log: pino JSON lines on stdout. Payload bytes are never logged at info level. */
export function createLogger(level = process.env.SWITCHYARD_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid } });
}
