/**
 * The command-line client of the admin API: `switchyard tenant …`, `router …`, `table …`,
 * `logs …`. It takes the API's URL and a token from flags or the environment (SWITCHYARD_URL,
 * SWITCHYARD_TOKEN), prints what the API answers as JSON on stdout, and an error on stderr
 * with a non-zero exit: 1 when the service refused or a router failed, 2 for a usage error.
 */
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Command, Option } from 'commander';
import { type FailureView, formatFailure } from '../authoring/diagnostics.js';

export interface ClientOptions {
  url: string;
  token?: string;
}

export class ClientError extends Error {
  readonly status: number;
  /** The answer's JSON, when the API said why. */
  readonly body: Record<string, unknown> | undefined;
  /** What to print instead of the message: a report of several lines (a rejected script's). */
  readonly report: string | undefined;
  /** The exit code: 1, or 2 for a usage error. */
  readonly exitCode: number;
  constructor(status: number, message: string, options: { body?: Record<string, unknown> | undefined; report?: string; exitCode?: number } = {}) {
    super(message);
    this.status = status;
    this.body = options.body;
    this.report = options.report;
    this.exitCode = options.exitCode ?? 1;
  }
}

/** A usage error (exit code 2). */
export function usage(message: string): ClientError {
  return new ClientError(0, message, { exitCode: 2 });
}

/** One request to the admin API; resolves with the parsed JSON answer (or undefined for 204). */
export async function call(o: ClientOptions, method: string, path: string, body?: string | object): Promise<unknown> {
  const { text, contentType } = await request(o, method, path, body);
  return text === '' || !contentType.includes('json') ? (text === '' ? undefined : text) : (JSON.parse(text) as unknown);
}

/** One request to the admin API; resolves with the answer's text and content type, rejects with ClientError. */
async function request(o: ClientOptions, method: string, path: string, body?: string | object): Promise<{ text: string; contentType: string; headers: Headers }> {
  if (o.token === undefined || o.token === '') throw new ClientError(0, 'no token: pass --token or set SWITCHYARD_TOKEN');
  const headers: Record<string, string> = { authorization: `Bearer ${o.token}` };
  let payload: string | undefined;
  if (typeof body === 'string') {
    payload = body;
    headers['content-type'] = 'text/plain; charset=utf-8';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers['content-type'] = 'application/json';
  }
  let res: Response;
  try {
    res = await fetch(new URL(path, o.url), { method, headers, ...(payload === undefined ? {} : { body: payload }) });
  } catch (err) {
    throw new ClientError(0, `cannot reach ${o.url}: ${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}`);
  }
  const text = await res.text();
  const contentType = res.headers.get('content-type') ?? '';
  if (!res.ok) {
    let e: Record<string, unknown> | undefined;
    try {
      e = contentType.includes('json') ? (JSON.parse(text) as Record<string, unknown>) : undefined;
    } catch {
      e = undefined;
    }
    throw new ClientError(res.status, `${res.status}: ${typeof e?.error === 'string' ? e.error : res.statusText}`, { body: e });
  }
  return { text, contentType, headers: res.headers };
}

/** The failure a refusal (a rejected script) or a dry run describes, if it is one. */
function failureOf(body: Record<string, unknown> | undefined): FailureView | undefined {
  if (body === undefined || typeof body.error !== 'string' || typeof body.code !== 'string') return undefined;
  return body as unknown as FailureView;
}

/** A dry run's answer: printed as it is; a router failure also as a report on stderr, and exit code 1. */
function dryRunAnswer(answer: unknown, file: string): unknown {
  const failure = failureOf(answer as Record<string, unknown>);
  if (failure !== undefined) {
    process.stderr.write(formatFailure(failure, file));
    process.exitCode = 1;
  }
  return answer;
}

export function connection(command: Command): Command {
  return command
    .addOption(new Option('--url <url>', 'admin API URL').env('SWITCHYARD_URL').default('http://127.0.0.1:7070'))
    .addOption(new Option('--token <token>', 'operator or tenant token').env('SWITCHYARD_TOKEN'));
}

/** Runs a client action, printing its answer; failures go to stderr with exit code 1. */
export function run(action: (o: ClientOptions, ...args: string[]) => Promise<unknown>) {
  return async (...args: unknown[]): Promise<void> => {
    const command = args[args.length - 1] as Command;
    const o = command.opts<ClientOptions>();
    try {
      const answer = await action(o, ...(args.slice(0, -2) as string[]));
      if (typeof answer === 'string') process.stdout.write(answer);
      else if (answer !== undefined) process.stdout.write(`${JSON.stringify(answer, null, 2)}\n`);
    } catch (err) {
      const e = err instanceof ClientError ? err : undefined;
      process.stderr.write(e?.report ?? `switchyard: ${(err as Error).message}\n`);
      process.exitCode = e?.exitCode ?? 1;
    }
  };
}

