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
import { parseAllowRule, type AllowRule } from './routing/policy.js';
import { addClientCommands } from './client/admin-client.js';
import { startHosting } from './serve.js';
import { startSingleRouter, type Service } from './single.js';
import { sandboxDefaults } from './config.js';
import { defaultSandboxUser, makeUndumpable } from './sandbox/confine.js';

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

/** `--sandbox-user`, for both modes. */
function sandboxUserOption(): Option {
  return new Option('--sandbox-user <name>', 'user sandbox workers run as when the service runs as root').default(defaultSandboxUser);
}

function fail(message: string): never {
  process.stderr.write(`switchyard: ${message}\n`);
  process.exit(1);
}

const program = new Command('switchyard')
  .description('A content-aware TCP routing proxy; routers run sandboxed in isolated-vm isolates.')
  .version(pkg.version, '-V, --version', 'print the version')
  .helpOption('--help', 'show this help')
  .enablePositionalOptions()
  .addHelpText('after', '\nExamples:\n  switchyard -c routers/git.js -p 9418\n  switchyard serve')
  .option('-c, --config <file>', 'router script (single-router mode)')
  .option('-h, --host <host>', 'address to listen on', '0.0.0.0')
  .option('-p, --port <port>', 'port to listen on (0: any free port)', integer(0, 65535), 5432)
  .option('--log-level <level>', 'fatal, error, warn, info, debug or trace', 'info')
  .addOption(sandboxUserOption());
for (const option of limitOptions()) program.addOption(option);

program.action(async (opts: LimitFlags & { config?: string; host: string; port: number; logLevel: string; sandboxUser: string }) => {
  if (opts.config === undefined) {
    program.outputHelp({ error: true });
    fail('missing -c ROUTER.js');
  }
  // Nothing of this process (the operator token in its environment, clients' bytes) is readable through /proc.
  makeUndumpable();
  const log = createLogger(opts.logLevel);
  const signals = handleSignals(log);
  let service: Service;
  try {
    service = await startSingleRouter({ file: opts.config, host: opts.host, port: opts.port, limits: limitsFrom(opts), log, sandboxUser: opts.sandboxUser });
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

function hostPort(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  const port = Number(m?.[3]);
  if (m === null || port > 65535) throw new InvalidArgumentError('expected HOST:PORT, as 127.0.0.1:7070');
  return { host: m[1] ?? m[2]!, port };
}

function portRange(text: string): [number, number] {
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(text);
  const lo = Number(m?.[1]);
  const hi = Number(m?.[2]);
  if (m === null || lo < 1 || hi > 65535 || lo > hi) throw new InvalidArgumentError('expected LO-HI, as 20000-20999');
  return [lo, hi];
}

function allowRule(text: string, previous: AllowRule[] = []): AllowRule[] {
  const rule = parseAllowRule(text);
  if (typeof rule === 'string') throw new InvalidArgumentError(rule);
  return [...previous, rule];
}

const serve = program
  .command('serve')
  .description('hosting mode: tenants, each with a port and a router, managed over the admin API')
  .helpOption('--help', 'show this help')
  .option('--data <dir>', 'data directory', './switchyard-data')
  .option('--admin <host:port>', 'admin API address', hostPort, { host: '127.0.0.1', port: 7070 })
  .option('--ports <lo-hi>', 'tenant ports (inclusive)', portRange, [20000, 20999] as [number, number])
  .option('--bind <host>', 'address tenant ports are bound on', '0.0.0.0')
  .option('--allow <rule>', 'allow backends policy denies: CIDR, CIDR:PORT or CIDR:LO-HI ([::1]/128:80); repeatable', allowRule, [])
  .option('--sandbox-workers <n>', 'sandbox worker processes', integer(1, 64), sandboxDefaults.workers)
  .option('--max-warm-isolates <n>', 'router isolates kept built; past it the least recently used are unloaded', integer(1, 1_000_000), sandboxDefaults.maxWarmIsolates)
  .option('--max-warm-mb <mb>', 'V8 heap of the isolates kept built; past it the least recently used are unloaded', integer(16, 1_000_000), sandboxDefaults.maxWarmMb)
  .addOption(sandboxUserOption())
  .option('--log-level <level>', 'fatal, error, warn, info, debug or trace', 'info');
for (const option of limitOptions()) serve.addOption(option);

serve.action(
  async (
    opts: LimitFlags & {
      data: string;
      admin: { host: string; port: number };
      ports: [number, number];
      bind: string;
      allow: AllowRule[];
      sandboxWorkers: number;
      maxWarmIsolates: number;
      maxWarmMb: number;
      sandboxUser: string;
      logLevel: string;
    },
  ) => {
    makeUndumpable();
    const log = createLogger(opts.logLevel);
    const signals = handleSignals(log);
    let service: Service;
    try {
      service = await startHosting({
        dataDir: opts.data,
        admin: opts.admin,
        ports: opts.ports,
        bindHost: opts.bind,
        allow: opts.allow,
        defaults: limitsFrom(opts),
        workers: opts.sandboxWorkers,
        maxWarmIsolates: opts.maxWarmIsolates,
        maxWarmMb: opts.maxWarmMb,
        sandboxUser: opts.sandboxUser,
        log,
        announce: (line) => process.stderr.write(`${line}\n`),
      });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'EADDRINUSE') fail(`the admin address ${opts.admin.host}:${opts.admin.port} is already in use`);
      fail(e.message);
    }
    signals.attach(service);
  },
);

addClientCommands(program);

await program.parseAsync();
