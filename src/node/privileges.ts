/**
 * The service's own privileges. Started as root, Switchyard binds its ports and then becomes an
 * unprivileged user (`--user`), keeping only the capabilities it still needs; otherwise it is
 * started as that user with those capabilities as ambient ones (systemd's
 * AmbientCapabilities=). Both end in the same state, so everything after start-up (sandbox
 * workers, proxy processes, an upgrade) works the same way in either.
 *
 * The work is done by src/native/privileges.c (in the confine addon, which sandbox workers use
 * too); this is its TypeScript face. What sandbox workers give up is src/sandbox/confine.ts.
 */
import { createRequire } from 'node:module';
import { isMainThread } from 'node:worker_threads';
import { InvalidArgumentError, Option } from 'commander';
import { SwitchyardError } from '../errors.js';
import { type Capability, capabilities, capabilityNames, capabilityNumber } from './capabilities.js';

export { type Capability, type CapabilitySets, capabilities, capabilityNames } from './capabilities.js';

/** The addon built from src/native/confine.c and privileges.c. */
interface Binding {
  lookupUser(name: string): { uid: number; gid: number; groups: number[] } | undefined;
  dropPrivileges(request: { uid: number; gid: number; groups: number[]; keep: number[]; switchUser: boolean }): void;
  setAmbient(capabilities: number[]): void;
}

/** Where `npm ci` (node-gyp) leaves the addon, from dist/src/node/. */
const addonPath = '../../../build/Release/confine.node';

let binding: Binding | undefined;

function addon(): Binding {
  binding ??= createRequire(import.meta.url)(addonPath) as Binding;
  return binding;
}

/**
 * Why the service would not, or could not, change its privileges. `code`:
 * - ERR_PRIVILEGES_USER: no such user, or the user is root.
 * - ERR_PRIVILEGES_CAPABILITY: an unknown capability name, or one the process does not hold.
 * - ERR_PRIVILEGES_NOT_ROOT: the process is neither root nor the user already.
 * - ERR_PRIVILEGES_THREAD: called from a worker thread, not from the main thread.
 * - ERR_PRIVILEGES_DROP: a step of the change failed (the message names it, `cause` has the
 *   errno). The process may be half-changed and must exit.
 * Nothing is changed when any other code is thrown.
 */
export type PrivilegeErrorCode =
  | 'ERR_PRIVILEGES_USER'
  | 'ERR_PRIVILEGES_CAPABILITY'
  | 'ERR_PRIVILEGES_NOT_ROOT'
  | 'ERR_PRIVILEGES_THREAD'
  | 'ERR_PRIVILEGES_DROP';

export class PrivilegeError extends SwitchyardError {
  declare readonly code: PrivilegeErrorCode;
  constructor(code: PrivilegeErrorCode, message: string, options?: ErrorOptions) {
    super(code, message, options);
  }
}

/**
 * What is kept by default: binding ports below 1024, for tenant ports created after the drop.
 * The same as the systemd unit's AmbientCapabilities= (deploy/switchyard.service).
 */
export const defaultKeep: readonly Capability[] = ['CAP_NET_BIND_SERVICE'];

export interface DropOptions {
  /** The user to become, by name (the passwd database): its uid, its primary group, its groups. */
  readonly user: string;
  /**
   * Capabilities kept: permitted, effective, inheritable and ambient (so the programs the
   * process starts later hold them too), and the whole bounding set. Default: `defaultKeep`.
   * - CAP_NET_BIND_SERVICE: bind ports below 1024 later (a tenant created after the drop).
   * - CAP_SETUID and CAP_SETGID: sandbox workers switch to the sandbox user (`--sandbox-user`,
   *   nobody) instead of running as `user`. They also let this process become any user, root
   *   included: see docs/operations.md before keeping them.
   */
  readonly keep?: readonly Capability[];
}

/** What the process is after `dropPrivileges`. */
export interface Dropped {
  readonly user: string;
  readonly uid: number;
  readonly gid: number;
  /** Its supplementary groups: those of `user` in the group database. */
  readonly groups: readonly number[];
  readonly keep: readonly Capability[];
  /**
   * True when it was root and became `user`. False when it was `user` already (as a new master
   * started for an upgrade by one that had dropped, or a service started by systemd as
   * `User=`): its capabilities were only narrowed to `keep`.
   */
  readonly switched: boolean;
}

/** A checked request: what `dropPrivileges` will do. */
interface Plan {
  readonly user: string;
  readonly account: { readonly uid: number; readonly gid: number; readonly groups: readonly number[] };
  readonly keep: readonly Capability[];
  readonly switchUser: boolean;
}

function plan(options: DropOptions): Plan {
  if (!isMainThread) {
    throw new PrivilegeError('ERR_PRIVILEGES_THREAD', 'privileges are dropped on the main thread (Linux keeps capabilities per thread)');
  }
  const keep = [...new Set(options.keep ?? defaultKeep)];
  for (const name of keep) {
    if (capabilityNumber(name) === undefined || !name.startsWith('CAP_')) {
      throw new PrivilegeError('ERR_PRIVILEGES_CAPABILITY', `unknown capability "${String(name)}"`);
    }
  }
  const account = addon().lookupUser(options.user);
  if (account === undefined) throw new PrivilegeError('ERR_PRIVILEGES_USER', `--user ${options.user}: no such user`);
  if (account.uid === 0) throw new PrivilegeError('ERR_PRIVILEGES_USER', `--user ${options.user}: is root; name an unprivileged user`);
  const uid = process.getuid!();
  const euid = process.geteuid!();
  const already = uid === account.uid && euid === account.uid && process.getgid!() === account.gid;
  if (!already && (uid !== 0 || euid !== 0)) {
    throw new PrivilegeError(
      'ERR_PRIVILEGES_NOT_ROOT',
      `--user ${options.user}: Switchyard runs as uid ${uid}, neither root nor ${options.user}: start it as root, or leave --user out`,
    );
  }
  const held = new Set<string>(capabilities().permitted);
  const missing = keep.filter((c) => !held.has(c));
  if (missing.length > 0) {
    throw new PrivilegeError('ERR_PRIVILEGES_CAPABILITY', `cannot keep ${missing.join(', ')}: this process does not hold ${missing.length > 1 ? 'them' : 'it'}`);
  }
  return { user: options.user, account, keep, switchUser: !already };
}