const enc = encodeURIComponent;

/** Adds the client's commands to the program; resolves the `router` command, which the local ones join. */
export function addClientCommands(program: Command): { router: Command } {
  const tenant = program.command('tenant').description('manage tenants (operator token)');
  connection(tenant.command('create <name>').description('create a tenant; prints its token once'))
    .option('--port <port>', 'its port (default: the lowest free one)')
    .action(
      run(async (o, name) => {
        const port = (o as ClientOptions & { port?: string }).port;
        return call(o, 'POST', '/v1/tenants', port === undefined ? { name } : { name, port: Number(port) });
      }),
    );
  connection(tenant.command('list').description('list tenants')).action(run((o) => call(o, 'GET', '/v1/tenants')));
  connection(tenant.command('show <name>').description("a tenant's version, limits and stats")).action(run((o, name) => call(o, 'GET', `/v1/tenants/${enc(name!)}`)));
  connection(tenant.command('delete <name>').description('delete a tenant: its port closes, its connections end')).action(
    run(async (o, name) => {
      await call(o, 'DELETE', `/v1/tenants/${enc(name!)}`);
      return { deleted: name };
    }),
  );

  const router = program.command('router').description("manage a tenant's router; check and try one locally");
  connection(router.command('push <name> <file>').description('upload a router script; it is checked, then live'))
    .option('--percent <p>', 'a gradual rollout: live for this share (1-99) of new connections, by client address; then promote or rollback')
    .action(
      run(async (o, name, file) => {
        const { percent } = o as ClientOptions & { percent?: string };
        if (percent !== undefined && !/^\d{1,3}$/.test(percent)) throw usage('--percent takes an integer from 1 to 100');
        const source = await readFile(file!, 'utf8').catch((err: NodeJS.ErrnoException) => {
          throw usage(`${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`);
        });
        try {
          return await call(o, 'PUT', `/v1/tenants/${enc(name!)}/router${percent === undefined ? '' : `?percent=${percent}`}`, source);
        } catch (err) {
          const failure = err instanceof ClientError && err.status === 422 ? failureOf(err.body) : undefined;
          if (failure === undefined) throw err;
          // The service names the script after the tenant: its frames are shown as in the file pushed.
          const stack = failure.stack?.map((f) => f.replace(`(${name}.js:`, `(${basename(file!)}:`));
          const report = formatFailure({ ...failure, ...(stack === undefined ? {} : { stack }) }, file!);
          throw new ClientError(422, failure.error, { report: `switchyard: rejected (422)\n${report}` });
        }
      }),
    );
  connection(router.command('promote <name>').description('a gradual rollout: make its version live for every new connection, or for --percent of them'))
    .option('--percent <p>', 'the new share (1-100)')
    .action(
      run((o, name) => {
        const { percent } = o as ClientOptions & { percent?: string };
        return call(o, 'POST', `/v1/tenants/${enc(name!)}/router/promote${percent === undefined ? '' : `?percent=${enc(percent)}`}`);
      }),
    );
  connection(router.command('test <name>').description('dry-run the live router (or --version N) on some bytes; no backend is contacted'))
    .option('--data <text>', 'the bytes, as latin1 text (escape sequences like \\0 and \\r\\n are understood)')
    .option('--base64 <b64>', 'the bytes, base64')
    .option('--version <n>', 'a version kept, instead of the live one')
    .action(
      run(async (o, name) => {
        const { data, base64, version } = o as ClientOptions & { data?: string; base64?: string; version?: string };
        if ((data === undefined) === (base64 === undefined)) throw usage('give exactly one of --data and --base64');
        const bytes = data === undefined ? { base64 } : { data: unescape(data) };
        const answer = await call(o, 'POST', `/v1/tenants/${enc(name!)}/route`, version === undefined ? bytes : { ...bytes, version: versionNumber(version) });
        return dryRunAnswer(answer, `${name}.js`);
      }),
    );
  connection(router.command('rollback <name>').description('make the previous version live again (during a rollout: end it)')).action(
    run((o, name) => call(o, 'POST', `/v1/tenants/${enc(name!)}/router/rollback`)),
  );
  connection(router.command('get <name>').description('print the live router source (or --version N)'))
    .option('--version <n>', 'a version kept, instead of the live one')
    .action(
      run((o, name) => {
        const { version } = o as ClientOptions & { version?: string };
        return call(o, 'GET', `/v1/tenants/${enc(name!)}/router${version === undefined ? '' : `?version=${versionNumber(version)}`}`);
      }),
    );
  connection(router.command('versions <name>').description('list the versions kept: number, time, size, sha256, live or not')).action(
    run((o, name) => call(o, 'GET', `/v1/tenants/${enc(name!)}/router/versions`)),
  );
  connection(router.command('replay <name>').description("run a version over the tenant's captured rejections and show where it decides otherwise than the live one"))
    .requiredOption('--version <n>', 'the version to replay')
    .action(
      run((o, name) => {
        const { version } = o as ClientOptions & { version: string };
        return call(o, 'POST', `/v1/tenants/${enc(name!)}/router/replay`, { version: versionNumber(version) });
      }),
    );

  const table = program.command('table').description("manage a tenant's routing table");
  connection(table.command('get <name>').description('print the routing table')).action(run((o, name) => call(o, 'GET', `/v1/tenants/${enc(name!)}/table`)));
  connection(table.command('push <name> <file>').description('upload a routing table (a JSON object)')).action(
    run(async (o, name, file) => {
      const text = await readFile(file!, 'utf8');
      try {
        JSON.parse(text);
      } catch {
        throw new ClientError(0, `${file}: not valid JSON`);
      }
      return call(o, 'PUT', `/v1/tenants/${enc(name!)}/table`, JSON.parse(text) as object);
    }),
  );

  connection(program.command('logs <name>').description("a tenant's own log: its router's console lines and its rejections"))
    .option('--follow', 'keep printing what comes, until interrupted')
    .option('--since <n>', 'only entries after this one (the `seq` of the last seen)', '0')
    .option('--json', 'one JSON object per line')
    .action(
      run(async (o, name) => {
        const { follow, since, json } = o as ClientOptions & { follow?: boolean; since: string; json?: boolean };
        if (!/^\d{1,16}$/.test(since)) throw usage('--since takes the number of an entry');
        await followLogs(o, name!, Number(since), follow === true, json === true);
        return undefined;
      }),
    );
  connection(program.command('reload').description('re-read the configuration and replace the proxy processes, refusing no client (operator token; as SIGHUP)')).action(
    run((o) => call(o, 'POST', '/v1/reload')),
  );
  connection(program.command('upgrade').description('start the switchyard on disk as the next master: it takes the listeners and the store over (operator token; as SIGUSR2)')).action(
    run((o) => call(o, 'POST', '/v1/upgrade')),
  );
  return { router };
}

