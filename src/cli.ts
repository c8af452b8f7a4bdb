#!/usr/bin/env -S node --no-node-snapshot
/**
 * The `switchyard` command. The only place that exits the process (with runtime-gate.ts, which
 * it imports first): it parses flags, starts the service, and turns signals into a graceful or
 * a bounded shutdown.
 */
import './runtime-gate.js'; // first: refuses an unsupported Node.js before any native addon loads
import { readFileSync } from 'node:fs';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { defaultLimits, limitTable, shutdownGraceMs, type Limits } from './config.js';
import { RouterLoadError } from './errors.js';
import { join } from 'node:path';
import { createLogger, type Logger, logLevels, setLogLevel } from './log.js';
import { changedKeys, type Resolved, resolveSettings, SettingsError, type Source } from './settings.js';
import type { AllowRule } from './routing/policy.js';
import { addClientCommands } from './client/admin-client.js';
import { allowRule, integer } from './client/args.js';
import { addLocalRouterCommands } from './client/router-local.js';
import { startHosting } from './serve.js';
import { quotaDefaults } from './tenants/quotas.js';
import { startSingleRouter, type Service, type SingleRouterService } from './single.js';
import { sandboxDefaults } from './config.js';
import { defaultSandboxUser, makeUndumpable } from './sandbox/confine.js';
import { availableParallelism } from 'node:os';
import { canHandOff } from './node/handoff.js';
import { isSuccessor, takeOver, upgrade } from './node/upgrade.js';
import { type Capability, checkDrop, keepCapabilitiesOption, userOption } from './node/privileges.js';
import { mainPid, notify, ready, reloading, stopping as stopping_ } from './node/notify.js';
import { mkdirSync } from 'node:fs';
import { ServiceRefusal } from './errors.js';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

/** Limit flags shared by every mode, from config.ts's table, each defaulting to its default there. */
function limitOptions(): Option[] {
  return limitTable.map((l) => new Option(`${l.flag} <${l.arg}>`, l.help).argParser(integer(l.min, l.max)).default(defaultLimits[l.key]));
}

/** The limits from parsed flags: each table entry's option, by its attribute name. */
function limitsFrom(opts: Record<string, unknown>): Limits {
  const limits: Record<string, unknown> = {};
  for (const l of limitTable) limits[l.key] = opts[camel(l.flag)];
  return limits as unknown as Limits;
}

