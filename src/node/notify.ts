/**
 * Tells the service manager how the service is doing: the sd_notify(3) protocol, one datagram
 * to the AF_UNIX socket systemd names in $NOTIFY_SOCKET (Type=notify in
 * deploy/switchyard.service). Without libsystemd: the datagram is sent by
 * src/native/privileges.c (Node has no unix datagram sockets). Outside systemd, with no
 * $NOTIFY_SOCKET, every call does nothing.
 */
import { createRequire } from 'node:module';
import { SwitchyardError } from '../errors.js';

interface Binding {
  notify(address: string, state: string): void;
}

/** Where `npm ci` (node-gyp) leaves the addon, from dist/src/node/. */
const addonPath = '../../../build/Release/confine.node';

let binding: Binding | undefined;

function addon(): Binding {
  binding ??= createRequire(import.meta.url)(addonPath) as Binding;
  return binding;
}

/** The notification could not be sent (`cause` has the errno), or the state is malformed. */
export class NotifyError extends SwitchyardError {
  constructor(message: string, options?: ErrorOptions) {
    super('ERR_NOTIFY', message, options);
  }
}

/** systemd reads at most this many bytes of one notification. */
const maxStateBytes = 4095;

/**
 * Sends `state` — newline-separated `KEY=VALUE` assignments, as the helpers below build them
 * — to $NOTIFY_SOCKET: a path, or an abstract socket name written with a leading '@'.
 * Returns false, having done nothing, when $NOTIFY_SOCKET is unset or empty; true once sent.
 * Throws NotifyError when it cannot be sent (the socket is gone, or another kind of address);
 * a send waits at most a second. Synchronous.
 *
 * Where the master calls it (with NotifyAccess=all, any process of the service may):
 * - `ready()` once it serves: after dropPrivileges, every tenant port listening in the proxy
 *   processes and the admin API answering (when /healthz would answer 200). systemd's start
 *   (and `systemctl start`) waits for it; Type=notify fails the start after TimeoutStartSec.
 * - `reloading()` when a reload starts (SIGHUP or `switchyard reload`), then `ready()` when the
 *   new proxy processes accept and the old ones are draining. Each reload must end with
 *   `ready()`, failed or not (a failed one with a `status(…)` first): systemd shows the unit
 *   "reloading" until then.
 * - `stopping()` as a graceful stop begins (SIGTERM, SIGINT, SIGQUIT), before it drains.
 * - For a binary upgrade, the new master sends `mainPid(process.pid)` and `ready()` in one
 *   call, `notify(\`${mainPid(process.pid)}\n${ready()}\`)`, once it has taken over the
 *   listeners and the store; the old master then drains and exits without `stopping()` (the
 *   service is not stopping), and systemd, which now watches the new pid, keeps the unit up.
 * - `status(text)` for a line `systemctl status` shows (e.g. "3 proxy processes, 42 tenants").
 */
export function notify(state: string): boolean {
  const address = process.env.NOTIFY_SOCKET;
  if (address === undefined || address === '') return false;
  if (state === '' || state.includes('\0') || Buffer.byteLength(state) > maxStateBytes) {
    throw new NotifyError(`a notification is 1 to ${maxStateBytes} bytes of KEY=VALUE lines, without NUL`);
  }
  try {
    addon().notify(address, state);
  } catch (err) {
    throw new NotifyError(`NOTIFY_SOCKET ${address}: ${(err as Error).message}`, { cause: err });
  }
  return true;
}

/** The service is up: startup is over, or a reload has finished. */
export function ready(): string {
  return 'READY=1';
}

/** A reload begins. MONOTONIC_USEC (CLOCK_MONOTONIC, as systemd ≥ 253 asks for it) tells this reload from an earlier one. */
export function reloading(): string {
  return `RELOADING=1\nMONOTONIC_USEC=${process.hrtime.bigint() / 1000n}`;
}

/** The service is stopping: systemd shows it "deactivating" and does not mistake it for a crash. */
export function stopping(): string {
  return 'STOPPING=1';
}

/** `pid` is the service's main process from now on (a binary upgrade's new master). */
export function mainPid(pid: number): string {
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new NotifyError(`MAINPID: not a process id: ${pid}`);
  return `MAINPID=${pid}`;
}

/** A one-line status for `systemctl status`; line breaks become spaces. */
export function status(text: string): string {
  return `STATUS=${text.replace(/[\r\n\0]+/g, ' ')}`;
}