/**
 * Checks a drop without doing it: the user exists and is not root, every capability is known
 * and held, and the process is root (or the user already). Throws the PrivilegeError that
 * `dropPrivileges` would throw before changing anything. Call it as the service starts, before
 * it binds or opens anything, so that a mistyped `--user` fails at once.
 */
export function checkDrop(options: DropOptions): void {
  plan(options);
}

/**
 * Makes this process `user` for good, keeping only `keep` (src/native/privileges.c has each
 * step): the bounding set narrowed to `keep`; the user's groups, gid and uid (real, effective and
 * saved) on every thread; `keep` permitted, effective, inheritable and ambient on the calling
 * thread; no_new_privs. Afterwards the process is as systemd starts a service with `User=user`,
 * `AmbientCapabilities=keep`, `CapabilityBoundingSet=keep` and `NoNewPrivileges=yes`.
 *
 * When: once, in the master, on its main thread (`serve --user`), after `checkDrop` and the
 * sockets that need root, and before
 * - it creates or opens anything in the data directory or opens the store: files it creates
 *   as root would stay root's (SQLite's database on a first start, the operator token, the
 *   upgrade's handover socket), so the directory and everything in it must belong to `user`;
 * - it starts any child process (proxy processes, sandbox workers): children keep the
 *   credentials they were started with. The sandbox pool decides at construction whether
 *   workers switch to the sandbox user (`sandboxIdentity`): construct it after this call;
 * - it accepts a connection.
 * Sockets bound before the call stay bound. With CAP_NET_BIND_SERVICE kept (the default),
 * ports below 1024 can be bound after it as well, the tenant ports read from the store
 * included; keeping nothing, bind them before, or not at all. Log `capabilities()` afterwards.
 * Start proxy processes inside `withoutAmbientCapabilities`.
 *
 * A process that is `user` already only narrows its capabilities to `keep` (`switched: false`);
 * one that is neither root nor `user` is refused. Throws PrivilegeError: any code but
 * ERR_PRIVILEGES_DROP means nothing was changed; ERR_PRIVILEGES_DROP means the process may be
 * half-changed, and must exit.
 */
export function dropPrivileges(options: DropOptions): Dropped {
  const p = plan(options);
  try {
    addon().dropPrivileges({
      uid: p.account.uid,
      gid: p.account.gid,
      groups: [...p.account.groups],
      keep: p.keep.map((c) => capabilityNumber(c)!),
      switchUser: p.switchUser,
    });
  } catch (err) {
    throw new PrivilegeError('ERR_PRIVILEGES_DROP', `--user ${p.user}: ${(err as Error).message}`, { cause: err });
  }
  return { user: p.user, uid: p.account.uid, gid: p.account.gid, groups: [...p.account.groups], keep: p.keep, switched: p.switchUser };
}

/**
 * Runs `start` with this thread's ambient capabilities set aside, and gives them back: a child
 * process it starts (synchronously: child_process.spawn and fork do) holds no capability once it
 * executes its program, whatever the master kept. For the proxy processes, which bind nothing
 * and run the data path on clients' bytes. Not for the children that need the kept
 * capabilities: a new master for an upgrade (CAP_NET_BIND_SERVICE), and sandbox workers when
 * they switch to the sandbox user (CAP_SETUID, CAP_SETGID; they clear everything themselves in
 * sandbox-exec). Call it on the main thread; with no ambient capability it only calls `start`.
 */
export function withoutAmbientCapabilities<T>(start: () => T): T {
  if (!isMainThread) throw new PrivilegeError('ERR_PRIVILEGES_THREAD', 'ambient capabilities are set aside on the main thread, which starts child processes');
  const ambient = capabilities().ambient.map((c) => capabilityNumber(c) ?? Number(c.slice('CAP_'.length)));
  if (ambient.length === 0) return start();
  addon().setAmbient([]);
  try {
    return start();
  } finally {
    addon().setAmbient(ambient);
  }
}

/** Parses a comma-separated list of capabilities, as `--keep-capabilities` takes it ('' is none). */
export function parseCapabilities(text: string): Capability[] {
  const out: Capability[] = [];
  for (const part of text.split(',')) {
    if (part.trim() === '') continue;
    const n = capabilityNumber(part);
    if (n === undefined) throw new InvalidArgumentError(`unknown capability "${part.trim()}" (e.g. CAP_NET_BIND_SERVICE)`);
    out.push(capabilityNames[n]!);
  }
  return [...new Set(out)];
}

/** `--user <name>`: the user a master started as root becomes once its ports are bound. */
export function userOption(): Option {
  return new Option('--user <name>', 'started as root: the user to become once the ports are bound (see --keep-capabilities)');
}

/** `--keep-capabilities <list>`: what `--user` keeps; comma-separated, '' for none. */
export function keepCapabilitiesOption(): Option {
  return new Option('--keep-capabilities <list>', 'with --user: capabilities kept, comma-separated (CAP_SETUID,CAP_SETGID: workers run as --sandbox-user)')
    .argParser(parseCapabilities)
    .default([...defaultKeep], defaultKeep.join(','));
}