/** commander's attribute name for a flag: --router-timeout → routerTimeout. */
function camel(flag: string): string {
  return flag.replace(/^--/, '').replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/**
 * QUIT: stop accepting and wait for every connection, however long. TERM and INT: stop
 * accepting, wait up to the grace period, then close what is left. A second TERM or INT
 * closes everything at once. Either way the process exits 0.
 *
 * The handlers are installed before the service starts, so a signal that arrives while it
 * starts (or right after it says "listening") is acted on as soon as the service exists.
 */
function handleSignals(log: Logger): { attach(service: Service, reload: () => Promise<void>): void } {
  let service: Service | undefined;
  let reload: (() => Promise<void>) | undefined;
  let reloading = Promise.resolve();
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
    tellManager(stopping_(), log);
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
  // HUP reloads, one reload after another; it never stops the service.
  process.on('SIGHUP', () => {
    if (reload === undefined || stopping) {
      log.warn({ signal: 'SIGHUP' }, stopping ? 'shutting down: not reloading' : 'not started yet: nothing to reload');
      return;
    }
    const run = reload;
    log.info({ signal: 'SIGHUP' }, 'reloading');
    reloading = reloading.then(run).catch((err: unknown) => log.error({ err: (err as Error).message }, 'reload failed; nothing changed'));
  });
  return {
    attach(s: Service, r: () => Promise<void>): void {
      service = s;
      reload = r;
      if (requested !== undefined) stop(requested);
    },
  };
}

/** `--sandbox-user`, for both modes. */
function sandboxUserOption(): Option {
  return new Option('--sandbox-user <name>', 'user sandbox workers run as when the service runs as root, or holds CAP_SETUID and CAP_SETGID').default(defaultSandboxUser);
}

/** Tells the service manager (systemd's NOTIFY_SOCKET), when there is one; a failure is logged, never fatal. */
function tellManager(state: string, log: Logger): void {
  try {
    notify(state);
  } catch (err) {
    log.warn({ err: (err as Error).message, state }, 'could not notify the service manager');
  }
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
  .option('--log-level <level>', `${logLevels.join(', ')}`, logLevel, 'info')
  .addOption(sandboxUserOption());
for (const option of limitOptions()) program.addOption(option);

program.action(async (opts: Record<string, unknown> & { config?: string; host: string; port: number; logLevel: string; sandboxUser: string }) => {
  if (opts.config === undefined) {
    program.outputHelp({ error: true });
    fail('missing -c ROUTER.js');
  }
  // Nothing of this process (the operator token in its environment, clients' bytes) is readable through /proc.
  makeUndumpable();
  const log = createLogger(opts.logLevel);
  const signals = handleSignals(log);
  let service: SingleRouterService;
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
  const running = service;
  signals.attach(running, () => running.reload());
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

function logLevel(text: string): string {
  if (!(logLevels as readonly string[]).includes(text)) throw new InvalidArgumentError(`expected one of ${logLevels.join(', ')}`);
  return text;
}

/** A PostgreSQL URL for --store. */
function storeUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new InvalidArgumentError('expected a PostgreSQL URL, as postgres://user:password@host:5432/switchyard');
  }
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') throw new InvalidArgumentError('expected a postgres:// or postgresql:// URL');
  return text;
}

const serve = program
  .command('serve')
  .description('hosting mode: tenants, each with a port and a router, managed over the admin API')
  .helpOption('--help', 'show this help')
  .option('--data <dir>', 'data directory', './switchyard-data')
  .addOption(
    new Option('--store <url>', 'PostgreSQL URL of the store shared by the nodes of a cluster (postgres://…); default: SQLite in the data directory')
      .env('SWITCHYARD_STORE')
      .argParser(storeUrl),
  )
  .option('--store-pool <n>', 'connections to the PostgreSQL store per node, at most (one more listens for changes)', integer(1, 100), 4)
  .option('--config-file <file>', 'configuration file (JSON; default: DATA/switchyard.json when it exists); flags override it')
  .option('--admin <host:port>', 'admin API address', hostPort, { host: '127.0.0.1', port: 7070 })
  .option('--ports <lo-hi>', 'tenant ports (inclusive)', portRange, [20000, 20999] as [number, number])
  .option('--bind <host>', 'address tenant ports are bound on', '0.0.0.0')
  .option('--allow <rule>', 'allow backends policy denies: CIDR, CIDR:PORT or CIDR:LO-HI ([::1]/128:80); repeatable', allowRule, [])
  .option('--sandbox-workers <n>', 'sandbox worker processes', integer(1, 64), sandboxDefaults.workers)
  .option('--max-warm-isolates <n>', 'router isolates kept built; past it the least recently used are unloaded', integer(1, 1_000_000), sandboxDefaults.maxWarmIsolates)
  .option('--max-warm-mb <mb>', 'V8 heap of the isolates kept built; past it the least recently used are unloaded', integer(16, 1_000_000), sandboxDefaults.maxWarmMb)
  .option('--router-versions <n>', 'router versions kept per tenant; rollback reaches back within them', integer(1, 1000), quotaDefaults.routerVersions)
  .option('--pushes-per-minute <n>', "a tenant's router and table pushes a minute (bursts of up to a third of it, at least 1)", integer(1, 6000), quotaDefaults.pushesPerMinute)
  .addOption(userOption())
  .addOption(keepCapabilitiesOption())
  .option('--processes <n>', 'proxy processes accepting and relaying clients (0: the master does, on one core)', integer(0, 256), defaultProcesses())
  .addOption(sandboxUserOption())
  .option('--log-level <level>', `${logLevels.join(', ')}`, logLevel, 'info');
for (const option of limitOptions()) serve.addOption(option);

/** One proxy process per core, where they can run (Linux, the handoff addon built); otherwise 0. */
function defaultProcesses(): number {
  return canHandOff() ? availableParallelism() : 0;
}

/** What `serve` runs with once flags and the configuration file are resolved. */
interface ServeValues {
  data: string;
  store?: string;
  storePool: number;
  configFile?: string;
  admin: { host: string; port: number };
  ports: [number, number];
  bind: string;
  allow: AllowRule[];
  sandboxWorkers: number;
  maxWarmIsolates: number;
  maxWarmMb: number;
  routerVersions: number;
  pushesPerMinute: number;
  sandboxUser: string;
  logLevel: string;
  processes: number;
  user?: string;
  keepCapabilities: Capability[];
}

/** Settings that apply to a running service on SIGHUP; a change to any other needs a restart. */
const liveSettings = (key: string): boolean => key === 'allow' || key === 'logLevel' || key.startsWith('limits.');

serve.action(async (opts: ServeValues) => {
  const file = opts.configFile ?? join(opts.data, 'switchyard.json');
  /** The configuration file's JSON; none when the default file does not exist. */
  const readConfig = (): unknown => {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && opts.configFile === undefined) return undefined;
      throw new SettingsError(`${file}: ${(err as Error).message}`);
    }
    try {
      return JSON.parse(text) as unknown;
    } catch (err) {
      throw new SettingsError(`${file} is not valid JSON: ${(err as Error).message}`);
    }
  };
  let settings: Resolved;
  try {
    settings = resolveSettings(serve, readConfig());
  } catch (err) {
    if (err instanceof SettingsError) fail(`configuration: ${err.message.startsWith(file) ? '' : `${file}: `}${err.message}`);
    throw err;
  }
  const v = settings.values as unknown as ServeValues;
  const dropTo = v.user === undefined ? undefined : { user: v.user, keep: v.keepCapabilities };
  if (dropTo !== undefined) {
    try {
      checkDrop(dropTo); // an unknown user, or root: refused before anything is bound
    } catch (err) {
      fail(`--user: ${(err as Error).message}`);
    }
  }
  // Nothing of this process (the operator token in its environment, clients' bytes) is readable through /proc.
  makeUndumpable();
  const log = createLogger(v.logLevel);
  log.info({ file, settings: settings.view, sources: settings.sources }, 'configuration');
  const signals = handleSignals(log);
  let service: Awaited<ReturnType<typeof startHosting>>;
  // Started by a running master as its successor (an upgrade): its sockets first, then the store.
  let successor: Awaited<ReturnType<typeof takeOver>> | undefined;
  try {
    if (isSuccessor()) {
      mkdirSync(opts.data, { recursive: true, mode: 0o700 });
      successor = await takeOver(opts.data, log);
    }
    service = await startHosting({
      ...(successor === undefined ? {} : { inherited: successor.inherited }),
      dataDir: opts.data,
      ...(v.store === undefined ? {} : { store: { url: v.store, poolSize: v.storePool } }),
      admin: v.admin,
      ports: v.ports,
      bindHost: v.bind,
      allow: v.allow,
      defaults: limitsFrom(v as unknown as Record<string, unknown>),
      workers: v.sandboxWorkers,
      maxWarmIsolates: v.maxWarmIsolates,
      maxWarmMb: v.maxWarmMb,
      sandboxUser: v.sandboxUser,
      quotas: { routerVersions: v.routerVersions, pushesPerMinute: v.pushesPerMinute, pushBurst: Math.max(1, Math.floor(v.pushesPerMinute / 3)) },
      log,
      processes: v.processes,
      logLevel: v.logLevel,
      ...(dropTo === undefined ? {} : { dropTo }),
      control: { reload: () => reloadNow('api'), upgrade: () => upgradeNow() },
      announce: (line) => process.stderr.write(`${line}\n`),
      describeConfig: () => ({ file, settings: settings.view, sources: settings.sources, pendingRestart }),
    });
  } catch (err) {
    successor?.failed(err as Error);
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EADDRINUSE') fail(`the admin address ${v.admin.host}:${v.admin.port} is already in use`);
    fail(e.message);
  }
  /** Settings changed in the file that take effect only at the next start. */
  let pendingRestart: Record<string, unknown> = {};
  const running = service;
  /** One reload after another, from SIGHUP or the admin API. */
  let reloads = Promise.resolve<unknown>(undefined);
  function reloadNow(from: 'signal' | 'api'): Promise<Record<string, unknown>> {
    const run = reloads.then(() => reloadOnce(from));
    reloads = run.catch(() => undefined);
    return run;
  }
  async function reloadOnce(from: 'signal' | 'api'): Promise<Record<string, unknown>> {
    tellManager(reloading(), log);
    let applied: Record<string, unknown>;
    try {
      applied = await reconfigure();
      await running.proxies?.replace();
    } finally {
      tellManager(ready(), log);
    }
    const done = { ...applied, processes: running.proxies?.pids ?? [] };
    log.info({ from, ...done }, 'reloaded');
    return done;
  }
  signals.attach(running, async () => {
    await reloadNow('signal');
  });
  successor?.serving();
  // systemd (Type=notify): up; a successor is the service's main process from now on.
  tellManager(successor === undefined ? ready() : `${mainPid(process.pid)}\n${ready()}`, log);
  /** Hands this node over to the switchyard on disk (SIGUSR2, POST /v1/upgrade); one at a time. */
  let upgrading: Promise<Record<string, unknown>> | undefined;
  function upgradeNow(): Promise<Record<string, unknown>> {
    const steps = running.handOver;
    if (steps === undefined) return Promise.reject(new ServiceRefusal('conflict', 'ERR_NOT_SUPPORTED', 'an upgrade needs proxy processes (--processes 1 or more)'));
    if (upgrading !== undefined) return Promise.reject(new ServiceRefusal('conflict', 'ERR_UPGRADING', 'an upgrade is under way'));
    const run = upgrade(
      {
        ...steps,
        retire: async () => {
          await running.close();
          log.info('upgrade: handed over; exiting');
          process.exit(0);
        },
      },
      log,
    ).then(({ pid }) => ({ successor: pid }));
    upgrading = run;
    run.catch((err: unknown) => {
      upgrading = undefined;
      log.error({ err: (err as Error).message }, 'upgrade failed; this master serves on');
    });
    return run;
  }
  process.on('SIGUSR2', () => {
    log.info({ signal: 'SIGUSR2' }, 'upgrading');
    upgradeNow().catch(() => undefined);
  });
  async function reconfigure(): Promise<Record<string, unknown>> {
    const next = resolveSettings(serve, readConfig());
    const changed = changedKeys(settings, next);
    const live = changed.filter(liveSettings);
    const later = Object.keys(next.view).filter((k) => !liveSettings(k) && JSON.stringify(next.view[k]) !== JSON.stringify(settings.view[k]) && !(k in pendingRestart && JSON.stringify(pendingRestart[k]) === JSON.stringify(next.view[k])));
    const nv = next.values as unknown as ServeValues;
    await running.reconfigure({ allow: nv.allow, defaults: limitsFrom(next.values) });
    setLogLevel(log, nv.logLevel);
    running.setLogLevel(nv.logLevel);
    // What runs now: the new live settings, the old ones for everything that needs a restart.
    const view: Record<string, unknown> = { ...next.view };
    const sources: Record<string, Source> = { ...next.sources };
    pendingRestart = {};
    for (const k of Object.keys(next.view)) {
      if (liveSettings(k) || JSON.stringify(next.view[k]) === JSON.stringify(settings.view[k])) continue;
      pendingRestart[k] = next.view[k];
      view[k] = settings.view[k];
      sources[k] = settings.sources[k] ?? 'default';
    }
    settings = { values: settings.values, view, sources };
    log.info({ file, applied: live, needRestart: Object.keys(pendingRestart), newlyNeedRestart: later }, 'configuration reloaded');
    return { applied: live, needRestart: Object.keys(pendingRestart) };
  }
});

addLocalRouterCommands(addClientCommands(program).router);

try {
  await program.parseAsync();
} catch (err) {
  // A command whose usage errors have an exit code of their own (router check and try: 2).
  if (err instanceof CommanderError) process.exit(err.exitCode);
  throw err;
}
