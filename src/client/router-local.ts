/**
 * The local authoring loop, with no service running: `switchyard router check FILE` loads a
 * router file the way a push does (a throwaway sandbox process checks it, then a sandbox worker
 * loads it: the same limits and the same errors), `router try FILE …` runs it on some bytes and
 * prints the validated decision with the backend policy's verdict, and `router types` prints the
 * router API's TypeScript declarations.
 *
 * Exit codes: 0 for a decision (or a script that loads), 1 for a router error, 2 for a usage error.
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { type Command, CommanderError, Option } from 'commander';
import { pino } from 'pino';
import { failureView, formatFailure } from '../authoring/diagnostics.js';
import { defaultLimits, limitTable } from '../config.js';
import { RouterLoadError } from '../errors.js';
import { BackendPolicy, type AllowRule } from '../routing/policy.js';
import { CachingResolver } from '../routing/resolver.js';
import { RouterConsole } from '../sandbox/console.js';
import { SandboxPool } from '../sandbox/pool.js';
import { ProcessRouter } from '../sandbox/process-router.js';
import type { ConnInfo } from '../sandbox/router.js';
import { clientOf, dryRun, type DryRunResult } from '../tenants/dry-run.js';
import { call, type ClientOptions, ClientError, connection, run, unescape, usage } from './admin-client.js';
import { allowRule, integer } from './args.js';

/** What check and try share: the file, its table, the limits it runs under, the tenant it runs as. */
interface LocalOptions {
  table?: string;
  routerTimeout: number;
  memory: number;
  tenant?: string;
  json?: boolean;
}

/** Bytes to try, and for a captured rejection, which it was. */
type Input = { readonly data: string; readonly client?: undefined } | { readonly data: string; readonly client: string; readonly time: string; readonly rejected: string };

/** A router loaded for the local loop, and what must be closed after. */
interface Loaded {
  readonly router: ProcessRouter;
  readonly source: string;
  readonly tenant: string;
  close(): Promise<void>;
}

/** Adds `check`, `try` and `types` to the `router` command. */
export function addLocalRouterCommands(router: Command): void {
  local(router.command('check <file>').description('load a router file as a push would (same sandbox, limits and errors), with no service'))
    .option('--json', 'print the outcome as JSON on stdout')
    .action(
      run(async (o, file) => {
        const opts = o as unknown as LocalOptions;
        const loaded = await load(file!, opts);
        try {
          const hooks = loaded.router.hooks!;
          const registered = ['proxy', ...(hooks.accept ? ['proxyAccept'] : []), ...(hooks.connectError ? ['proxyConnectError'] : []), ...(hooks.inactivityError ? ['proxyInactivityError'] : [])];
          return opts.json === true ? { ok: true, hooks: registered } : `${file}: ok (${registered.join(', ')})\n`;
        } finally {
          await loaded.close();
        }
      }),
    );

  connection(local(router.command('try <file>').description('run a router file on some bytes, with no service: the decision and the policy verdict')))
    .option('--data <text>', 'the bytes, as latin1 text (escape sequences like \\0 and \\r\\n are understood)')
    .option('--base64 <b64>', 'the bytes, base64')
    .option('--from-rejections <tenant>', "each rejection the tenant's service captured (its first bytes; needs --url and --token)")
    .option('--client <address:port>', 'the client the router sees in conn', '203.0.113.7:50000')
    .option('--allow <rule>', 'a backend the policy allows besides the public internet (as serve --allow); repeatable', allowRule, [] as AllowRule[])
    .action(
      run(async (o, file) => {
        const opts = o as ClientOptions & LocalOptions & { data?: string; base64?: string; fromRejections?: string; client: string; allow: AllowRule[] };
        const given = [opts.data, opts.base64, opts.fromRejections].filter((x) => x !== undefined).length;
        if (given !== 1) throw usage('give exactly one of --data, --base64 and --from-rejections');
        if (!/^.+:\d{1,5}$/.test(opts.client)) throw usage('--client takes ADDRESS:PORT');
        const inputs: Input[] =
          opts.fromRejections !== undefined
            ? await rejectionInputs(opts, opts.fromRejections)
            : [{ data: opts.data !== undefined ? unescape(opts.data) : Buffer.from(opts.base64!, 'base64').toString('latin1') }];
        const loaded = await load(file!, opts);
        try {
          const gate = { policy: new BackendPolicy(opts.allow, () => false), resolver: new CachingResolver() };
          const results: (DryRunResult & { client?: string; time?: string; rejected?: string })[] = [];
          for (const input of inputs) {
            const { address, port } = clientOf(input.client ?? opts.client);
            const conn: ConnInfo = { tenant: loaded.tenant, remoteAddress: address, remotePort: port, localAddress: '0.0.0.0', localPort: 0 };
            const result = await dryRun(loaded.router, loaded.source, input.data, conn, gate);
            if ('error' in result) {
              process.stderr.write(formatFailure(result, file!));
              process.exitCode = 1;
            }
            results.push(input.client === undefined ? result : { time: input.time, client: input.client, rejected: input.rejected, ...result });
          }
          return opts.fromRejections === undefined ? results[0] : { results };
        } finally {
          await loaded.close();
        }
      }),
    );

  router
    .command('types')
    .description("print the router API's TypeScript declarations (for editor completion and // @ts-check)")
    .action(() => {
      process.stdout.write(readFileSync(new URL('../../../types/router.d.ts', import.meta.url), 'utf8'));
    });
}

