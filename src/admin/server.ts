import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../log.js';
import { scriptLimits } from '../config.js';
import { parseJsonBody } from './json-body.js';
import { check, type Schema, schemas } from './schema.js';
import { adminConnectionDefaults, type AdminConnectionOptions, ConnectionGate, serverTimeouts } from './connections.js';
import { type RefusalKind, ServiceRefusal } from '../errors.js';
import { type HostingService, validName } from '../tenants/service.js';
import { TenantNotFoundError } from '../tenants/store.js';
import { hashToken, sameHash } from '../tenants/tokens.js';

/** Body size limits (CONTRACT §4): scripts 256 KiB, tables 4 MiB, anything else 64 KiB. */
const bodyLimits = { script: scriptLimits.maxScriptBytes, table: 4 * 1024 * 1024, other: 64 * 1024 } as const;

/** A failure of the request itself (path, method, token, access, body): its status code, said here only. */
class AdminError extends Error {
  readonly status: number;
  readonly extra: Record<string, unknown>;
  constructor(status: number, message: string, extra: Record<string, unknown> = {}) {
    super(message);
    this.status = status;
    this.extra = extra;
  }
}

/** What the operator can ask of the node as a whole: a reload, an upgrade. */
export interface NodeControl {
  /** Reads the configuration again and replaces the proxy processes; resolves with what was done. */
  reload(): Promise<Record<string, unknown>>;
  /** Starts the binary on disk as the next master, which takes the listeners and the store over. */
  upgrade?(): Promise<Record<string, unknown>>;
}

/** The status code of each kind of refusal from the tenant service. */
const refusalStatus: Record<RefusalKind, number> = { invalid: 400, not_found: 404, conflict: 409, rejected: 422, too_many: 429, busy: 503 };

type Who = 'operator' | { readonly tenant: string };
type Access = 'anyone' | 'operator' | 'tenant';
type BodyKind = 'none' | 'json' | 'script' | 'table';

interface Request {
  readonly who: Who | undefined;
  readonly name: string;
  readonly body: unknown;
  readonly http: IncomingMessage;
}

interface Reply {
  readonly status: number;
  readonly json?: unknown;
  readonly text?: string;
  /** Of `text`: Prometheus text when absent. */
  readonly contentType?: string;
  readonly headers?: Readonly<Record<string, string>>;
}

interface Handler {
  readonly access: Access;
  readonly body: BodyKind;
  /** The declared shape of a JSON body, checked before `run` (400 naming the field). */
  readonly schema?: Schema;
  run(r: Request): Promise<Reply> | Reply;
}

/**
 * The admin API (CONTRACT §4): HTTP and JSON on the admin address. Each route names who may
 * call it and what body it takes; the checks run in a fixed order — path (404), method (405),
 * token (401), access (403), tenant (404), body (413, 400) — and every error is JSON `{ error }`.
 */
export class AdminServer {
  readonly #server: Server;
  readonly #service: HostingService;
  readonly #operatorHash: string;
  readonly #log: Logger;
  readonly #routes: [RegExp, Partial<Record<string, Handler>>][];
  readonly #gate: ConnectionGate;
  readonly #describeConfig: () => unknown;

  readonly #node: NodeControl | undefined;

