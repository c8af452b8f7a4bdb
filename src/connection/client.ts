import type { Endpoint } from '../routing/endpoint.js';
import type { ConnInfo } from '../sandbox/router.js';
import type { ConnectCancel, ConnectPlan } from './upstream.js';

/** A client's addresses, as the data path saw them at accept: ConnInfo before it has a tenant. */
export type Peer = Omit<ConnInfo, 'tenant'>;

/** What a data path tells whoever listens of each client it accepts. */
export type OnClient = (client: Client, peer: Peer) => void;

/** What a connection hears from its client. */
export interface ClientHandler {
  /** A chunk from the client, before it is relayed. */
  received(chunk: Buffer): void;
  /** The client sent FIN, before it is relayed. */
  ended(): void;
  /** Everything owed to the client is written, after a `write()` that returned more than 0. */
  drained(): void;
  /**
   * The client is gone, with its relay if it had one: both sides closed, or a socket failed
   * (`errno` is then non-zero). The bytes from and to the client are final.
   */
  closed(bytesIn: number, bytesOut: number, errno: number): void;
}

/**
 * A backend connected for one client (`Client.connect`), and relayed with that client only:
 * each kind of client connects its backends its own way (the native path in the addon, Node's
 * with a net.Socket), so a backend of one kind never meets a client of the other.
 */
export interface Upstream {
  /** The candidate that accepted. */
  readonly endpoint: Endpoint;
  /**
   * Relays the client with this backend, after the bytes owed to each side; the client's
   * handler hears `closed()` once both sides have closed. Throws if the relay cannot start
   * (the caller then destroys both).
   */
  relay(toUpstream: Buffer | undefined, toClient: Buffer | undefined): void;
  /** Closes it unrelayed. */
  destroy(): void;
}

/**
 * One client, from accept to close, as a connection drives it. Two kinds: the native data
 * path's (`NativeClient`, an id in the addon), or Node's (`SocketClient`, a net.Socket) where
 * the addon does not run.
 */
export interface Client {
  /** Starts telling `handler`; the first bytes, if they came with the accept, arrive now. */
  listen(handler: ClientHandler): void;
  /** Bytes received from and sent to the client so far. */
  bytes(): readonly [number, number];
  /**
   * Reads the client for at most `limit` more bytes (0: not at all) until told again, before
   * it is relayed; what it sends past that waits in the kernel, and TCP holds the client back.
   */
  read(limit: number): void;
  /**
   * Sends bytes (latin1) to the client before it is relayed: a router's reply. Returns the
   * bytes owed to the client that Switchyard still holds (not yet taken by the kernel);
   * `drained()` follows once that is 0.
   */
  write(bytes: string): number;
  /** Stops reading the client (while its backend is connected); what it sends waits. */
  pause(): void;
  /** Sends `reply`, then FIN; what the client still sends is dropped until it closes too. */
  end(reply?: string): void;
  /**
   * Connects a backend this client can be relayed with: the plan's candidates in order, with
   * its retries (`connectUpstream`). Rejects with ConnectError, or the cancel's reason.
   */
  connect(plan: ConnectPlan, cancel: ConnectCancel): Promise<Upstream>;
  /** Milliseconds since bytes last moved either way, while relaying. */
  idleMs(): number;
  /** Closes the client (and its relay) now; nobody is called back. Returns the final bytes. */
  destroy(): readonly [number, number];
}
