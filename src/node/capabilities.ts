/**
 * Linux capabilities by name, and the sets a process holds as /proc reports them. Read-only:
 * changing them is privileges.ts (the service) and confine.ts (sandbox workers).
 */
import { readFileSync } from 'node:fs';

/** capability(7) names, indexed by their number (linux/capability.h). */
export const capabilityNames = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL',
  'CAP_SETGID', 'CAP_SETUID', 'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE', 'CAP_NET_BIND_SERVICE',
  'CAP_NET_BROADCAST', 'CAP_NET_ADMIN', 'CAP_NET_RAW', 'CAP_IPC_LOCK', 'CAP_IPC_OWNER',
  'CAP_SYS_MODULE', 'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE', 'CAP_SYS_PACCT',
  'CAP_SYS_ADMIN', 'CAP_SYS_BOOT', 'CAP_SYS_NICE', 'CAP_SYS_RESOURCE', 'CAP_SYS_TIME',
  'CAP_SYS_TTY_CONFIG', 'CAP_MKNOD', 'CAP_LEASE', 'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL',
  'CAP_SETFCAP', 'CAP_MAC_OVERRIDE', 'CAP_MAC_ADMIN', 'CAP_SYSLOG', 'CAP_WAKE_ALARM',
  'CAP_BLOCK_SUSPEND', 'CAP_AUDIT_READ', 'CAP_PERFMON', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE',
] as const;

export type Capability = (typeof capabilityNames)[number];

/** A capability of a kernel newer than this list, by number. */
export type UnknownCapability = `CAP_${number}`;

/** What a process (its main thread) holds, from /proc/PID/status. */
export interface CapabilitySets {
  /** CapEff: in force now. */
  readonly effective: readonly (Capability | UnknownCapability)[];
  /** CapPrm: it may make effective. */
  readonly permitted: readonly (Capability | UnknownCapability)[];
  /** CapInh: kept across execve of a program whose file allows them. */
  readonly inheritable: readonly (Capability | UnknownCapability)[];
  /** CapAmb: the programs it executes start with them (as systemd's AmbientCapabilities=). */
  readonly ambient: readonly (Capability | UnknownCapability)[];
  /** CapBnd: all it, or any program it executes, can ever hold. */
  readonly bounding: readonly (Capability | UnknownCapability)[];
  /** NoNewPrivs: executing a set-user-ID program or one with file capabilities gains nothing. */
  readonly noNewPrivs: boolean;
}

/** The capability with this number: its name, or CAP_<n> for one this list does not know. */
export function capabilityName(n: number): Capability | UnknownCapability {
  return capabilityNames[n] ?? `CAP_${n}`;
}

/** The number of a capability name (CAP_NET_BIND_SERVICE, or net_bind_service); undefined if unknown. */
export function capabilityNumber(name: string): number | undefined {
  const upper = name.trim().toUpperCase();
  const i = (capabilityNames as readonly string[]).indexOf(upper.startsWith('CAP_') ? upper : `CAP_${upper}`);
  return i < 0 ? undefined : i;
}

/** The names of the bits set in a hexadecimal mask, as /proc prints them. */
function names(hex: string | undefined, field: string): (Capability | UnknownCapability)[] {
  if (hex === undefined || !/^[0-9a-f]{1,16}$/i.test(hex)) throw new Error(`/proc status: no ${field}`);
  const mask = BigInt(`0x${hex}`);
  const out: (Capability | UnknownCapability)[] = [];
  for (let n = 0; n < 64; n++) if ((mask >> BigInt(n)) & 1n) out.push(capabilityName(n));
  return out;
}

/**
 * The capability sets of a process (default: this one), as its /proc/PID/status shows them
 * for its main thread; `task` reads one of its other threads instead. For tests, and for the
 * start-up log.
 */
export function capabilities(pid: number | 'self' = 'self', task?: number): CapabilitySets {
  const path = task === undefined ? `/proc/${pid}/status` : `/proc/${pid}/task/${task}/status`;
  const fields = new Map<string, string>();
  for (const line of readFileSync(path, 'latin1').split('\n')) {
    const at = line.indexOf(':');
    if (at > 0) fields.set(line.slice(0, at), line.slice(at + 1).trim());
  }
  return {
    effective: names(fields.get('CapEff'), 'CapEff'),
    permitted: names(fields.get('CapPrm'), 'CapPrm'),
    inheritable: names(fields.get('CapInh'), 'CapInh'),
    ambient: names(fields.get('CapAmb'), 'CapAmb'),
    bounding: names(fields.get('CapBnd'), 'CapBnd'),
    noNewPrivs: fields.get('NoNewPrivs') === '1',
  };
}
