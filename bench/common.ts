/**
 * Shared pieces of the benchmark: the git request and answer, pkt-line framing, the routing
 * table, /proc readers for CPU time, and a small argv parser. Everything runs on 127.0.0.1.
 */
import { readdirSync, readFileSync } from 'node:fs';

export const host = '127.0.0.1';

/** The users of routers/git.js, plus two for the bulk scenarios; values are filled with real ports. */
export interface Backends {
  readonly git: readonly [number, number];
  readonly sink: number;
  readonly source: number;
  /** reads the request line, answers ACK, then holds the connection idle (the idle scenario) */
  readonly idle: number;
  /** HTTP/1.1 keep-alive servers answering a small fixed response: node:http, and a raw net one */
  readonly http: number;
  readonly httpRaw: number;
}

/** user -> 'host:port', the same table for Switchyard's bench router and the plain proxy. */
export function usersTable(b: Backends): Record<string, string> {
  return {
    mojombo: `${host}:${b.git[0]}`,
    defunkt: `${host}:${b.git[1]}`,
    bulkup: `${host}:${b.sink}`,
    bulkdown: `${host}:${b.source}`,
    idle: `${host}:${b.idle}`,
  };
}

/** The git protocol's first pkt-line: 4 hex digits of length (itself included), then the request. */
export function gitRequest(user: string, repo: string, vhost = 'example.com'): string {
  const body = `git-upload-pack /${user}/${repo}.git\0host=${vhost}\0`;
  return (body.length + 4).toString(16).padStart(4, '0') + body;
}

function pktLine(text: string): string {
  return (text.length + 4).toString(16).padStart(4, '0') + text;
}

/** A small ref advertisement, what a git daemon answers first (then the flush packet). */
export const gitAnswer: Buffer = Buffer.from(
  pktLine('95dcfa3633004da0049d3d0fa03f80589cbcaf31 HEAD\0multi_ack thin-pack side-band ofs-delta\n') +
    pktLine('95dcfa3633004da0049d3d0fa03f80589cbcaf31 refs/heads/main\n') +
    pktLine('d049f6c27a2244e12041955e262a404c7faba355 refs/tags/v1.0\n') +
    '0000',
  'latin1',
);

/** The sink's "go ahead" after the request line, before the client streams. */
export const sinkReady: Buffer = Buffer.from(pktLine('ACK\n'), 'latin1');

/** The body of the HTTP backends' one response (node:http and raw). */
export const httpBody = 'hello from the switchyard bench\n';

/**
 * The raw HTTP backends' keep-alive response to every request: backends.ts rawHttpServer, and
 * bench/native/rate.c `server --http-raw` (given these bytes by run.ts).
 */
export const rawHttpResponse: Buffer = Buffer.from(
  `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${httpBody.length}\r\nConnection: keep-alive\r\n\r\n${httpBody}`,
  'latin1',
);

/** Length of a complete first pkt-line at the start of `buf`, or -1 while it is incomplete. */
export function pktLength(buf: Buffer): number {
  if (buf.length < 4) return -1;
  const n = Number.parseInt(buf.toString('latin1', 0, 4), 16);
  if (!Number.isInteger(n) || n < 4) return 0; // malformed: answer anyway
  return buf.length >= n ? n : -1;
}

/**
 * CPU time (user + system) in clock ticks of a process (all its threads), or with `tid` of one
 * thread (tid = pid is the main thread, where the event loop runs); undefined once it is gone.
 */
export function processTicks(pid: number, tid?: number): number | undefined {
  let text: string;
  try {
    text = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // The command name may contain spaces and parentheses: fields start after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); utime is field 14 and stime field 15.
  return Number(rest[11]) + Number(rest[12]);
}

/** Linux scheduling policies by number (sched.h), as `chrt` names them. */
const policyNames: Record<number, string> = { 0: 'other', 1: 'fifo', 2: 'rr', 3: 'batch', 5: 'idle', 6: 'deadline' };

/** A process's scheduling policy ("batch" for SCHED_BATCH), from /proc; undefined once it is gone. */
export function schedulingPolicy(pid: number): string | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // Field 41 is the policy; rest[0] is field 3.
  const policy = Number(text.slice(text.lastIndexOf(')') + 2).split(' ')[38]);
  return policyNames[policy] ?? String(policy);
}

/** Context switches (voluntary + involuntary) of every thread of a process; undefined once it is gone. */
export function contextSwitches(pid: number): number | undefined {
  let total = 0;
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const text = readFileSync(`/proc/${pid}/task/${tid}/status`, 'latin1');
      for (const m of text.matchAll(/^(?:non)?voluntary_ctxt_switches:\s*(\d+)/gm)) total += Number(m[1]);
    }
  } catch {
    return undefined;
  }
  return total;
}

/** USER_HZ: the unit of /proc times. 100 on every Linux we care about. */
export const ticksPerSecond = 100;

export interface CoreTimes {
  readonly busy: number;
  readonly total: number;
}

