import { writeSync } from 'node:fs';
import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * The service log: pino JSON lines on stdout. Payload bytes are never logged at info level.
 *
 * Lines are written synchronously, and those of one turn of the event loop leave together in
 * one write, once the turn's I/O callbacks have run. pino's asynchronous default costs a
 * thread-pool hop and three context switches per line; a write per line costs a system call
 * per connection (bench/ measured both). A line waits at most until the end of the current
 * turn, and the rest are written out when the process exits, however it exits.
 */
export function createLogger(level = process.env.SWITCHYARD_LOG_LEVEL ?? 'info'): Logger {
  const children = new Set<WeakRef<Logger>>();
  const root = pino({ level, base: { pid: process.pid }, onChild: (child) => children.add(new WeakRef(child)) }, new TurnBatchedStdout());
  families.set(root, children);
  return root;
}

/** Each root logger's children (pino children keep the level they were created with). */
const families = new WeakMap<Logger, Set<WeakRef<Logger>>>();

/** Sets the level of a logger made by createLogger and of every child it has. */
export function setLogLevel(root: Logger, level: string): void {
  root.level = level;
  const children = families.get(root);
  if (children === undefined) return;
  for (const ref of children) {
    const child = ref.deref();
    if (child === undefined) children.delete(ref);
    else child.level = level;
  }
}

/** The levels a logger accepts. */
export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** Characters of lines after which a busy turn writes what it has without waiting for its end. */
const batchChars = 16 * 1024;
/** Waited on (never notified) to sleep a moment when stdout is a full non-blocking pipe. */
const pauseCell = new Int32Array(new SharedArrayBuffer(4));

class TurnBatchedStdout {
  #lines: string[] = [];
  #chars = 0;
  #scheduled = false;

  constructor() {
    process.on('exit', this.#flush);
  }

  write(line: string): void {
    this.#lines.push(line);
    this.#chars += line.length;
    if (this.#chars >= batchChars) this.#flush();
    else if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(this.#flush);
    }
  }

  readonly #flush = (): void => {
    this.#scheduled = false;
    if (this.#lines.length === 0) return;
    const lines = this.#lines;
    this.#lines = [];
    this.#chars = 0;
    // A node's processes share one stdout: a write of at most PIPE_BUF bytes to a pipe is never
    // interleaved with another's, so lines leave in groups that fit (a longer line alone).
    let group: string[] = [];
    let bytes = 0;
    for (const line of lines) {
      const n = Buffer.byteLength(line, 'utf8');
      if (bytes + n > pipeBuf && group.length > 0) {
        writeOut(Buffer.from(group.join(''), 'utf8'));
        group = [];
        bytes = 0;
      }
      group.push(line);
      bytes += n;
    }
    if (group.length > 0) writeOut(Buffer.from(group.join(''), 'utf8'));
  };
}

/** Bytes a write to a pipe may carry without being interleaved with another process's (Linux). */
const pipeBuf = 4096;

/** Writes all of `data` to stdout now. */
function writeOut(data: Buffer): void {
  let written = 0;
  while (written < data.length) {
    try {
      written += writeSync(1, data, written);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // A full pipe: wait for its reader, as a blocking write would. Anything else (the
      // reader is gone): the lines have nowhere to go.
      if (code !== 'EAGAIN') return;
      Atomics.wait(pauseCell, 0, 0, 1);
    }
  }
}
