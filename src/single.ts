import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Limits } from './config.js';
import { processDataPath } from './connection/data-path.js';
import { runtimeInfo } from './runtime.js';
import { TenantListener } from './listener.js';
import type { Logger } from './log.js';
import { RouterConsole } from './sandbox/console.js';
import { SandboxPool } from './sandbox/pool.js';
import { ProcessRouter } from './sandbox/process-router.js';

export interface SingleRouterOptions {
  readonly file: string;
  readonly host: string;
  readonly port: number;
  readonly limits: Limits;
  readonly log: Logger;
  /** The user sandbox workers run as when the service runs as root (default `nobody`). */
  readonly sandboxUser?: string;
}

/** A running single-router service: one router, one port, any backend (ProxyMachine's mode). */
export interface Service {
  readonly address: AddressInfo;
  /** Stop accepting; resolves once every connection has finished. */
  close(): Promise<void>;
  /** Close every open connection now. */
  destroy(): void;
}

/** Single-router mode: SIGHUP loads the router file again. */
export interface SingleRouterService extends Service {
  /** Loads the router file again and makes it live for new connections; rejects, changing nothing, when it does not load. */
  reload(): Promise<void>;
}

/** `switchyard -c ROUTER.js`: loads the router (its file's base name is the tenant) and listens. */
export async function startSingleRouter(o: SingleRouterOptions): Promise<SingleRouterService> {
  const source = await readFile(o.file, 'utf8');
  // CONTRACT §2: in single-router mode the tenant is the router file's base name (git.js).
  const tenant = basename(o.file);
  // One tenant: one shared worker, plus a quarantine worker should it keep crashing that one.
  const pool = new SandboxPool({ log: o.log, workers: 1, ...(o.sandboxUser === undefined ? {} : { sandboxUser: o.sandboxUser }) });
  let listener: TenantListener;
  let address: AddressInfo;
  const console = new RouterConsole(o.log, tenant);
  const dataPath = processDataPath();
  const load = (text: string): Promise<ProcessRouter> =>
    ProcessRouter.load(pool, { tenant, source: text, filename: basename(o.file), routerTimeoutMs: o.limits.routerTimeoutMs, memoryMb: o.limits.memoryMb }, console);
  try {
    const router = await load(source);
    listener = new TenantListener({ tenant, router, limits: o.limits, log: o.log, dataPath });
    address = await listener.listen(o.port, o.host);
  } catch (err) {
    await pool.close();
    throw err;
  }
  listener.log.info({ host: address.address, port: address.port, router: o.file, ...dataPath.describe(), runtime: runtimeInfo() }, 'listening');
  return {
    address,
    close: async () => {
      await listener.close();
      await pool.close();
    },
    destroy: () => {
      listener.destroy();
    },
    reload: async () => {
      listener.setRouter(await load(await readFile(o.file, 'utf8')));
      listener.log.info({ router: o.file }, 'router reloaded');
    },
  };
}
