/**
 * A sandbox worker process: hosts the isolates of the tenants the pool assigns to it, and
 * answers calls over the socket pair on fd 3 (see wire.ts). It holds no secrets and no
 * sockets of clients; if tenant code crashes, aborts or hangs it, the pool kills it and
 * starts another, and the proxy's relayed connections never notice.
 *
 * Scheduling: one call per tenant at a time (an isolate runs one call at a time anyway),
 * tenants with work taken round-robin, and at most `SWITCHYARD_WORKER_CONCURRENCY` calls
 * running at once, so a tenant that spins at its time limit holds one slot, not the worker.
 * When it has nothing to do, it builds a spare blank isolate for the next tenant's cold start
 * (blank.ts), of the memory limit of the tenant it loaded last.
 *
 * Confinement: the worker starts as the service's user with the environment the pool gave it
 * (worker-process.ts), loads every module it will ever need (these imports: isolated-vm and its
 * addon included), opens its channel, and then confines itself for good (confine.ts): the
 * sandbox user, no new privileges, Landlock and the seccomp allowlist on every thread. Only
 * then does it read its first request; a worker that cannot confine itself exits instead.
 */
import { Socket } from 'node:net';
import { CloseReason, RouterError, RouterLoadError } from '../errors.js';
import { prepareSpare, spareReady, sparesTaken } from './blank.js';
import { confine, confineFailedExit, decodeIdentity, identityVariable, profilingVariable } from './confine.js';
import { connArgs } from './isolate-router.js';
import { type CallMode, type EntryPoint, type IsolateSpec, TenantIsolate } from './tenant-isolate.js';
import { decodeConn, decodeRequest, encodeResponse, FrameReader, FrameWriter, Hook, Op, type Request, Status } from './wire.js';

interface Job {
  readonly id: number;
  readonly fn: EntryPoint;
  readonly args: (string | number)[];
}

interface Tenant {
  readonly name: string;
  readonly isolate: Promise<TenantIsolate>;
  readonly queue: Job[];
  running: boolean;
  /** Unloaded by the pool: disposed once its calls have finished. */
  retired: boolean;
}

const concurrency = Number(process.env.SWITCHYARD_WORKER_CONCURRENCY ?? 4);
const channel = new Socket({ fd: 3, readable: true, writable: true });
const writer = new FrameWriter(channel);
const reader = new FrameReader();
const tenants = new Map<number, Tenant>();
/** Tenants with queued calls and none running, in turn order. */
const ready: Tenant[] = [];
let running = 0;
/** Loads being built, and the memory limit of the latest: the size of the spare. */
let loading = 0;
let spareMemoryMb: number | undefined;
const spareAfterIdleMs = 20;
let spareTimer: NodeJS.Timeout | undefined;
/** When the latest load or call arrived (not counting stats requests). */
let lastArrival = 0;

let confined = false;

// Time zone data is read from /etc/localtime on first use, which the confinement forbids: read it now.
void new Date().toString();
try {
  confine(decodeIdentity(process.env[identityVariable]), { profiling: process.env[profilingVariable] === '1' });
  confined = true;
} catch (err) {
  process.stderr.write(`sandbox worker: ${(err as Error).message}\n`);
  process.exit(confineFailedExit);
}

channel.on('data', (chunk: Buffer) => {
  reader.push(chunk, (body) => handle(decodeRequest(body)));
  writer.owe(); // the proxy sends its next batch once this one is answered
});
// The pool is gone: nothing left to serve.
channel.on('close', () => process.exit(0));
channel.on('error', () => process.exit(0));

function handle(r: Request): void {
  if (!confined) process.exit(confineFailedExit); // never reached: no request is read before
  switch (r.op) {
    case Op.load:
      lastArrival = performance.now();
      load(r.id, r.slot, JSON.parse(r.body.toString('utf8', r.at)) as IsolateSpec & { tenant: string });
      return;
    case Op.unload:
    case Op.evacuate: {
      const t = tenants.get(r.slot);
      tenants.delete(r.slot);
      if (t === undefined) return;
      // Moved elsewhere: the calls it has queued here go there instead.
      if (r.op === Op.evacuate) for (const job of t.queue.splice(0)) writer.write(encodeResponse(job.id, Status.moved, ''));
      retire(t);
      return;
    }
    case Op.stats:
      void stats().then((json) => writer.write(encodeResponse(r.id, Status.ok, json)));
      return;
    case Op.route:
    case Op.accept:
    case Op.hook: {
      lastArrival = performance.now();
      const t = tenants.get(r.slot);
      if (t === undefined) {
        respondError(r.id, new RouterError(CloseReason.routerUnavailable, 'router not loaded in this worker'));
        return;
      }
      const [conn, at] = decodeConn(r.body, r.at, t.name);
      let job: Job;
      if (r.op === Op.route) job = { id: r.id, fn: 'route', args: [r.body.toString('latin1', at), ...connArgs(conn)] };
      else if (r.op === Op.accept) job = { id: r.id, fn: 'accept', args: connArgs(conn) };
      else job = { id: r.id, fn: 'hook', args: [r.body[at] === Hook.connect ? 'connect' : 'inactivity', r.body.toString('latin1', at + 1)] };
      t.queue.push(job);
      if (!t.running && t.queue.length === 1) ready.push(t);
      pump();
      return;
    }
    default:
      respondError(r.id, new RouterError(CloseReason.routerUnavailable, `unknown sandbox op ${r.op}`));
  }
}