  constructor(
    service: HostingService,
    operatorToken: string,
    log: Logger,
    connections: Partial<AdminConnectionOptions> = {},
    describeConfig: () => unknown = () => ({}),
    node?: NodeControl,
  ) {
    this.#service = service;
    this.#describeConfig = describeConfig;
    this.#node = node;
    this.#operatorHash = hashToken(operatorToken);
    this.#log = log.child({ component: 'admin' });
    this.#routes = this.#table();
    const limits = { ...adminConnectionDefaults, ...connections };
    this.#server = createServer(serverTimeouts(limits), (req, res) => {
      if (this.#gate.begin(req, res)) void this.#handle(req, res);
      else this.#send(req, res, { status: 503, json: { error: `too many admin connections (at most ${limits.maxConnections}, each in the middle of a request)` } });
    });
    this.#gate = new ConnectionGate(this.#server, limits);
  }

  /** Admin connections open now. */
  get connections(): number {
    return this.#gate.size;
  }

  /** Binds `host:port`, or accepts on a listening socket bound before (`{ fd }`). */
  listen(port: number, host: string): Promise<AddressInfo>;
  listen(handed: { readonly fd: number }): Promise<AddressInfo>;
  listen(port: number | { readonly fd: number }, host?: string): Promise<AddressInfo> {
    const where = typeof port === 'number' ? { port, host } : { fd: port.fd };
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(where, () => {
        this.#server.off('error', reject);
        resolve(this.#server.address() as AddressInfo);
      });
    });
  }

  /** Takes no new connection (they wait in the socket's queue for whoever else accepts on it); requests under way finish. */
  stopAccepting(): void {
    this.#server.close();
    this.#server.closeIdleConnections();
  }

  close(): Promise<void> {
    // Already not accepting (stopAccepting): its 'close' may be long past; end what is left.
    if (!this.#server.listening) {
      this.#server.closeAllConnections();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }

  #table(): [RegExp, Partial<Record<string, Handler>>][] {
    const s = this.#service;
    const name = '([^/]+)';
    return [
      [/^\/healthz$/, { GET: { access: 'anyone', body: 'none', run: () => this.#health() } }],
      [/^\/v1\/config$/, { GET: { access: 'operator', body: 'none', run: () => ({ status: 200, json: this.#describeConfig() }) } }],
      [/^\/v1\/reload$/, { POST: { access: 'operator', body: 'none', run: async () => ({ status: 200, json: await this.#control('reload') }) } }],
      [/^\/v1\/upgrade$/, { POST: { access: 'operator', body: 'none', run: async () => ({ status: 202, json: await this.#control('upgrade') }) } }],
      [/^\/metrics$/, { GET: { access: 'operator', body: 'none', run: async () => ({ status: 200, text: await s.metrics() }) } }],
      [
        /^\/v1\/tenants$/,
        {
          GET: { access: 'operator', body: 'none', run: () => ({ status: 200, json: { tenants: s.list() } }) },
          POST: {
            access: 'operator',
            body: 'json',
            schema: schemas.createTenant,
            run: async (r) => {
              const b = r.body as { name: string; port?: number };
              return { status: 201, json: await s.create(b.name, b.port) };
            },
          },
        },
      ],
      [
        new RegExp(`^/v1/tenants/${name}$`),
        {
          GET: { access: 'tenant', body: 'none', run: async (r) => ({ status: 200, json: await s.show(r.name) }) },
          DELETE: {
            access: 'operator',
            body: 'none',
            run: async (r) => {
              await s.remove(r.name);
              return { status: 204 };
            },
          },
        },
      ],
      [
        new RegExp(`^/v1/tenants/${name}/router$`),
        {
          GET: {
            access: 'tenant',
            body: 'none',
            run: async (r) => {
              const v = await s.routerSource(r.name, queryInteger(r.http, 'version', 1, 2 ** 31 - 1));
              return { status: 200, text: v.source, contentType: 'application/javascript; charset=utf-8', headers: { 'x-router-version': String(v.version) } };
            },
          },
          PUT: {
            access: 'tenant',
            body: 'script',
            run: async (r) => {
              // A gradual rollout: live for that share of new connections (100 is all of them).
              const percent = queryInteger(r.http, 'percent', 1, 100);
              return { status: 200, json: { version: await s.putRouter(r.name, r.body as string, percent === 100 ? undefined : percent) } };
            },
          },
        },
      ],
      [new RegExp(`^/v1/tenants/${name}/router/versions$`), { GET: { access: 'tenant', body: 'none', run: async (r) => ({ status: 200, json: { versions: await s.versions(r.name) } }) } }],
      [new RegExp(`^/v1/tenants/${name}/router/rollback$`), { POST: { access: 'tenant', body: 'none', run: async (r) => ({ status: 200, json: { version: await s.rollback(r.name) } }) } }],
      [
        new RegExp(`^/v1/tenants/${name}/router/promote$`),
        { POST: { access: 'tenant', body: 'none', run: async (r) => ({ status: 200, json: { version: await s.promote(r.name, queryInteger(r.http, 'percent', 1, 100)) } }) } },
      ],
      [
        new RegExp(`^/v1/tenants/${name}/router/replay$`),
        { POST: { access: 'tenant', body: 'json', schema: schemas.replay, run: async (r) => ({ status: 200, json: await s.replay(r.name, (r.body as { version: number }).version) }) } },
      ],
      [
        new RegExp(`^/v1/tenants/${name}/logs$`),
        {
          GET: {
            access: 'tenant',
            body: 'none',
            run: async (r) => {
              const since = queryInteger(r.http, 'since', 0, Number.MAX_SAFE_INTEGER) ?? 0;
              const waitS = queryInteger(r.http, 'wait', 0, maxLogWaitS) ?? 0;
              // A reader that goes away stops waiting.
              const gone = new AbortController();
              const abort = (): void => gone.abort();
              r.http.socket.once('close', abort);
              try {
                return { status: 200, json: await s.logs(r.name, since, waitS * 1000, gone.signal) };
              } finally {
                r.http.socket.off('close', abort);
              }
            },
          },
        },
      ],
      [
        new RegExp(`^/v1/tenants/${name}/table$`),
        {
          GET: { access: 'tenant', body: 'none', run: (r) => ({ status: 200, text: s.table(r.name), contentType: 'application/json' }) },
          PUT: {
            access: 'tenant',
            body: 'table',
            schema: schemas.table,
            run: async (r) => {
              await s.putTable(r.name, JSON.stringify(r.body));
              return { status: 200, json: { ok: true } };
            },
          },
        },
      ],
      [new RegExp(`^/v1/tenants/${name}/limits$`), { PUT: { access: 'operator', body: 'json', run: async (r) => ({ status: 200, json: await s.putLimits(r.name, r.body) }) } }],
      [
        new RegExp(`^/v1/tenants/${name}/route$`),
        {
          POST: {
            access: 'tenant',
            body: 'json',
            schema: schemas.route,
            run: async (r) => {
              const b = r.body as { data?: string; base64?: string; version?: number };
              const data = b.data ?? Buffer.from(b.base64!, 'base64').toString('latin1');
              const client = { address: r.http.socket.remoteAddress ?? '127.0.0.1', port: r.http.socket.remotePort ?? 0 };
              return { status: 200, json: await s.dryRun(r.name, data, client, b.version) };
            },
          },
        },
      ],
      [new RegExp(`^/v1/tenants/${name}/rejections$`), { GET: { access: 'tenant', body: 'none', run: (r) => ({ status: 200, json: { rejections: s.rejections(r.name) } }) } }],
      [new RegExp(`^/v1/tenants/${name}/connections$`), { DELETE: { access: 'tenant', body: 'none', run: async (r) => ({ status: 200, json: { closed: await s.closeConnections(r.name) } }) } }],
    ];
  }

  /** A reload or an upgrade, where this node can do it (409 otherwise). */
  async #control(what: 'reload' | 'upgrade'): Promise<Record<string, unknown>> {
    const run = what === 'reload' ? this.#node?.reload : this.#node?.upgrade;
    if (run === undefined) throw new ServiceRefusal('conflict', 'ERR_NOT_SUPPORTED', `this node cannot ${what} (${what === 'upgrade' ? 'an upgrade needs proxy processes and the handoff addon' : 'not started by switchyard serve'})`);
    return run.call(this.#node);
  }

  /**
   * 200 once every tenant port is listening, 503 otherwise. With a cluster store, `store` says
   * whether it can be reached: `down` is still 200 (the node routes on with the configuration in
   * force, and reads answer), with `degraded` naming why; writes are refused meanwhile.
   */
  #health(): Reply {
    const s = this.#service;
    const store = s.storeState;
    const cluster = store === undefined ? {} : { store, revision: s.revision, ...(store === 'down' ? { degraded: ['store'] } : {}) };
    if (!s.healthy) return { status: 503, json: { error: `tenant ports not listening: ${s.notListening.join(', ')}`, ...cluster } };
    return { status: 200, json: { ok: true, ...cluster } };
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let reply: Reply;
    try {
      reply = await this.#dispatch(req);
    } catch (err) {
      if (err instanceof AdminError) reply = { status: err.status, json: { error: err.message, ...err.extra } };
      else if (err instanceof ServiceRefusal) {
        reply = { status: refusalStatus[err.kind], json: { error: err.message, ...err.details } };
        if (err.retryAfterS !== undefined) res.setHeader('retry-after', String(Math.max(1, Math.ceil(err.retryAfterS))));
      }
      else if (err instanceof TenantNotFoundError) reply = { status: 404, json: { error: err.message } };
      else {
        this.#log.error({ err, method: req.method, url: req.url }, 'admin request failed');
        reply = { status: 500, json: { error: 'internal error' } };
      }
    }
    this.#send(req, res, reply);
  }

  async #dispatch(req: IncomingMessage): Promise<Reply> {
    const path = (req.url ?? '/').split('?')[0]!;
    const route = this.#routes.find(([pattern]) => pattern.test(path));
    if (route === undefined) throw new AdminError(404, 'not found');
    const [pattern, methods] = route;
    const handler = methods[req.method ?? ''] ?? (req.method === 'HEAD' ? methods.GET : undefined);
    if (handler === undefined) throw new AdminError(405, `method not allowed; allowed: ${Object.keys(methods).join(', ')}`, { allow: Object.keys(methods) });
    const name = decodeName(pattern.exec(path)?.[1] ?? '');

    const who = await this.#authenticate(req);
    if (handler.access !== 'anyone') {
      if (who === undefined) throw new AdminError(401, 'a valid "Authorization: Bearer TOKEN" header is required');
      if (who !== 'operator') {
        if (handler.access === 'operator') throw new AdminError(403, 'this needs the operator token');
        if (who.tenant !== name) throw new AdminError(403, 'a tenant token reaches only its own tenant');
      }
    }
    if (name !== '' && (!validName(name) || !this.#service.has(name))) throw new AdminError(404, `no tenant named "${name}"`);
    let body = await readBody(req, handler.body);
    if (handler.schema !== undefined) {
      const checked = check(handler.schema, body, handler.body === 'table' ? 'the table' : 'the body');
      if (typeof checked === 'string') throw new AdminError(400, checked);
      body = checked;
    }
    return handler.run({ who, name, body, http: req });
  }

  /** The operator, a tenant, or nobody (no token, or one that matches nothing). */
  async #authenticate(req: IncomingMessage): Promise<Who | undefined> {
    const m = /^Bearer ([\x21-\x7e]{1,256})$/i.exec(req.headers.authorization ?? '');
    if (m === null) return undefined;
    const token = m[1]!;
    if (sameHash(hashToken(token), this.#operatorHash)) return 'operator';
    const tenant = await this.#service.tenantOf(token);
    return tenant === undefined ? undefined : { tenant };
  }

  #send(req: IncomingMessage, res: ServerResponse, reply: Reply): void {
    if (reply.status === 401) res.setHeader('www-authenticate', 'Bearer');
    if (reply.status === 503) res.setHeader('connection', 'close');
    if (reply.status === 405 && typeof reply.json === 'object' && reply.json !== null && 'allow' in reply.json) {
      res.setHeader('allow', (reply.json.allow as string[]).join(', '));
    }
    for (const [k, v] of Object.entries(reply.headers ?? {})) res.setHeader(k, v);
    if (reply.text !== undefined) {
      res.writeHead(reply.status, { 'content-type': reply.contentType ?? 'text/plain; version=0.0.4; charset=utf-8' });
      res.end(reply.text);
    } else if (reply.json !== undefined) {
      res.writeHead(reply.status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(reply.json));
    } else {
      res.writeHead(reply.status);
      res.end();
    }
    // Whatever is left of a refused body is read and dropped, so the answer is not lost to a reset.
    if (!req.complete) req.resume();
    this.#log.debug({ method: req.method, url: req.url, status: reply.status }, 'admin request');
  }
}

/** The longest a log reader may wait for new entries (`GET …/logs?wait=`), in seconds. */
const maxLogWaitS = 30;

/** An integer query parameter within [min, max]; undefined when absent; 400 otherwise. */
function queryInteger(req: IncomingMessage, key: string, min: number, max: number): number | undefined {
  const text = new URL(req.url ?? '/', 'http://admin').searchParams.get(key);
  if (text === null) return undefined;
  const n = Number(text);
  if (!/^\d{1,16}$/.test(text) || n < min || n > max) throw new AdminError(400, `${key} must be an integer from ${min} to ${max}`);
  return n;
}

/** A tenant name from a path; one that is not even valid percent-encoding names no tenant. */
function decodeName(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return '\u0000';
  }
}


/**
 * Reads a body within its limit: 413 as soon as it is past it (the rest is drained, so the
 * answer is not lost to a reset), 400 for JSON that does not parse or text that is not UTF-8.
 */
async function readBody(req: IncomingMessage, kind: BodyKind): Promise<unknown> {
  const limit = kind === 'script' ? bodyLimits.script : kind === 'table' ? bodyLimits.table : bodyLimits.other;
  const buf = await new Promise<Buffer>((resolve, reject) => {
    if (Number(req.headers['content-length'] ?? 0) > limit) {
      req.resume();
      reject(new AdminError(413, `body larger than ${limit} bytes`));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size <= limit) {
        chunks.push(chunk);
        return;
      }
      req.off('data', onData);
      req.off('end', onEnd);
      req.resume();
      reject(new AdminError(413, `body larger than ${limit} bytes`));
    };
    const onEnd = (): void => resolve(Buffer.concat(chunks));
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('error', reject);
  });
  if (kind === 'none') return undefined;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(buf);
  } catch {
    throw new AdminError(400, 'the body is not UTF-8');
  }
  if (kind === 'script') return text;
  const parsed = parseJsonBody(text);
  if (!parsed.ok) throw new AdminError(400, `the body is ${parsed.reason}`);
  return parsed.value;
}
