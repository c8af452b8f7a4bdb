/**
 * The command-line client of the admin API: `switchyard tenant …`, `router …`, `table …`.
 * It takes the API's URL and a token from flags or the environment (SWITCHYARD_URL,
 * SWITCHYARD_TOKEN), prints what the API answers as JSON on stdout, and an error on stderr
 * with a non-zero exit.
 */
import { readFile } from 'node:fs/promises';
import { type Command, Option } from 'commander';

export interface ClientOptions {
  url: string;
  token?: string;
}

export class ClientError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

/** One request to the admin API; resolves with the parsed JSON answer (or undefined for 204). */
export async function call(o: ClientOptions, method: string, path: string, body?: string | object): Promise<unknown> {
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
  const json = text === '' ? undefined : (JSON.parse(text) as unknown);
  if (!res.ok) {
    const e = json as { error?: string; line?: number; column?: number } | undefined;
    const at = e?.line === undefined ? '' : ` (line ${e.line}, column ${e.column})`;
    throw new ClientError(res.status, `${res.status}: ${e?.error ?? res.statusText}${at}`);
  }
  return json;
}

function connection(command: Command): Command {
  return command
    .addOption(new Option('--url <url>', 'admin API URL').env('SWITCHYARD_URL').default('http://127.0.0.1:7070'))
    .addOption(new Option('--token <token>', 'operator or tenant token').env('SWITCHYARD_TOKEN'));
}

/** Runs a client action, printing its answer; failures go to stderr with exit code 1. */
function run(action: (o: ClientOptions, ...args: string[]) => Promise<unknown>) {
  return async (...args: unknown[]): Promise<void> => {
    const command = args[args.length - 1] as Command;
    const o = command.opts<ClientOptions>();
    try {
      const answer = await action(o, ...(args.slice(0, -2) as string[]));
      if (answer !== undefined) process.stdout.write(`${JSON.stringify(answer, null, 2)}\n`);
    } catch (err) {
      process.stderr.write(`switchyard: ${(err as Error).message}\n`);
      process.exitCode = 1;
    }
  };
}

const enc = encodeURIComponent;

/** Adds the client's commands to the program. */
export function addClientCommands(program: Command): void {
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

  const router = program.command('router').description("manage a tenant's router");
  connection(router.command('push <name> <file>').description('upload a router script; it is checked, then live')).action(
    run(async (o, name, file) => call(o, 'PUT', `/v1/tenants/${enc(name!)}/router`, await readFile(file!, 'utf8'))),
  );
  connection(router.command('test <name>').description("dry-run the live router on some bytes; no backend is contacted"))
    .option('--data <text>', 'the bytes, as latin1 text (escape sequences like \\0 and \\r\\n are understood)')
    .option('--base64 <b64>', 'the bytes, base64')
    .action(
      run(async (o, name) => {
        const { data, base64 } = o as ClientOptions & { data?: string; base64?: string };
        if ((data === undefined) === (base64 === undefined)) throw new ClientError(0, 'give exactly one of --data and --base64');
        return call(o, 'POST', `/v1/tenants/${enc(name!)}/route`, data === undefined ? { base64 } : { data: unescape(data) });
      }),
    );
  connection(router.command('rollback <name>').description('make the previous version live again')).action(
    run((o, name) => call(o, 'POST', `/v1/tenants/${enc(name!)}/router/rollback`)),
  );

  const table = program.command('table').description("manage a tenant's routing table");
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

  connection(program.command('reload').description('re-read the configuration and replace the proxy processes, refusing no client (operator token; as SIGHUP)')).action(
    run((o) => call(o, 'POST', '/v1/reload')),
  );
  connection(program.command('upgrade').description('start the switchyard on disk as the next master: it takes the listeners and the store over (operator token; as SIGUSR2)')).action(
    run((o) => call(o, 'POST', '/v1/upgrade')),
  );
}

/** `\0`, `\r`, `\n`, `\t`, `\\` and `\xHH` in a --data argument. */
function unescape(text: string): string {
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
