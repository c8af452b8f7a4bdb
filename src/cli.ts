#!/usr/bin/env -S node --no-node-snapshot
/**
 * The `switchyard` command. The only place that exits the process: it parses flags, starts
 * the service, and turns signals into a graceful or a bounded shutdown.
 */
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { defaultLimits, shutdownGraceMs, type Limits } from './config.js';
import { RouterLoadError } from './errors.js';
import { createLogger, type Logger } from './log.js';
import { startSingleRouter, type Service } from './single.js';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

function integer(min: number, max: number) {
  return (text: string): number => {
    if (!/^\d+$/.test(text)) throw new InvalidArgumentError(`expected an integer from ${min} to ${max}`);
    const n = Number(text);
    if (n < min || n > max) throw new InvalidArgumentError(`expected an integer from ${min} to ${max}`);
    return n;
  };
}

/** Limit flags shared by every mode, each defaulting to config.ts. */
function limitOptions(): Option[] {
  const d = defaultLimits;
  const ms = integer(1, 2_147_483_647);
  return [
    new Option('--router-timeout <ms>', 'time limit of one router call').argParser(ms).default(d.routerTimeoutMs),
    new Option('--memory <mb>', 'heap limit of a router isolate').argParser(integer(8, 4096)).default(d.memoryMb),
    new Option('--max-buffer <bytes>', 'bytes buffered before a decision').argParser(integer(1, 64 * 1024 * 1024)).default(d.maxBufferBytes),
    new Option('--decision-timeout <ms>', 'time from accept to a decision').argParser(ms).default(d.decisionTimeoutMs),
    new Option('--max-connections <n>', 'concurrent client connections').argParser(integer(1, 10_000_000)).default(d.maxConnections),
    new Option('--connect-timeout <ms>', 'time one connect attempt may take').argParser(ms).default(d.connectTimeoutMs),
    new Option('--connect-tries <n>', 'connect attempts per backend before the next').argParser(integer(1, 1000)).default(d.connectTries),
    new Option('--connect-retry-delay <ms>', 'pause between connect attempts').argParser(integer(0, 600_000)).default(d.connectRetryDelayMs),
    new Option('--inactivity-timeout <ms>', 'idle relay timeout when the router sets none (0: none)').argParser(integer(0, 2_147_483_647)).default(d.inactivityTimeoutMs),
  ];
}

interface LimitFlags {
  routerTimeout: number;
  memory: number;
  maxBuffer: number;
  decisionTimeout: number;
  maxConnections: number;
  connectTimeout: number;
  connectTries: number;
  connectRetryDelay: number;
  inactivityTimeout: number;
}

function limitsFrom(f: LimitFlags): Limits {
  return {
    routerTimeoutMs: f.routerTimeout,
    memoryMb: f.memory,
    maxBufferBytes: f.maxBuffer,
    decisionTimeoutMs: f.decisionTimeout,
    maxConnections: f.maxConnections,
    connectTimeoutMs: f.connectTimeout,
    connectTries: f.connectTries,
    connectRetryDelayMs: f.connectRetryDelay,
    inactivityTimeoutMs: f.inactivityTimeout,
  };
}

/**
 * QUIT: stop accepting and wait for every connection, however long. TERM and INT: stop
 * accepting, wait up to the grace period, then close what is left. A second TERM or INT
 * closes everything at once. Either way the process exits 0.
 *
 * The handlers are installed before the service starts, so a signal that arrives while it
 * starts (or right after it says "listening") is acted on as soon as the service exists.
 */
function handleSignals(log: Logger): { attach(service: Service): void } {
  let service: Service | undefined;
  let requested: NodeJS.Signals | undefined;
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (service === undefined) {
      requested ??= signal;
      return;
    }
    if (stopping) {
      if (signal !== 'SIGQUIT') service.destroy();
      return;
    }
    stopping = true;
    const graceMs = signal === 'SIGQUIT' ? undefined : shutdownGraceMs;
    const closed = service.close(); // stops accepting before anything is logged
    log.info({ signal, graceMs: graceMs ?? null }, 'shutting down: no longer accepting');
    const current = service;
    const timer =
      graceMs === undefined
        ? undefined
        : setTimeout(() => {
            log.warn({ signal }, 'grace period over: closing remaining connections');
            current.destroy();
          }, graceMs);
    void closed.then(() => {
      if (timer !== undefined) clearTimeout(timer);
      log.info('stopped');
      process.exit(0);
    });
  };
  for (const signal of ['SIGQUIT', 'SIGTERM', 'SIGINT'] as const) process.on(signal, () => stop(signal));
  return {
    attach(s: Service): void {
      service = s;
      if (requested !== undefined) stop(requested);
    },
  };
}

function fail(message: string): never {
  process.stderr.write(`switchyard: ${message}\n`);
  process.exit(1);
}

const program = new Command('switchyard')
  .description('A content-aware TCP routing proxy; routers run sandboxed in isolated-vm isolates.')
  .version(pkg.version, '-V, --version', 'print the version')
  .helpOption('--help', 'show this help')
  .addHelpText('after', '\nExample:\n  switchyard -c routers/git.js -p 9418')
  .option('-c, --config <file>', 'router script (single-router mode)')
  .option('-h, --host <host>', 'address to listen on', '0.0.0.0')
  .option('-p, --port <port>', 'port to listen on (0: any free port)', integer(0, 65535), 5432)
  .option('--log-level <level>', 'fatal, error, warn, info, debug or trace', 'info');
for (const option of limitOptions()) program.addOption(option);

program.action(async (opts: LimitFlags & { config?: string; host: string; port: number; logLevel: string }) => {
  if (opts.config === undefined) {
    program.outputHelp({ error: true });
    fail('missing -c ROUTER.js');
  }
  const log = createLogger(opts.logLevel);
  const signals = handleSignals(log);
  let service: Service;
  try {
    service = await startSingleRouter({ file: opts.config, host: opts.host, port: opts.port, limits: limitsFrom(opts), log });
  } catch (err) {
    if (err instanceof RouterLoadError) {
      const at = err.line === undefined ? '' : `:${err.line}:${err.column}`;
      fail(`${opts.config}${at}: ${err.message} (${err.code})`);
    }
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') fail(`${opts.config}: no such file`);
    if (e.code === 'EADDRINUSE') fail(`${opts.host}:${opts.port} is already in use`);
    if (e.code === 'EACCES') fail(`not allowed to listen on ${opts.host}:${opts.port}`);
    fail(e.message);
  }
  signals.attach(service);
});

await program.parseAsync();
