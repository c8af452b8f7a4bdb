/**
 * A sandbox worker process as the pool sees it: how it is started (SCHED_BATCH through chrt,
 * optionally profiled), the calls in flight on it, and the host that restarts it whenever it
 * dies, at the CPU priority of its role.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { setPriority } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { ConnInfo } from './router.js';
import { decodeResponse, encodeRequest, FrameReader, FrameWriter, Op, type Response, Status } from './wire.js';

/** A call sent to a worker and not answered yet. */
export interface Pending {
  readonly proc: WorkerProcess;
  readonly op: Op;
  readonly slot: number;
  readonly sentAt: number;
  /** How long the call may take before its worker counts as stuck. */
  readonly limitMs: number;
  readonly promise: Promise<Response>;
  /** When the worker said the call started running, until it is known to have finished. */
  startedAt?: number;
  /** It started on the worker's own thread (synchronously): it is over once another starts there. */
  startedSync?: boolean;
  /** Whose call it is, and the client it is for: whom a crash or hang during it is blamed on. */
  owner?: { readonly tenant: string; readonly address: string | undefined };
  /** Told when the worker says the call started. */
  onStarted?: () => void;
  /** The supervisor found this call stuck and killed its worker for it. */
  stuck?: boolean;
  resolve(r: Response): void;
  reject(e: Error): void;
}

const workerPath = fileURLToPath(new URL('./worker.js', import.meta.url));
const pageSize = 4096;

/**
 * Extra Node flags for worker processes, for profiling them: SWITCHYARD_WORKER_CPU_PROF=DIR
 * writes a .cpuprofile per worker into DIR when it exits (bench/run.ts --profile uses it).
 */
export function workerFlags(): string[] {
  const dir = process.env.SWITCHYARD_WORKER_CPU_PROF;
  return dir === undefined || dir === '' ? [] : ['--cpu-prof', '--cpu-prof-dir', dir];
}

let chrt: boolean | undefined;

/**
 * Workers run under SCHED_BATCH where `chrt` (util-linux) is there to start them so: a woken
 * worker then does not preempt the proxy in the middle of its turn of the event loop, but runs
 * once the proxy waits for I/O, and so takes the whole batch that turn queued. On one saturated
 * core that is a few decisions per wake-up instead of about one, which cut the workers' CPU per
 * routed connection by more than half (bench/). Latency is unchanged when the proxy is idle: it
 * waits for I/O at once. SWITCHYARD_WORKER_SCHED=normal leaves the default policy.
 */
function batchScheduling(): boolean {
  if (process.env.SWITCHYARD_WORKER_SCHED === 'normal' || process.platform !== 'linux') return false;
  chrt ??= spawnSync('chrt', ['--batch', '0', 'true'], { stdio: 'ignore', timeout: 5000 }).status === 0;
  return chrt;
}

/** One worker process and the calls in flight on it. */
export class WorkerProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pending = new Map<number, Pending>();
  /** Slots whose script was sent to this process. */
  readonly loaded = new Set<number>();
  readonly exited: Promise<void>;
  /** The scheduling policy it was started under: "batch" (SCHED_BATCH, through chrt) or the default. */
  readonly scheduling: 'batch' | 'other';
  alive = true;
  /** Replaced by a newer process; killed once its calls drain. */
  retiring = false;
  #nextId = 1;
  readonly #writer: FrameWriter;

  constructor(name: string, concurrency: number, onResponse: (proc: WorkerProcess, r: Response) => void) {
    this.name = name;
    const node = [process.execPath, '--no-node-snapshot', ...workerFlags(), workerPath];
    this.scheduling = batchScheduling() ? 'batch' : 'other';
    const [command, ...args] = this.scheduling === 'batch' ? ['chrt', '--batch', '0', ...node] : node;
    this.child = spawn(command!, args, {
      stdio: ['ignore', 'inherit', 'inherit', 'pipe'],
      env: { ...process.env, SWITCHYARD_WORKER_CONCURRENCY: String(concurrency) },
    });
    const channel = this.child.stdio[3] as Socket;
    const writer = (this.#writer = new FrameWriter(channel, { paced: true }));
    const reader = new FrameReader();
    channel.on('data', (chunk: Buffer) => {
      // News (a call started) is no answer: the next batch waits for one.
      let answered = false;
      try {
        reader.push(chunk, (body) => {
          const r = decodeResponse(body);
          if (r.status !== Status.started) answered = true;
          onResponse(this, r);
        });
        if (answered) writer.answered();
      } catch {
        this.kill(); // a worker that speaks garbage is not to be trusted further
      }
    });
    channel.on('error', () => undefined);
    this.exited = new Promise((resolve) => this.child.once('exit', () => resolve()));
  }

  request(op: (typeof Op)[keyof typeof Op], slot: number, limitMs: number, conn?: ConnInfo, extra?: Parameters<typeof encodeRequest>[4]): Pending {
    const id = this.#nextId++;
    if (this.#nextId > 0xffffffff) this.#nextId = 1;
    let resolve!: (r: Response) => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<Response>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const pending: Pending = { proc: this, op, slot, sentAt: Date.now(), limitMs, promise, resolve, reject };
    this.pending.set(id, pending);
    this.#writer.write(encodeRequest(id, op, slot, conn, extra));
    return pending;
  }

  /** A message with no answer (unload). */
  tell(op: (typeof Op)[keyof typeof Op], slot: number): void {
    if (this.alive) this.#writer.write(encodeRequest(0, op, slot));
  }

  kill(): void {
    if (!this.alive) return;
    this.alive = false;
    this.child.kill('SIGKILL');
  }

  rssMb(): number | undefined {
    try {
      const resident = Number(readFileSync(`/proc/${this.child.pid}/statm`, 'latin1').split(' ')[1]);
      return (resident * pageSize) / 1024 / 1024;
    } catch {
      return undefined;
    }
  }
}

/** Niceness of a quarantine worker: a tenant that crashes its workers gets the CPU others leave. */
export const quarantinePriority = 10;
/**
 * Niceness of the slow lane. Its tenants have shown they spin: at 19 (CFS weight 15 against
 * 1024) a spinning router barely delays the shared workers' calls on a busy core, and still
 * runs at full speed on an idle one.
 */
export const slowLanePriority = 19;

/** A worker that is restarted whenever it dies; tenants point at one. */
export class WorkerHost {
  readonly name: string;
  current: WorkerProcess;
  readonly #spawn: (name: string) => WorkerProcess;
  readonly #nice: number;

  constructor(name: string, spawnProcess: (name: string) => WorkerProcess, nice = 0) {
    this.name = name;
    this.#spawn = spawnProcess;
    this.#nice = nice;
    this.current = this.#start();
  }

  /** Starts a fresh process for new calls; the old one finishes what it has, then goes. */
  replace(): void {
    const old = this.current;
    this.current = this.#start();
    old.retiring = true;
    if (old.pending.size === 0) old.kill();
  }

  #start(): WorkerProcess {
    const proc = this.#spawn(this.name);
    if (this.#nice !== 0 && proc.child.pid !== undefined) {
      try {
        // Set before the worker starts its threads, which inherit it.
        setPriority(proc.child.pid, this.#nice);
      } catch {
        // lowering a priority may be refused; the process boundary is what matters
      }
    }
    return proc;
  }
}