/** Per-core busy and total ticks from /proc/stat (busy = everything but idle and iowait). */
export function coreTimes(): CoreTimes[] {
  let text: string;
  try {
    text = readFileSync('/proc/stat', 'latin1');
  } catch {
    return [];
  }
  const cores: CoreTimes[] = [];
  for (const line of text.split('\n')) {
    const m = /^cpu(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const f = m[2]!.trim().split(/\s+/).map(Number);
    // user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    cores[Number(m[1])] = { busy: total - idle, total };
  }
  return cores;
}

/** Parent pid of every process, from /proc (one scan). */
function parents(): Map<number, number> {
  const out = new Map<number, number>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const text = readFileSync(`/proc/${name}/stat`, 'latin1');
      const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
      out.set(Number(name), Number(rest[1])); // field 4: ppid
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** A process and all its descendants (Switchyard's sandbox workers are its children). */
export function processTree(pid: number, ppids: Map<number, number> = parents()): number[] {
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) {
    for (const [child, parent] of ppids) if (parent === tree[i] && !tree.includes(child)) tree.push(child);
  }
  return tree;
}

/** What one watched process tree had used at one instant. */
export interface TreeSample {
  /** ticks of the root process, all its threads */
  readonly root: number | undefined;
  /** ticks of the root's main thread (the event loop) */
  readonly main: number | undefined;
  /** ticks of each descendant, by pid (a pid that appears or goes away counts from 0) */
  readonly children: Record<string, number>;
  /** context switches of every thread of the root and its descendants */
  readonly switches: number | undefined;
  /** the descendants' scheduling policies (Switchyard's workers run under "batch") */
  readonly policies: readonly string[];
}

export interface CpuSnapshot {
  readonly atNs: bigint;
  readonly trees: Record<string, TreeSample>;
  readonly cores: CoreTimes[];
}

export function snapshot(pids: readonly number[]): CpuSnapshot {
  const trees: Record<string, TreeSample> = {};
  const ppids = pids.length > 0 ? parents() : new Map<number, number>();
  for (const pid of pids) {
    const [, ...descendants] = processTree(pid, ppids);
    const children: Record<string, number> = {};
    const policies = new Set<string>();
    let switches = contextSwitches(pid);
    for (const child of descendants) {
      const t = processTicks(child);
      if (t !== undefined) children[child] = t;
      const c = contextSwitches(child);
      if (switches !== undefined && c !== undefined) switches += c;
      const policy = schedulingPolicy(child);
      if (policy !== undefined) policies.add(policy);
    }
    trees[pid] = { root: processTicks(pid), main: processTicks(pid, pid), children, switches, policies: [...policies] };
  }
  return { atNs: process.hrtime.bigint(), trees, cores: coreTimes() };
}

export interface TreeDelta {
  /** CPU ms of the root process and its descendants */
  readonly totalMs: number | null;
  /** CPU ms of the root process alone (all threads) */
  readonly processMs: number | null;
  /** CPU ms of the root's main thread */
  readonly mainThreadMs: number | null;
  /** CPU ms of the descendants (sandbox worker processes) */
  readonly childrenMs: number;
  readonly children: number;
  readonly contextSwitches: number | null;
  /** the descendants' scheduling policies at the end of the interval */
  readonly policies: readonly string[];
}

export interface CpuDelta {
  readonly wallMs: number;
  /** per watched pid */
  readonly trees: Record<string, TreeDelta>;
  /** busy fraction per core (0..1) over the interval. */
  readonly coreBusy: number[];
}

export function delta(a: CpuSnapshot, b: CpuSnapshot): CpuDelta {
  const ms = (t0: number | undefined, t1: number | undefined): number | null =>
    t0 === undefined || t1 === undefined ? null : ((t1 - t0) * 1000) / ticksPerSecond;
  const trees: Record<string, TreeDelta> = {};
  for (const [pid, x] of Object.entries(a.trees)) {
    const y = b.trees[pid];
    if (y === undefined) continue;
    let childTicks = 0;
    for (const [child, t1] of Object.entries(y.children)) childTicks += t1 - (x.children[child] ?? 0);
    const childrenMs = (childTicks * 1000) / ticksPerSecond;
    const processMs = ms(x.root, y.root);
    trees[pid] = {
      totalMs: processMs === null ? null : processMs + childrenMs,
      processMs,
      mainThreadMs: ms(x.main, y.main),
      childrenMs,
      children: Object.keys(y.children).length,
      contextSwitches: x.switches === undefined || y.switches === undefined ? null : y.switches - x.switches,
      policies: y.policies,
    };
  }
  const coreBusy = a.cores.map((c, i) => {
    const d = b.cores[i];
    if (d === undefined || d.total === c.total) return 0;
    return (d.busy - c.busy) / (d.total - c.total);
  });
  return { wallMs: Number(b.atNs - a.atNs) / 1e6, trees, coreBusy };
}

/** `--key value`, `--key=value` and bare `--flag` (true); repeated keys keep the last. */
export function parseArgs(argv: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) continue;
    const eq = arg.indexOf('=');
    if (eq > 0) {
      out.set(arg.slice(2, eq), arg.slice(eq + 1));
      continue;
    }
    const next = argv[i + 1];
    if (next !== undefined && !next.startsWith('--')) {
      out.set(arg.slice(2), next);
      i++;
    } else {
      out.set(arg.slice(2), 'true');
    }
  }
  return out;
}

export function numberArg(args: Map<string, string>, key: string, fallback: number): number {
  const v = args.get(key);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${key}: expected a non-negative number, got ${v}`);
  return n;
}

/** Exit when the parent that started us is gone (a bench child must never outlive the run). */
export function exitWithParent(): void {
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) process.exit(0);
  }, 500).unref();
}

export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/** Resident memory (VmRSS, KiB) of a process and its descendants, summed; undefined once the root is gone. */
export function treeRssKiB(pid: number): number | undefined {
  let total = 0;
  for (const p of processTree(pid)) {
    try {
      const m = /^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${p}/status`, 'latin1'));
      if (m) total += Number(m[1]);
    } catch {
      if (p === pid) return undefined;
    }
  }
  return total;
}

/** The hard limit on open files of this process (children inherit it), from /proc. */
export function openFilesHardLimit(): number {
  try {
    const m = /^Max open files\s+\S+\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'latin1'));
    return m?.[1] === 'unlimited' ? 1 << 20 : Number(m?.[1] ?? 1024);
  } catch {
    return 1024;
  }
}
