import { createRequire } from 'node:module';
import { isIP } from 'node:net';

/**
 * The addon built from src/native/handoff.c: listening sockets bound once and handed between
 * processes as descriptors, and the node's shared connection counters. Linux only.
 */
interface Binding {
  bindListener(host: string, port: number, reusePort: boolean, backlog: number): number;
  localAddress(fd: number): [string, number];
  close(fd: number): void;
  socketPair(): [number, number];
  listenUnix(path: string): number;
  connectUnix(path: string): number;
  acceptUnix(fd: number, timeoutMs: number): number;
  sendFds(sock: number, payload: Buffer, fds: readonly number[]): void;
  recvFds(sock: number, timeoutMs: number): [Buffer, number[]] | null;
  countersCreate(ports: number, rows: number): number;
  countersAttach(fd: number, ports: number, rows: number): void;
  acquire(port: number, row: number, max: number): boolean;
  release(port: number, row: number): void;
  count(port: number): number;
  reclaim(row: number): number;
}

/** Where `npm ci` (node-gyp) leaves the addon, from dist/src/node/. */
const addonPath = '../../../build/Release/handoff.node';

let binding: Binding | undefined;

/** The addon; throws (with why) where it cannot load. */
export function handoff(): Binding {
  binding ??= createRequire(import.meta.url)(addonPath) as Binding;
  return binding;
}

/** Whether descriptors can be handed between processes here (Linux, the addon built). */
export function canHandOff(): boolean {
  if (process.platform !== 'linux') return false;
  try {
    handoff();
    return true;
  } catch {
    return false;
  }
}

/** A listening TCP socket, bound by the addon: its descriptor and the address it got. */
export interface BoundSocket {
  readonly fd: number;
  readonly address: string;
  readonly port: number;
}

/**
 * Binds and listens on `host:port` (an IP address; port 0 picks one) without any event loop
 * accepting on it: whoever is handed the descriptor accepts. With `reusePort`, more sockets
 * can be bound to the same address (SO_REUSEPORT) and the kernel spreads clients over them.
 */
export function bindListener(host: string, port: number, options: { reusePort?: boolean; backlog?: number } = {}): BoundSocket {
  if (isIP(host.replace(/%.*$/, '')) === 0) throw Object.assign(new Error(`cannot bind ${host}: an IP address is needed`), { code: 'ERR_BIND_HOST' });
  const b = handoff();
  const fd = b.bindListener(host, port, options.reusePort ?? false, options.backlog ?? 1024);
  const [address, bound] = b.localAddress(fd);
  return { fd, address, port: bound };
}