function load(id: number, slot: number, spec: IsolateSpec & { tenant: string }): void {
  const { tenant: name, ...isolateSpec } = spec;
  writer.write(encodeResponse(id, Status.started, 'load'), { news: true });
  // Loading a slot again (after the pool unloaded it, or twice) replaces what was there.
  const previous = tenants.get(slot);
  if (previous !== undefined) retire(previous);
  loading++;
  spareMemoryMb = isolateSpec.memoryMb;
  const created = TenantIsolate.create(isolateSpec, { syncCalls: true });
  const tenant: Tenant = { name, isolate: created.then((c) => c.isolate), queue: [], running: false, retired: false };
  tenants.set(slot, tenant);
  void created.then(
    async ({ isolate, envelope }) => {
      const heap = await isolate.heap();
      const heapBytes = heap === undefined ? 0 : heap.used_heap_size + heap.externally_allocated_size;
      writer.write(encodeResponse(id, Status.loaded, JSON.stringify({ envelope, heapBytes })));
    },
    (err: unknown) => {
      if (tenants.get(slot) === tenant) tenants.delete(slot);
      const e = err instanceof RouterLoadError ? err : new RouterLoadError('ERR_ROUTER_THROW', String(err));
      writer.write(encodeResponse(id, Status.loadError, JSON.stringify({ code: e.code, message: e.message, line: e.line, column: e.column, stack: e.frames })));
    },
  ).finally(() => {
    loading--;
    whenIdle();
  });
  tenant.isolate.catch(() => undefined);
}

/** Starts queued calls while there is room, one tenant at a time in turn. */
function pump(): void {
  while (running < concurrency && ready.length > 0) {
    const tenant = ready.shift()!;
    const job = tenant.queue.shift();
    if (job === undefined) continue;
    tenant.running = true;
    running++;
    void run(tenant, job);
  }
}

/**
 * Tells the pool a call is starting, and how: what it blames a crash or a hang on. Before a
 * synchronous call, which holds this thread until it returns (or forever, if it ignores
 * termination), the news leaves at once, with every answer queued before it; it also tells the
 * pool that the synchronous call before it has returned, whose answer may not be written yet.
 */
function started(id: number, mode: CallMode): void {
  writer.write(encodeResponse(id, Status.started, mode), { news: true });
  if (mode === 'sync') writer.flushNow();
}

async function run(tenant: Tenant, job: Job): Promise<void> {
  try {
    const isolate = await tenant.isolate;
    writer.write(encodeResponse(job.id, Status.ok, await isolate.call(job.fn, job.args, (mode) => started(job.id, mode))));
  } catch (err) {
    respondError(job.id, err instanceof RouterError ? err : new RouterError(CloseReason.routerUnavailable, String(err)));
  } finally {
    running--;
    tenant.running = false;
    if (tenant.queue.length > 0) ready.push(tenant);
    else if (tenant.retired) retire(tenant);
    pump();
    whenIdle();
  }
}

function idle(): boolean {
  return running === 0 && loading === 0 && ready.length === 0;
}

/**
 * Idle and without a spare: prepare one once nothing has arrived for `spareAfterIdleMs`, so
 * that building it (creating the isolate holds this thread for ~2 ms) does not delay the call
 * that usually follows a load, the new tenant's first decision.
 */
function whenIdle(): void {
  if (spareTimer !== undefined || spareMemoryMb === undefined || !idle() || spareReady(spareMemoryMb)) return;
  const wait = Math.max(1, spareAfterIdleMs - (performance.now() - lastArrival));
  spareTimer = setTimeout(() => {
    spareTimer = undefined;
    if (!idle() || spareMemoryMb === undefined) return;
    if (performance.now() - lastArrival >= spareAfterIdleMs) prepareSpare(spareMemoryMb);
    else whenIdle();
  }, wait).unref();
}

/** Disposes an unloaded tenant's isolate now, or after the calls it still has. */
function retire(tenant: Tenant): void {
  tenant.retired = true;
  if (tenant.running || tenant.queue.length > 0) return;
  void tenant.isolate.then((i) => i.dispose(), () => undefined);
}

/** How many isolates this worker holds and how much V8 heap they use. */
async function stats(): Promise<string> {
  let isolates = 0;
  let heapBytes = 0;
  for (const t of tenants.values()) {
    const heap = await t.isolate.then((i) => i.heap(), () => undefined);
    if (heap === undefined) continue;
    isolates++;
    heapBytes += heap.used_heap_size + heap.externally_allocated_size;
  }
  return JSON.stringify({ isolates, heapBytes, spares: spareMemoryMb !== undefined && spareReady(spareMemoryMb) ? 1 : 0, sparesTaken: sparesTaken() });
}

function respondError(id: number, err: RouterError): void {
  writer.write(encodeResponse(id, Status.routerError, JSON.stringify({ reason: err.reason, message: err.message, starved: err.starved })));
}