/** The options of a local command, and its usage errors as exit code 2. */
function local(command: Command): Command {
  const limit = (key: 'routerTimeoutMs' | 'memoryMb'): Option => {
    const l = limitTable.find((t) => t.key === key)!;
    return new Option(`${l.flag} <${l.arg}>`, l.help).argParser(integer(l.min, l.max)).default(defaultLimits[key]);
  };
  return command
    .option('--table <file>', "the routing table the router sees as `table` (a JSON object; default {})")
    .option('--tenant <name>', "the tenant the router sees in conn (default: the file's name)")
    .addOption(limit('routerTimeoutMs'))
    .addOption(limit('memoryMb'))
    .exitOverride((err) => {
      // commander has printed what is wrong; --help is no error.
      throw new CommanderError(err.exitCode === 0 ? 0 : 2, err.code, err.message);
    });
}

/**
 * Loads a router file the way a push loads a script: checked in a throwaway sandbox process,
 * then loaded into a sandbox worker, with the table and limits given. A script that does not
 * load is reported (line, column, code frame, stack, hint) and is exit code 1.
 */
async function load(file: string, o: LocalOptions): Promise<Loaded> {
  const source = await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw usage(`${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`);
  });
  let table: string | undefined;
  if (o.table !== undefined) {
    const text = await readFile(o.table, 'utf8').catch((err: NodeJS.ErrnoException) => {
      throw usage(`${o.table}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`);
    });
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw usage(`${o.table}: not valid JSON`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw usage(`${o.table}: the table must be a JSON object`);
    table = JSON.stringify(parsed);
  }
  const tenant = o.tenant ?? basename(file);
  // Only the sandbox's own errors reach stderr as log lines; console lines are printed as such.
  const log = pino({ level: 'error' }, pino.destination(2));
  const sink = {
    line: (stream: 'log' | 'error', line: string) => process.stderr.write(`console.${stream}: ${line}\n`),
    dropped: (count: number) => process.stderr.write(`(${count} console lines dropped by the rate limit)\n`),
  };
  const pool = new SandboxPool({ log, workers: 1 });
  const spec = { tenant, source, filename: basename(file), routerTimeoutMs: o.routerTimeout, memoryMb: o.memory, ...(table === undefined ? {} : { table }) };
  try {
    const router = await ProcessRouter.load(pool, spec, new RouterConsole(pino({ level: 'silent' }), tenant, sink));
    return { router, source, tenant, close: () => pool.close() };
  } catch (err) {
    await pool.close();
    if (err instanceof RouterLoadError) {
      const view = failureView(err, source);
      if (o.json === true) process.stdout.write(`${JSON.stringify({ ok: false, ...view }, null, 2)}\n`);
      throw new ClientError(0, err.message, { report: formatFailure(view, file) });
    }
    throw err;
  }
}

/** The first bytes of each rejection a tenant's service captured, newest first. */
async function rejectionInputs(o: ClientOptions, tenant: string): Promise<Input[]> {
  const answer = (await call(o, 'GET', `/v1/tenants/${encodeURIComponent(tenant)}/rejections`)) as { rejections: { time: string; client: string; reason: string; firstBytes: string }[] };
  return answer.rejections
    .filter((r) => r.firstBytes !== '')
    .map((r) => ({ data: Buffer.from(r.firstBytes, 'base64').toString('latin1'), client: r.client, time: r.time, rejected: r.reason }));
}
