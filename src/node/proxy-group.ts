import { type ChildProcess, spawn } from 'node:child_process';
import type { NativeStats, RelayFigures } from '../metrics/stats.js';
import { CloseReason, RouterError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Router } from '../sandbox/router.js';
import { handoff } from './handoff.js';
import { withoutAmbientCapabilities } from './privileges.js';
import type { FromProxy, ProxyFigures, ProxyRequest, RouterRef, TenantFigures, TenantSpecMessage, ToProxy } from './protocol.js';

/** A serving proxy process's share of the node's connections (the balance between them). */
export interface ProcessFigures {
  readonly index: number;
  /** Connections it accepted, over all tenants, since it started. */
  readonly connections: number;
}

/** What the group needs of each tenant port it spreads (spread-listener.ts). */
export interface SpreadPort {
  readonly name: string;
  /** The port's listening sockets, one per proxy process when it was bound. */
  readonly fds: readonly number[];
  /** The tenant as a proxy process is told it now (its current router, limits, policy). */
  spec(): TenantSpecMessage;
  /** A proxy process rejected a client (the master keeps the tenant's one ring). */
  rejected(message: FromProxy & { t: 'rejected' }): void;
}

export interface ProxyGroupOptions {
  /** Proxy processes. */
  readonly count: number;
  readonly log: Logger;
  readonly logLevel: string;
  /** The tenant port range: the shared connection counters have one place per port. */
  readonly ports: readonly [number, number];
}

type ProxyState = 'starting' | 'serving' | 'draining' | 'gone';

/** dist/src/node/proxy-process.js */
const proxyMain = new URL('./proxy-process.js', import.meta.url).pathname;

/**
 * Environment variables a proxy process keeps: it must never see the operator token or the
 * store's URL (an escaped router that reached a proxy process would read them).
 */
function proxyEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k === 'SWITCHYARD_ADMIN_TOKEN' || k === 'SWITCHYARD_STORE' || k.startsWith('PG')) continue;
    env[k] = v;
  }
  return env;
}

/** One proxy process, as the master drives it. */
class ProxyHandle {
  readonly index: number;
  readonly row: number;
  readonly child: ChildProcess;
  /** The master's end of the descriptor channel. */
  readonly fdChannel: number;
  state: ProxyState = 'starting';
  /** Called once the process says it is ready. */
  readyHeard: (() => void) | undefined;
  /** Routers this process holds, by id, with how many holds. */
  readonly routers = new Map<number, number>();
  /** Its figures as last asked (kept once it is gone, so counters never go back). */
  figures: ProxyFigures | undefined;
  #seq = 0;
  readonly #waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  readonly exited: Promise<number | null>;

