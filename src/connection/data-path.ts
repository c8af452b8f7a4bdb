import type { AddressInfo } from 'node:net';
import type { RelayFigures } from '../metrics/stats.js';
import type { OnClient } from './client.js';
import { NativeRelay } from './native-relay.js';
import { NodeDataPath } from './node-relay.js';

/**
 * Where a listener accepts: an address it binds itself (a host name is resolved first; port 0
 * picks a free port), or a listening socket it is handed as a descriptor (bound by another
 * process, say). A handed descriptor is the listener's once it listens: it is closed when the
 * listener stops (other processes' copies keep the port open). If listening on it fails, the
 * caller still holds it.
 */
export type ListenOn = { readonly host: string; readonly port: number } | { readonly fd: number };

/** What a data path is told when it starts accepting for a listener. */
export interface Accepting {
  /** Each client accepted. */
  readonly onClient: OnClient;
  /** Bytes each client is read for at accept, at most (the buffer cap). */
  readonly firstRead: number;
  /** A listening socket failed after it was listening (Node's path: accept errors). */
  readonly onError: (err: Error) => void;
}

/** A listening socket being accepted on. */
export interface Acceptor {
  /** The bound address. */
  readonly address: AddressInfo;
  /** The clients accepted from now on are read for at most `bytes` at accept. */
  firstRead(bytes: number): void;
  /** Stops accepting and closes the socket: new clients are refused. */
  close(): void;
}

/** For the start-up log line: which relay connections get, and why not the native one. */
export type RelayDescription = { readonly relay: 'splice' } | { readonly relay: 'node'; readonly relayFallback: string };

/**
 * How a process accepts, reads and relays its clients: the addon's (`NativeRelay`: splice(2),
 * no net.Socket) or Node's (`NodeDataPath`: net.Server, net.Socket, streams). A listener is
 * given the one it uses; `processDataPath()` chooses it once per process.
 */
export interface DataPath {
  readonly kind: 'splice' | 'node';
  /** Starts accepting on `on`; rejects as Node's listen does (`EADDRINUSE`, `EACCES` …). */
  listen(on: ListenOn, accepting: Accepting): Promise<Acceptor>;
  figures(): RelayFigures;
  describe(): RelayDescription;
}

let chosen: DataPath | undefined;

/**
 * The process's data path: the native one where it runs (Linux, the addon built, and not
 * `SWITCHYARD_RELAY=node`), Node's otherwise. Chosen once (the addon is set up once per
 * process); whoever starts the process's listeners calls this and hands the result on.
 */
export function processDataPath(): DataPath {
  chosen ??= choose();
  return chosen;
}

function choose(): DataPath {
  const native = NativeRelay.load();
  return native instanceof NativeRelay ? native : new NodeDataPath(native.reason);
}
