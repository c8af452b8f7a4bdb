import { readFile } from 'node:fs/promises';
import { basename, extname } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Limits } from './config.js';
import { TenantListener } from './listener.js';
import type { Logger } from './log.js';
import { RouterConsole } from './sandbox/console.js';
import { IsolateRouter } from './sandbox/isolate-router.js';

export interface SingleRouterOptions {
  readonly file: string;
  readonly host: string;
  readonly port: number;
  readonly limits: Limits;
  readonly log: Logger;
}

/** A running single-router service: one router, one port, any backend (ProxyMachine's mode). */
export interface Service {
  readonly address: AddressInfo;
  /** Stop accepting; resolves once every connection has finished. */
  close(): Promise<void>;
  /** Close every open connection now. */
  destroy(): void;
}

/** `switchyard -c ROUTER.js`: loads the router (its base name is the tenant) and listens. */
export async function startSingleRouter(o: SingleRouterOptions): Promise<Service> {
  const source = await readFile(o.file, 'utf8');
  const tenant = basename(o.file, extname(o.file));
  const router = await IsolateRouter.load({
    source,
    filename: basename(o.file),
    routerTimeoutMs: o.limits.routerTimeoutMs,
    memoryMb: o.limits.memoryMb,
    console: new RouterConsole(o.log, tenant),
  });
  const listener = new TenantListener({ tenant, router, limits: o.limits, log: o.log });
  let address: AddressInfo;
  try {
    address = await listener.listen(o.port, o.host);
  } catch (err) {
    router.dispose();
    throw err;
  }
  listener.log.info({ host: address.address, port: address.port, router: o.file }, 'listening');
  return {
    address,
    close: async () => {
      await listener.close();
      router.dispose();
    },
    destroy: () => {
      listener.destroy();
    },
  };
}
