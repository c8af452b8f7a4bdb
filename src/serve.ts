import { mkdir, open, readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { AdminConnectionOptions } from './admin/connections.js';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { AdminServer } from './admin/server.js';
import { bindListener, type BoundSocket, handoff } from './node/handoff.js';
import { ProxyGroup } from './node/proxy-group.js';
import { SpreadListener } from './node/spread-listener.js';
import type { HandOverSteps, Inherited } from './node/upgrade.js';
import { capabilities, type DropOptions, dropPrivileges } from './node/privileges.js';
import type { Limits } from './config.js';
import { processDataPath } from './connection/data-path.js';
import { runtimeInfo } from './runtime.js';
import { SwitchyardError } from './errors.js';
import type { Logger } from './log.js';
import type { AllowRule } from './routing/policy.js';
import { sandboxIdentity } from './sandbox/confine.js';
import { SandboxPool } from './sandbox/pool.js';
import type { Service } from './single.js';
import { HostingService, type Quotas } from './tenants/service.js';
import { PgTenantStore, redactUrl } from './tenants/pg-store.js';
import { SqliteTenantStore } from './tenants/sqlite-store.js';
import type { TenantStore } from './tenants/store.js';
import { newToken } from './tenants/tokens.js';

export interface ServeOptions {
  readonly dataDir: string;
  /**
   * A PostgreSQL URL: the store shared by every node of a cluster (the data directory then holds
   * nothing but an optional configuration file). Absent: SQLite in the data directory.
   */
  readonly store?: { readonly url: string; readonly poolSize?: number };
  /** With a PostgreSQL store: the change stream's reconnection backoff and polling. */
  readonly changeFeed?: { readonly backoffMs?: readonly [number, number]; readonly pollMs?: number };
  readonly admin: { readonly host: string; readonly port: number };
  readonly ports: readonly [number, number];
  readonly bindHost: string;
  readonly allow: readonly AllowRule[];
  readonly defaults: Limits;
  readonly workers: number;
  readonly maxWarmIsolates: number;
  readonly maxWarmMb?: number;
  /** The user sandbox workers run as when the service runs as root (default `nobody`). */
  readonly sandboxUser?: string;
  /** How often a tenant port that could not be bound at start is tried again (default 5 s). */
  readonly rebindAfterMs?: number;
  readonly log: Logger;
  /** The admin API's connection cap and deadlines (admin/connections.ts); its defaults otherwise. */
  readonly adminConnections?: Partial<AdminConnectionOptions>;
  /** Push rate, script checks and router versions kept (tenants/quotas.ts). */
  readonly quotas?: Partial<Quotas>;
  /** The configuration as `GET /v1/config` shows it. */
  readonly describeConfig?: () => unknown;
  /** Where the generated operator token is announced, once. */
  readonly announce: (line: string) => void;
  /**
   * Proxy processes that accept and relay clients (node/proxy-group.ts); 0: this process does
   * (one event loop, as embedded in tests). Needs Linux and the handoff addon.
   */
  readonly processes?: number;
  /** The log level proxy processes start with. */
  readonly logLevel?: string;
  /**
   * Started as root: the user to become (and the capabilities kept) once the admin socket is
   * bound, before the data directory, the store or any process is touched.
   */
  readonly dropTo?: DropOptions;
  /** Sockets a previous master handed over (an upgrade): used instead of binding. */
  readonly inherited?: Inherited;
  /** A reload or an upgrade asked over the admin API; absent, the API answers 409. */
  readonly control?: { reload(): Promise<Record<string, unknown>>; upgrade?(): Promise<Record<string, unknown>> };
}

/**
 * The operator token: SWITCHYARD_ADMIN_TOKEN when set; otherwise the one in the data
 * directory, generated (mode 0600) and announced on first start.
 */
async function operatorToken(o: ServeOptions): Promise<string> {
  const fromEnv = process.env.SWITCHYARD_ADMIN_TOKEN;
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  if (o.store !== undefined) {
    // Every node must accept the same token, and none has a data directory of its own to keep one in.
    throw new SwitchyardError('ERR_OPERATOR_TOKEN_REQUIRED', 'with a PostgreSQL store, set SWITCHYARD_ADMIN_TOKEN (the same operator token on every node)');
  }
  const file = join(o.dataDir, 'admin-token');
  try {
    return (await readFile(file, 'utf8')).trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const token = newToken('sy_op');
  const handle = await open(file, 'wx', 0o600);
  try {
    await handle.writeFile(`${token}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  o.announce(`switchyard: generated the operator token (kept in ${file}): ${token}`);
  return token;
}

/** `switchyard serve`: the store, the sandbox pool, every tenant's port, and the admin API. */
export interface HostingRun extends Service {
  readonly adminPort: number;
  pendingRebinds(): number;
  /** New operator rules and limits' defaults for new connections (a reloaded configuration). */
  reconfigure(o: { readonly allow: readonly AllowRule[]; readonly defaults: Limits }): Promise<void>;
  /** With a PostgreSQL store: whether it can be reached (`up`/`down`); undefined with SQLite. */
  storeState(): 'up' | 'down' | undefined;
  /** The proxy processes, when the node runs them. */
  readonly proxies: ProxyGroup | undefined;
  /** New log level, here and in the proxy processes. */
  setLogLevel(level: string): void;
  /** What an upgrade takes from this master (with proxy processes only). */
  readonly handOver: Omit<HandOverSteps, 'retire'> | undefined;
}

export async function startHosting(o: ServeOptions): Promise<HostingRun> {
  // With proxy processes the admin address is bound first (as root, when started as root):
  // proxy processes must know it to deny it as a backend.
  let adminSocket: BoundSocket | undefined;
  if ((o.processes ?? 0) > 0) {
    const handed = o.inherited?.admin;
    if (handed !== undefined) {
      const [address, port] = handoff().localAddress(handed);
      adminSocket = { fd: handed, address, port };
    } else adminSocket = bindListener(isIP(o.admin.host) === 0 ? (await lookup(o.admin.host)).address : o.admin.host, o.admin.port);
  }
  if (o.dropTo !== undefined) {
    const dropped = dropPrivileges(o.dropTo);
    o.log.info({ user: dropped.user, uid: dropped.uid, gid: dropped.gid, switched: dropped.switched, capabilities: capabilities() }, 'privileges dropped');
  }
  sandboxIdentity(o.sandboxUser); // an unknown sandbox user: refused before anything is touched
  if (o.store === undefined) await mkdir(o.dataDir, { recursive: true, mode: 0o700 });
  const token = await operatorToken(o);
  const store: TenantStore =
    o.store === undefined
      ? await SqliteTenantStore.open(o.dataDir)
      : await PgTenantStore.open({
          url: o.store.url,
          ...(o.store.poolSize === undefined ? {} : { poolSize: o.store.poolSize }),
          applicationName: `switchyard ${o.bindHost} ${hostname()}`.slice(0, 56),
        });
  const pool = new SandboxPool({
    log: o.log,
    workers: o.workers,
    maxWarmIsolates: o.maxWarmIsolates,
    ...(o.maxWarmMb === undefined ? {} : { maxWarmMb: o.maxWarmMb }),
    ...(o.sandboxUser === undefined ? {} : { sandboxUser: o.sandboxUser }),
  });
  let admin: AdminServer | undefined;
  let adminPort = o.admin.port;
  let group: ProxyGroup | undefined;
  try {
    if (adminSocket !== undefined) {
      adminPort = adminSocket.port;
      group = new ProxyGroup({ count: o.processes!, log: o.log, logLevel: o.logLevel ?? 'info', ports: o.ports });
      await group.start();
    }
    const spread = group;
    const own = { range: o.ports, extra: [adminPort] } as const;
    let figures: Awaited<ReturnType<ProxyGroup['figures']>> | undefined;
    const ports = new Map<string, SpreadListener>();
    const inherited = new Map(o.inherited?.ports ?? []);
    const inherit = (port: number): readonly number[] | undefined => {
      const fds = inherited.get(port);
      inherited.delete(port);
      return fds;
    };
    const service = await HostingService.start({
      store,
      pool,
      log: o.log,
      ports: o.ports,
      bindHost: o.bindHost,
      allow: o.allow,
      defaults: o.defaults,
      ownPorts: () => [adminPort],
      ...(o.rebindAfterMs === undefined ? {} : { rebindAfterMs: o.rebindAfterMs }),
      ...(o.quotas === undefined ? {} : { quotas: o.quotas }),
      ...(o.changeFeed === undefined ? {} : { changeFeed: o.changeFeed }),
      ...(spread === undefined
        ? {}
        : {
            newPort: (options) => {
              const port = new SpreadListener(spread, options, own, inherit);
              ports.set(options.tenant, port);
              return port;
            },
            refresh: async () => {
              figures = await spread.figures();
              for (const [name, port] of ports) port.update(figures.tenants.get(name));
            },
            relayFigures: () => figures?.relay,
            processFigures: () => figures?.processes,
          }),
    });
    admin = new AdminServer(service, token, o.log, o.adminConnections, o.describeConfig, o.control);
    const address = adminSocket === undefined ? await admin.listen(o.admin.port, o.admin.host) : await admin.listen({ fd: adminSocket.fd });
    adminPort = address.port;
    o.log.info(
      {
        admin: `${address.address}:${address.port}`,
        ports: `${o.ports[0]}-${o.ports[1]}`,
        bind: o.bindHost,
        ...(o.store === undefined ? { data: o.dataDir } : { store: redactUrl(o.store.url), revision: service.revision }),
        processes: spread === undefined ? 0 : spread.count,
        ...processDataPath().describe(),
        runtime: runtimeInfo(),
      },
      'serving',
    );
    const adminServer = admin;
    // Sockets handed over for tenants that are gone: closed.
    for (const fds of inherited.values()) for (const fd of fds) handoff().close(fd);
    inherited.clear();
    const adminFd = adminSocket?.fd;
    return {
      address,
      adminPort: address.port,
      close: async () => {
        await service.close();
        await spread?.close();
        await adminServer.close();
        await pool.close();
        await store.close();
      },
      destroy: () => {
        service.destroy();
        spread?.destroy();
      },
      proxies: spread,
      handOver:
        spread === undefined
          ? undefined
          : {
              sockets: () => ({ admin: adminFd, ports: [...ports.values()].filter((p) => p.listening).map((p) => ({ port: p.port, fds: p.fds })) }),
              releaseStore: async () => {
                adminServer.stopAccepting();
                await store.close();
              },
            },
      setLogLevel: (level) => spread?.setLogLevel(level),
      storeState: () => service.storeState,
      pendingRebinds: () => service.pendingRebinds,
      reconfigure: (c) => service.reconfigure(c),
    };
  } catch (err) {
    await admin?.close();
    group?.destroy();
    if (adminSocket !== undefined && admin === undefined) handoff().close(adminSocket.fd);
    await pool.close();
    await store.close();
    throw err;
  }
}
