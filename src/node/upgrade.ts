/**
 * A binary upgrade with no client refused: the running master starts the switchyard on disk as
 * its successor, hands it every listening socket over a unix socket (descriptors, SCM_RIGHTS),
 * and releases the store to it; the successor serves on the same sockets, and the old master's
 * proxy processes then finish their connections under the old code before it exits.
 *
 *   old master                                   new master (SWITCHYARD_UPGRADE=1, IPC to old)
 *   spawn ─────────────────────────────────────▶ binds DATA/handover-PID.sock
 *                      ◀──── { t: 'handover', path }
 *   connects; sends the admin socket and each
 *   tenant port's sockets, then { done } ──────▶ receives them
 *                      ◀──── { t: 'release-store' }
 *   stops taking admin requests, closes the
 *   store (its lock) ─── { t: 'store-released' } ▶ opens the store, starts its proxy processes
 *                                                  on the handed sockets, serves
 *                      ◀──── { t: 'serving', pid }
 *   drains: its proxy processes stop accepting
 *   and finish; exits                              carries on alone
 *
 * Admin requests that arrive meanwhile wait in the admin socket's queue for the new master.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { handoff } from './handoff.js';

/** The listening sockets a master holds: what it hands over. */
export interface HeldSockets {
  readonly admin: number | undefined;
  readonly ports: readonly { readonly port: number; readonly fds: readonly number[] }[];
}

/** Sockets received from the previous master, by port. */
export interface Inherited {
  readonly admin: number | undefined;
  readonly ports: ReadonlyMap<number, readonly number[]>;
}

type UpgradeMessage =
  | { readonly t: 'handover'; readonly path: string }
  | { readonly t: 'release-store' }
  | { readonly t: 'store-released' }
  | { readonly t: 'serving'; readonly pid: number }
  | { readonly t: 'failed'; readonly error: string };

/** What the old master does at each step (serve.ts). */
export interface HandOverSteps {
  sockets(): HeldSockets;
  /** Stops taking admin requests and closes the store, releasing its lock. */
  releaseStore(): Promise<void>;
  /** The successor serves: drain the proxy processes, close everything, exit. */
  retire(): Promise<void>;
}

/** Descriptors per message (the kernel takes at most 253). */
const fdsPerMessage = 200;

/**
 * The old master's side: starts the successor and hands over. Resolves once the successor
 * serves (and this master has begun retiring); rejects, with this master still serving, if the
 * successor fails before it took the store.
 */
export async function upgrade(steps: HandOverSteps, log: Logger, timeoutMs = 60_000): Promise<{ pid: number }> {
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...process.argv.slice(2)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, SWITCHYARD_UPGRADE: '1' },
    detached: true,
  });
  const messages: UpgradeMessage[] = [];
  const waiters: (() => void)[] = [];
  child.on('message', (m) => {
    messages.push(m as UpgradeMessage);
    waiters.splice(0).forEach((w) => w());
  });
  let exited = false;
  child.once('exit', () => {
    exited = true;
    waiters.splice(0).forEach((w) => w());
  });
  const next = async <K extends UpgradeMessage['t']>(t: K): Promise<UpgradeMessage & { t: K }> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = messages.findIndex((m) => m.t === t || m.t === 'failed');
      if (i >= 0) {
        const m = messages.splice(i, 1)[0]!;
        if (m.t === 'failed') throw new Error(`the new master failed: ${m.error}`);
        return m as UpgradeMessage & { t: K };
      }
      if (exited) throw new Error('the new master exited before it took over');
      if (Date.now() > deadline) throw new Error(`the new master did not say "${t}" within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        waiters.push(resolve);
        setTimeout(resolve, 1000).unref();
      });
    }
  };
  let storeReleased = false;
  try {
    const { path } = await next('handover');
    const sock = handoff().connectUnix(path);
    try {
      const held = steps.sockets();
      const send = (payload: unknown, fds: readonly number[]): void => handoff().sendFds(sock, Buffer.from(JSON.stringify(payload)), fds);
      if (held.admin !== undefined) send({ admin: true }, [held.admin]);
      for (const { port, fds } of held.ports) {
        for (let k = 0; k < fds.length; k += fdsPerMessage) send({ port }, fds.slice(k, k + fdsPerMessage));
      }
      send({ done: true }, []);
    } finally {
      handoff().close(sock);
    }
    await next('release-store');
    log.info({ successor: child.pid }, 'upgrade: sockets handed over; releasing the store');
    await steps.releaseStore();
    storeReleased = true;
    child.send({ t: 'store-released' } satisfies UpgradeMessage);
    const { pid } = await next('serving');
    log.info({ successor: pid }, 'upgrade: the new master serves; draining this one');
    child.disconnect();
    child.unref();
    void steps.retire();
    return { pid };
  } catch (err) {
    if (!exited) child.kill('SIGKILL');
    if (storeReleased) {
      // The store is no longer this master's: it cannot serve changes. Retire anyway; the
      // service manager restarts the node.
      log.fatal({ err: (err as Error).message }, 'upgrade failed after the store was released; exiting');
      void steps.retire();
    }
    throw err;
  }
}

/** In a master started by `upgrade()`: the IPC channel to the old master. */
export function isSuccessor(): boolean {
  return process.env['SWITCHYARD_UPGRADE'] === '1' && process.send !== undefined;
}

/**
 * The new master's side, before it opens the store: receives the sockets, then asks for the
 * store. Returns the sockets, and `serving()` to call once it serves.
 */
export async function takeOver(dataDir: string, log: Logger, timeoutMs = 30_000): Promise<{ inherited: Inherited; serving(): void; failed(err: Error): void }> {
  const tell = (m: UpgradeMessage): void => {
    process.send?.(m);
  };
  const path = join(dataDir, `handover-${process.pid}.sock`);
  rmSync(path, { force: true });
  const listening = handoff().listenUnix(path);
  const ports = new Map<number, number[]>();
  let admin: number | undefined;
  try {
    tell({ t: 'handover', path });
    const sock = handoff().acceptUnix(listening, timeoutMs);
    if (sock < 0) throw new Error('the old master did not connect to hand its sockets over');
    try {
      for (;;) {
        const got = handoff().recvFds(sock, timeoutMs);
        if (got === null) throw new Error('the old master stopped handing sockets over');
        const [payload, fds] = got;
        const m = JSON.parse(payload.toString('utf8')) as { admin?: boolean; port?: number; done?: boolean };
        if (m.done === true) break;
        if (m.admin === true) admin = fds[0];
        else if (m.port !== undefined) ports.set(m.port, [...(ports.get(m.port) ?? []), ...fds]);
      }
    } finally {
      handoff().close(sock);
    }
  } finally {
    handoff().close(listening);
    rmSync(path, { force: true });
  }
  log.info({ admin: admin !== undefined, ports: ports.size }, 'upgrade: sockets received; asking for the store');
  const released = new Promise<void>((resolve) => {
    const on = (m: unknown): void => {
      if ((m as UpgradeMessage).t !== 'store-released') return;
      process.off('message', on);
      resolve();
    };
    process.on('message', on);
  });
  tell({ t: 'release-store' });
  await Promise.race([released, once(process, 'disconnect').then(() => Promise.reject(new Error('the old master went away')))]);
  return {
    inherited: { admin, ports },
    serving: () => {
      tell({ t: 'serving', pid: process.pid });
      process.disconnect?.();
    },
    failed: (err) => tell({ t: 'failed', error: err.message }),
  };
}