  constructor(index: number, row: number, child: ChildProcess, fdChannel: number) {
    this.index = index;
    this.row = row;
    this.child = child;
    this.fdChannel = fdChannel;
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  send(message: ToProxy): void {
    if (this.state !== 'gone' && this.child.connected) this.child.send(message);
  }

  /** A request the process answers; descriptors, when given, go first on the descriptor channel. */
  request(r: ProxyRequest, fds?: { tag: string; fds: readonly number[] }): Promise<unknown> {
    if (this.state === 'gone' || !this.child.connected) return Promise.reject(new Error(`proxy process ${this.index} is gone`));
    if (fds !== undefined) handoff().sendFds(this.fdChannel, Buffer.from(JSON.stringify({ name: fds.tag })), fds.fds);
    const seq = ++this.#seq;
    return new Promise((resolve, reject) => {
      this.#waiting.set(seq, { resolve, reject });
      this.child.send({ ...r, seq } as ToProxy);
    });
  }

  answered(m: FromProxy & { t: 'done' }): void {
    const w = this.#waiting.get(m.seq);
    if (w === undefined) return;
    this.#waiting.delete(m.seq);
    if (m.error === undefined) w.resolve(m.value);
    else w.reject(new Error(m.error));
  }

  gone(): void {
    this.state = 'gone';
    for (const w of this.#waiting.values()) w.reject(new Error(`proxy process ${this.index} is gone`));
    this.#waiting.clear();
    handoff().close(this.fdChannel);
  }
}

/**
 * The master's proxy processes: it starts them, hands each every tenant's listening socket,
 * answers their router calls from the node's sandbox pool (the registry of routers, each
 * disposed once no process holds it), gathers their figures, restarts one that dies, and
 * replaces them all on a reload without refusing a client.
 */
export class ProxyGroup {
  readonly #o: ProxyGroupOptions;
  readonly #log: Logger;
  readonly #proxies: ProxyHandle[] = [];
  readonly #ports = new Map<string, SpreadPort>();
  /** Routers proxies may call, by id: each with its holds (the master's, and each process's). */
  readonly #routers = new Map<number, { readonly router: Router; holds: number }>();
  #nextRouter = 1;
  readonly #countersFd: number;
  readonly #rows: number;
  readonly #freeRows: number[];
  /** Figures of proxy processes gone, so that node counters never go back. */
  readonly #retired = new Map<string, TenantFigures>();
  #closing = false;
  /** Restarts within the last minute, to slow a crash loop down. */
  readonly #restarts: number[] = [];
  #logLevel: string;

  constructor(o: ProxyGroupOptions) {
    this.#o = o;
    this.#log = o.log;
    this.#logLevel = o.logLevel;
    // Rows: every process of a reload's overlap (old and new) and one restarting, each its own.
    this.#rows = 2 * o.count + 2;
    this.#freeRows = Array.from({ length: this.#rows }, (_, i) => i);
    this.#countersFd = handoff().countersCreate(o.ports[1] - o.ports[0] + 1, this.#rows);
  }

  get count(): number {
    return this.#o.count;
  }

  /** Starts the processes; resolves once each is serving. */
  async start(): Promise<void> {
    const started = Array.from({ length: this.#o.count }, (_, i) => this.#spawn(i));
    await Promise.all(started.map((p) => this.#bringUp(p)));
  }

  /** The pids of the processes serving now (tests, the log). */
  get pids(): number[] {
    return this.#proxies.filter((p) => p.state === 'serving').map((p) => p.pid!);
  }

  /** Connections the node holds open for a tenant port (the shared count). */
  openConnections(port: number): number {
    return handoff().count(port - this.#o.ports[0]);
  }

  // —— routers ——————————————————————————————————————————————————————————————————————

  /** Registers a router proxies may call; the master holds it until `unhold`. */
  register(router: Router): RouterRef {
    const id = this.#nextRouter++;
    this.#routers.set(id, { router, holds: 1 });
    return router.hooks === undefined ? { id } : { id, hooks: router.hooks };
  }

  /** The master's hold (or a process's) ends; a router nobody holds is disposed. */
  unhold(id: number): void {
    const entry = this.#routers.get(id);
    if (entry === undefined) return;
    if (--entry.holds > 0) return;
    this.#routers.delete(id);
    entry.router.dispose();
  }

  #hold(proxy: ProxyHandle, ref: RouterRef): void {
    const entry = this.#routers.get(ref.id);
    if (entry === undefined) return;
    entry.holds++;
    proxy.routers.set(ref.id, (proxy.routers.get(ref.id) ?? 0) + 1);
  }

  /** A router call from a proxy process, answered from the registry. */
  async #call(proxy: ProxyHandle, m: FromProxy & { t: 'call' }): Promise<void> {
    const router = this.#routers.get(m.router)?.router;
    try {
      if (router === undefined) throw new RouterError(CloseReason.routerUnavailable, 'the router was replaced');
      let value: unknown;
      switch (m.op) {
        case 'warm':
          value = await router.warm();
          break;
        case 'accept':
          value = (await router.accept(m.conn!)) ?? null;
          break;
        case 'route':
          value = await router.route(m.text ?? '', m.conn!);
          break;
        case 'connect-error':
          await router.connectError(m.text ?? '', m.conn!);
          break;
        case 'inactivity-error':
          await router.inactivityError(m.text ?? '', m.conn!);
          break;
        default:
          m.op satisfies never;
      }
      proxy.send({ t: 'ret', id: m.id, value });
    } catch (err) {
      const e = err instanceof RouterError ? err : new RouterError(CloseReason.routerUnavailable, String(err));
      proxy.send({ t: 'ret', id: m.id, error: { reason: e.reason, message: e.message } });
    }
  }

  // —— tenants ——————————————————————————————————————————————————————————————————————

  /** A new tenant port: every process accepts on it once this resolves. */
  async addPort(port: SpreadPort): Promise<void> {
    this.#ports.set(port.name, port);
    await Promise.all(this.#proxies.filter((p) => p.state === 'starting' || p.state === 'serving').map((p) => this.#sendPort(p, port)));
  }

  /** The sockets of `port` proxy `p` accepts on: socket j goes to process j mod N (every socket has one). */
  #socketsFor(p: ProxyHandle, port: SpreadPort): number[] {
    const n = this.#o.count;
    const fds = port.fds.filter((_, j) => j % n === p.index);
    if (fds.length === 0 && port.fds.length > 0) fds.push(port.fds[p.index % port.fds.length]!);
    return fds;
  }

  async #sendPort(p: ProxyHandle, port: SpreadPort): Promise<void> {
    const spec = port.spec();
    const fds = this.#socketsFor(p, port);
    this.#hold(p, spec.router);
    if (spec.candidate !== undefined) this.#hold(p, spec.candidate.router);
    await p.request({ t: 'tenant', tenant: spec, sockets: fds.length }, { tag: port.name, fds });
  }

  /**
   * Sends a request to every process that is up (draining ones too: they still hold connections);
   * each holds the routers it names.
   */
  async broadcast(r: ProxyRequest, routers: readonly RouterRef[] = []): Promise<unknown[]> {
    const live = this.#proxies.filter((p) => p.state !== 'gone');
    for (const router of routers) for (const p of live) this.#hold(p, router);
    const answers = await Promise.allSettled(live.map((p) => p.request(r)));
    return answers.flatMap((a) => (a.status === 'fulfilled' ? [a.value] : []));
  }

  /** A tenant port is gone: processes forget it. */
  async removePort(name: string): Promise<number> {
    this.#ports.delete(name);
    const closed = await this.broadcast({ t: 'remove', name });
    return closed.reduce((n: number, c) => n + (typeof c === 'number' ? c : 0), 0);
  }

  /** A tenant port closes gracefully: resolves once every process has finished its connections. */
  async closePort(name: string): Promise<void> {
    this.#ports.delete(name);
    await this.broadcast({ t: 'close', name });
  }

  setLogLevel(level: string): void {
    this.#logLevel = level;
    void this.broadcast({ t: 'log-level', level });
  }

  // —— figures ——————————————————————————————————————————————————————————————————————

  /** Every process's figures, asked now, and the relay's summed. */
  async figures(): Promise<{ tenants: Map<string, TenantFigures>; relay: RelayFigures; processes: ProcessFigures[] }> {
    const live = this.#proxies.filter((p) => p.state !== 'gone');
    await Promise.allSettled(
      live.map(async (p) => {
        p.figures = (await p.request({ t: 'stats' })) as ProxyFigures;
      }),
    );
    const tenants = new Map<string, TenantFigures>();
    for (const [name, f] of this.#retired) tenants.set(name, f);
    let native: { connections: number; lentPipes: number; sparePipes: number; shed: number } | undefined;
    const processes: ProcessFigures[] = [];
    for (const p of live) {
      const f = p.figures;
      if (f === undefined) continue;
      if (p.state !== 'draining') processes.push({ index: p.index, connections: Object.values(f.tenants).reduce((n, t) => n + t.connections, 0) });
      for (const [name, t] of Object.entries(f.tenants)) tenants.set(name, sumFigures(tenants.get(name), t));
      if (f.relay.relay === 'splice') {
        const n = (native ??= { connections: 0, lentPipes: 0, sparePipes: 0, shed: 0 });
        n.connections += f.relay.stats.connections;
        n.lentPipes += f.relay.stats.lentPipes;
        n.sparePipes += f.relay.stats.sparePipes;
        n.shed += f.relay.stats.shed;
      }
    }
    const relay: RelayFigures = native === undefined ? { relay: 'node' } : { relay: 'splice', stats: native satisfies NativeStats };
    return { tenants, relay, processes };
  }

  /** A tenant deleted: its counters go with it. */
  forget(name: string): void {
    this.#retired.delete(name);
    for (const p of this.#proxies) {
      const f = p.figures?.tenants as Record<string, TenantFigures> | undefined;
      if (f !== undefined) delete f[name];
    }
  }

  // —— processes ————————————————————————————————————————————————————————————————————

  #spawn(index: number): ProxyHandle {
    const row = this.#freeRows.shift();
    if (row === undefined) throw new Error('no counter row free for a proxy process');
    const [mine, theirs] = handoff().socketPair();
    let child: ChildProcess;
    try {
      // Proxy processes hold no capability, whatever the master kept (node/privileges.ts).
      child = withoutAmbientCapabilities(() =>
        spawn(process.execPath, ['--no-node-snapshot', proxyMain], { stdio: ['ignore', 'inherit', 'inherit', 'ipc', theirs], env: proxyEnv() }),
      );
    } catch (err) {
      handoff().close(mine);
      this.#freeRows.push(row);
      throw err;
    } finally {
      handoff().close(theirs);
    }
    const p = new ProxyHandle(index, row, child, mine);
    this.#proxies.push(p);
    child.on('message', (m) => this.#heard(p, m as FromProxy));
    child.on('error', (err) => this.#log.error({ proxy: index, err: err.message }, 'proxy process error'));
    void p.exited.then((code) => this.#exited(p, code));
    return p;
  }

  /** Hands a new process the counters and every tenant port; resolves once it is serving. */
  async #bringUp(p: ProxyHandle): Promise<void> {
    const ready = new Promise<void>((resolve, reject) => {
      p.child.once('exit', () => reject(new Error(`proxy process ${p.index} exited while starting`)));
      p.readyHeard = resolve;
    });
    handoff().sendFds(p.fdChannel, Buffer.from('{"name":"counters"}'), [this.#countersFd]);
    p.send({ t: 'init', index: p.index, row: p.row, counters: { base: this.#o.ports[0], ports: this.#o.ports[1] - this.#o.ports[0] + 1, rows: this.#rows }, logLevel: this.#logLevel });
    await ready;
    // One tenant after another: each one's sockets wait in the channel only for their own message.
    for (const port of [...this.#ports.values()]) if (this.#ports.get(port.name) === port) await this.#sendPort(p, port);
    if (p.state === 'starting') p.state = 'serving';
    this.#log.info({ proxy: p.index, proxyPid: p.pid, tenants: this.#ports.size }, 'proxy process serving');
  }

  #heard(p: ProxyHandle, m: FromProxy): void {
    switch (m.t) {
      case 'ready':
        p.readyHeard?.();
        return;
      case 'done':
        p.answered(m);
        return;
      case 'call':
        void this.#call(p, m);
        return;
      case 'release': {
        const held = p.routers.get(m.router) ?? 0;
        if (held <= 0) return;
        if (held === 1) p.routers.delete(m.router);
        else p.routers.set(m.router, held - 1);
        this.unhold(m.router);
        return;
      }
      case 'rejected':
        this.#ports.get(m.name)?.rejected(m);
        return;
      default:
        m satisfies never;
    }
  }

  /** A process exited: give back what it held; restart it unless it was told to go. */
  #exited(p: ProxyHandle, code: number | null): void {
    const was = p.state;
    p.gone();
    const given = handoff().reclaim(p.row);
    this.#freeRows.push(p.row);
    for (const [id, holds] of p.routers) for (let k = 0; k < holds; k++) this.unhold(id);
    p.routers.clear();
    if (p.figures !== undefined) for (const [name, t] of Object.entries(p.figures.tenants)) this.#retired.set(name, sumFigures(this.#retired.get(name), { ...t, active: 0 }));
    this.#proxies.splice(this.#proxies.indexOf(p), 1);
    if (was === 'draining' || this.#closing) {
      this.#log.info({ proxy: p.index, proxyPid: p.pid, code }, 'proxy process finished');
      return;
    }
    this.#log.error({ proxy: p.index, proxyPid: p.pid, code, signal: p.child.signalCode, connectionsLost: given }, 'proxy process died; starting another');
    const now = Date.now();
    while (this.#restarts.length > 0 && this.#restarts[0]! < now - 60_000) this.#restarts.shift();
    this.#restarts.push(now);
    // A crash loop is slowed down (one start a second past 5 a minute); the port's other processes serve meanwhile.
    const delay = this.#restarts.length > 5 ? 1000 : 0;
    setTimeout(() => {
      if (this.#closing) return;
      const next = this.#spawn(p.index);
      this.#bringUp(next).catch((err: unknown) => this.#log.error({ proxy: p.index, err: (err as Error).message }, 'proxy process could not start'));
    }, delay).unref();
  }

  /**
   * A reload: new processes take every port beside the old ones (the same sockets: nothing in
   * an accept queue is lost); once all are serving, the old ones stop accepting and finish
   * their connections under the code and routers they had.
   */
  async replace(): Promise<void> {
    const old = this.#proxies.filter((p) => p.state === 'serving' || p.state === 'starting');
    const fresh = old.map((p) => this.#spawn(p.index));
    try {
      await Promise.all(fresh.map((p) => this.#bringUp(p)));
    } catch (err) {
      for (const p of fresh) {
        p.state = 'draining';
        p.send({ t: 'exit' });
      }
      throw err;
    }
    for (const p of old) {
      p.state = 'draining';
      p.send({ t: 'drain' });
    }
    this.#log.info({ replaced: old.map((p) => p.pid), by: fresh.map((p) => p.pid) }, 'proxy processes replaced');
  }

  /** Processes still finishing connections after a reload (tests, the log). */
  get draining(): number {
    return this.#proxies.filter((p) => p.state === 'draining').length;
  }

  /** Every process stops accepting and finishes its connections; resolves once all have exited. */
  async drain(): Promise<void> {
    this.#closing = true;
    const all = this.#proxies.filter((p) => p.state !== 'gone');
    for (const p of all) {
      p.state = 'draining';
      p.send({ t: 'drain' });
    }
    await Promise.all(all.map((p) => p.exited));
  }

  /** Every process closes its connections now and exits. */
  destroy(): void {
    this.#closing = true;
    for (const p of this.#proxies) {
      p.send({ t: 'exit' });
      p.child.kill('SIGKILL');
    }
  }

  async close(): Promise<void> {
    await this.drain();
    handoff().close(this.#countersFd);
  }
}

function sumFigures(a: TenantFigures | undefined, b: TenantFigures): TenantFigures {
  if (a === undefined) return b;
  const add = (x: Readonly<Record<string, number>>, y: Readonly<Record<string, number>>): Record<string, number> => {
    const out: Record<string, number> = { ...x };
    for (const [k, v] of Object.entries(y)) out[k] = (out[k] ?? 0) + v;
    return out;
  };
  return {
    connections: a.connections + b.connections,
    active: a.active + b.active,
    bytesIn: a.bytesIn + b.bytesIn,
    bytesOut: a.bytesOut + b.bytesOut,
    decisions: add(a.decisions, b.decisions),
    routerErrors: add(a.routerErrors, b.routerErrors),
    routerCallBuckets: a.routerCallBuckets.map((n, i) => n + (b.routerCallBuckets[i] ?? 0)),
    routerCallSeconds: a.routerCallSeconds + b.routerCallSeconds,
    rejections: add(a.rejections, b.rejections),
  };
}
