// The Switchyard router API: what a router script sees, as TypeScript declarations.
//
// A router is a classic script (no import, no export) whose globals are declared here. For
// completion and type checking in an editor, start the router with
//
//   // @ts-check
//   /// <reference path="./router.d.ts" />
//
// next to this file (`switchyard router types > router.d.ts` prints it), or, with Switchyard
// installed as a package, `/// <reference types="switchyard" />`. From the command line:
// `tsc --noEmit --allowJs --checkJs --strict --lib es2023 router.js`. The lib must be
// ECMAScript only (no DOM, no @types/node): a router has neither.

/** One backend, `host:port`: a name, an IPv4 address, or `[IPv6]:port`. At most 262 characters. */
type SwitchyardRemote = string;

/**
 * Connect to `remote` (or the first of its candidates that answers), replay what the client
 * sent (or `data` instead), send `reply` to the client, then relay both ways.
 */
interface SwitchyardRemoteDecision {
  /** One backend, or 1–16 candidates tried in order until one connects (failover). */
  readonly remote: SwitchyardRemote | readonly SwitchyardRemote[];
  /** Sent to the backend instead of the bytes the router saw (latin1, at most 64 KiB). */
  readonly data?: string;
  /** Sent to the client once the backend is connected (latin1, at most 64 KiB). */
  readonly reply?: string;
  /** Seconds one connect attempt may take (a finite number > 0). */
  readonly connectTimeout?: number;
  /** Seconds with no byte either way before the connection is closed (a finite number > 0). */
  readonly inactivityTimeout?: number;
  /** First send a PROXY protocol v1 or v2 header with the client's address. */
  readonly proxyProtocol?: 1 | 2;
  readonly noop?: never;
  readonly close?: never;
}

/** Wait for more data; send `reply` to the client first, if given (SOCKS, a Postgres SSLRequest, a greeting). */
interface SwitchyardNoopDecision {
  readonly noop: true;
  readonly reply?: string;
  readonly remote?: never;
  readonly close?: never;
}

/** Close the client; a string is sent to it first (latin1, at most 64 KiB). */
interface SwitchyardCloseDecision {
  readonly close: true | string;
  readonly remote?: never;
  readonly noop?: never;
}

/**
 * What a router returns: a plain object with exactly one of `remote`, `noop`, `close`, and only
 * the other keys listed with it. Strings are sent as latin1 bytes (no character above U+00FF).
 * Anything else closes that client's connection.
 */
type SwitchyardDecision = SwitchyardRemoteDecision | SwitchyardNoopDecision | SwitchyardCloseDecision;

/** The client connection a router is asked about. */
interface SwitchyardConn {
  /** The tenant (in single-router mode, the router file's base name). */
  readonly tenant: string;
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localAddress: string;
  readonly localPort: number;
}

/**
 * The tenant's routing table: a deeply frozen copy of the JSON object uploaded with
 * `PUT /v1/tenants/:name/table` (`{}` before any upload, and in single-router mode).
 */
interface SwitchyardTable {
  readonly [key: string]: any;
}

/** console: lines go to the service's log and the tenant's own log, rate-limited (20 lines a call, 1 KiB a line). */
interface SwitchyardConsole {
  log(...values: unknown[]): void;
  info(...values: unknown[]): void;
  debug(...values: unknown[]): void;
  warn(...values: unknown[]): void;
  error(...values: unknown[]): void;
}

/**
 * Registers the router: called with everything the client has sent so far (`data`, one
 * character per byte, latin1) after each chunk, until it decides. Must be called while the
 * script loads.
 */
declare function proxy(router: (data: string, conn: SwitchyardConn) => SwitchyardDecision): void;

/**
 * Optional: called once when a client connects, before any byte. A decision (a server-first
 * protocol's greeting, say), or nothing to wait for data.
 */
declare function proxyAccept(hook: (conn: SwitchyardConn) => SwitchyardDecision | undefined | void): void;

/** Optional: every candidate failed to connect; `remote` is the last one tried. The client is then closed. */
declare function proxyConnectError(hook: (remote: string) => void): void;

/** Optional: the inactivity timeout fired while relaying to `remote`. The client is then closed. */
declare function proxyInactivityError(hook: (remote: string) => void): void;

declare const table: SwitchyardTable;
declare var console: SwitchyardConsole;
