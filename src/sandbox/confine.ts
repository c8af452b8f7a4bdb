/**
 * The second wall: what a sandbox worker gives up before it runs tenant code, and the proxy's
 * own protection. The work is done by the addon built from src/native/confine.c (see that
 * file for each step and the system call allowlist); this is its TypeScript face.
 */
import { createRequire } from 'node:module';
import { SwitchyardError } from '../errors.js';
import { capabilities } from '../node/capabilities.js';

/** The addon built from src/native/confine.c. */
interface Binding {
  confine(options: { uid?: number; gid?: number; maxFiles: number; profiling: boolean }): { landlockAbi: number };
  lookupUser(name: string): { uid: number; gid: number; groups: number[] } | undefined;
  setDumpable(on: boolean): void;
  /** Tests only: makes one named system call directly; its errno, 0 when it worked. */
  attempt(name: string): number;
}

/** Where `npm ci` (node-gyp) leaves the addon, from dist/src/sandbox/. */
const addonPath = '../../../build/Release/confine.node';

let binding: Binding | undefined;

function addon(): Binding {
  binding ??= createRequire(import.meta.url)(addonPath) as Binding;
  return binding;
}

/** The user and group a worker switches to; absent, it keeps the service's. */
export interface SandboxIdentity {
  readonly uid: number;
  readonly gid: number;
}

/** The sandbox user by default (documented in the README). */
export const defaultSandboxUser = 'nobody';

/**
 * Descriptors a worker may hold once confined. A running worker holds about 15 (its channel,
 * /dev/null, the stderr pipe, libuv's epoll, eventfds and signal pipe; measured); nothing
 * it does after start-up opens one, so the margin is for libuv's own needs.
 */
export const workerMaxFiles = 64;

/** The sandbox user is unknown, or root. */
export class SandboxUserError extends SwitchyardError {
  constructor(message: string) {
    super('ERR_SANDBOX_USER', message);
  }
}

/**
 * Who workers run as. A service that can switch them to another user — it runs as root, or
 * holds CAP_SETUID and CAP_SETGID as ambient capabilities (kept by dropPrivileges, or given by
 * systemd's AmbientCapabilities=), which its workers inherit — the named user, with its primary
 * group and no supplementary ones (throws SandboxUserError when there is no such user, or it is
 * root). Any other: workers keep the service's user (undefined), and `user` is not consulted.
 */
export function sandboxIdentity(user: string = defaultSandboxUser): SandboxIdentity | undefined {
  if (process.getuid?.() !== 0 && !workersCanSwitchUser()) return undefined;
  const found = addon().lookupUser(user);
  if (found === undefined) throw new SandboxUserError(`sandbox user "${user}" does not exist (see --sandbox-user)`);
  if (found.uid === 0) throw new SandboxUserError(`sandbox user "${user}" is root: workers must run as an unprivileged user`);
  return { uid: found.uid, gid: found.gid };
}

/** Whether the programs this process starts hold CAP_SETUID and CAP_SETGID (its ambient set). */
function workersCanSwitchUser(): boolean {
  const ambient = capabilities().ambient;
  return ambient.includes('CAP_SETUID') && ambient.includes('CAP_SETGID');
}

/**
 * Makes this process non-dumpable: no process of its uid can read its memory or environment
 * through /proc (PR_SET_DUMPABLE 0), nor attach a debugger. The proxy calls it at start: its
 * environment holds the operator token.
 */
export function makeUndumpable(): void {
  addon().setDumpable(false);
}

/**
 * Confines this worker process for good: the sandbox user (when given), no core dumps, few
 * descriptors, no new privileges, Landlock, and the seccomp allowlist on every thread. Throws
 * (ERR_SANDBOX_CONFINE, naming the step) when a step fails; a worker that cannot confine
 * itself must not serve. Returns the Landlock ABI applied (0: none in this kernel).
 *
 * `profiling` (SWITCHYARD_WORKER_CPU_PROF, benchmarks only): the worker writes its CPU profile
 * as it exits, so it may open files, and has no Landlock ruleset and no file size limit.
 */
export function confine(identity: SandboxIdentity | undefined, options: { profiling?: boolean } = {}): { landlockAbi: number } {
  return addon().confine({ ...identity, maxFiles: workerMaxFiles, profiling: options.profiling === true });
}

/** Tests only: one system call made directly from this process; its errno, 0 when it worked. */
export function attemptSyscall(name: string): number {
  return addon().attempt(name);
}

/** Exit status of a worker that could not confine itself (EX_CONFIG); it then serves nothing. */
export const confineFailedExit = 78;

/** The environment variable that carries the sandbox identity to a worker, `uid:gid`. */
export const identityVariable = 'SWITCHYARD_WORKER_IDENTITY';
/** Set (to 1) in the environment of a profiled worker. */
export const profilingVariable = 'SWITCHYARD_WORKER_PROFILING';

export function encodeIdentity(identity: SandboxIdentity): string {
  return `${identity.uid}:${identity.gid}`;
}

/** Reads `uid:gid` back; undefined when absent, throws when malformed. */
export function decodeIdentity(text: string | undefined): SandboxIdentity | undefined {
  if (text === undefined || text === '') return undefined;
  const m = /^(\d+):(\d+)$/.exec(text);
  if (m === null) throw new SwitchyardError('ERR_SANDBOX_CONFINE', `malformed ${identityVariable}`);
  return { uid: Number(m[1]), gid: Number(m[2]) };
}