interface LogPage {
  readonly entries: readonly (Record<string, unknown> & { seq: number; time: string; kind: string })[];
  readonly next: number;
  readonly missed: number;
}

/** How long one request of `logs --follow` waits for new entries (long polling), in seconds. */
const followWaitS = 25;

/** Prints a tenant's log after `since`; with `follow`, goes on asking for what comes next (long polling). */
async function followLogs(o: ClientOptions, name: string, since: number, follow: boolean, json: boolean): Promise<void> {
  let cursor = since;
  for (let failures = 0; ; ) {
    let page: LogPage;
    try {
      page = (await call(o, 'GET', `/v1/tenants/${enc(name)}/logs?since=${cursor}${follow ? `&wait=${followWaitS}` : ''}`)) as LogPage;
      failures = 0;
    } catch (err) {
      // Following survives a service restart or a dropped connection; a refusal (401, 404) ends it.
      if (!follow || !(err instanceof ClientError) || (err.status !== 0 && err.status < 500) || ++failures > 30) throw err;
      await sleep(1000);
      continue;
    }
    if (page.missed > 0) process.stdout.write(json ? `${JSON.stringify({ kind: 'missed', count: page.missed })}\n` : `… ${page.missed} entries no longer kept\n`);
    for (const e of page.entries) process.stdout.write(`${json ? JSON.stringify(e) : logLine(e)}\n`);
    cursor = page.next;
    if (!follow) return;
  }
}

/** One log entry as a line for a person. */
function logLine(e: LogPage['entries'][number]): string {
  const v = typeof e.version === 'number' ? ` v${e.version}` : '';
  switch (e.kind) {
    case 'log':
    case 'error':
      return `${e.time} ${e.kind}${v}: ${String(e.line)}`;
    case 'rejection':
      return `${e.time} rejected ${String(e.client)}: ${String(e.reason)}: ${String(e.detail)}`;
    case 'dropped':
      return `${e.time} ${String(e.count)} console lines dropped by the rate limit`;
    default:
      return `${e.time} ${JSON.stringify(e)}`;
  }
}

/** A version number given on the command line, or a usage error. */
function versionNumber(text: string): number {
  if (!/^[1-9]\d{0,9}$/.test(text)) throw usage('--version takes a version number (1, 2, …)');
  return Number(text);
}


/** `\0`, `\r`, `\n`, `\t`, `\\` and `\xHH` in a --data argument. */
export function unescape(text: string): string {
  return text.replace(/\\(x[0-9a-fA-F]{2}|[0rnt\\])/g, (_, e: string) => {
    switch (e[0]) {
      case '0':
        return '\0';
      case 'r':
        return '\r';
      case 'n':
        return '\n';
      case 't':
        return '\t';
      case 'x':
        return String.fromCharCode(parseInt(e.slice(1), 16));
      default:
        return '\\';
    }
  });
}
