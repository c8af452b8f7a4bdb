/**
 * A proxy process: accepts and relays the node's client connections on every tenant port,
 * beside the other proxy processes. It holds no store, no admin API and no sandbox: its master
 * hands it each tenant's listening socket, limits and router (protocol.ts), and answers its
 * router calls from the node's one sandbox pool. Started by the master (proxy-group.ts) with
 * the IPC channel and, as descriptor 4, the unix socket that carries descriptors.
 */
import '../runtime-gate.js';
import type { Limits } from '../config.js';
import { processDataPath } from '../connection/data-path.js';
import { CloseReason, RouterError } from '../errors.js';
import { TenantListener, type Admission } from '../listener.js';
import { createLogger, setLogLevel, type Logger } from '../log.js';
import { parseAllowRule, type AllowRule, BackendPolicy } from '../routing/policy.js';
import { CachingResolver } from '../routing/resolver.js';
import { makeUndumpable } from '../sandbox/confine.js';
import { handoff } from './handoff.js';
import type { Candidate } from '../routing/rollout.js';
import type { ConnInfo, Router } from '../sandbox/router.js';
import type { CandidateRef, FromProxy, PolicySpec, ProxyFigures, ProxyRequest, RouterOp, RouterRef, TenantFigures, ToProxy } from './protocol.js';
import { RemoteRouter, type RouterCalls } from './remote-router.js';

/** The descriptor the master's unix socket pair arrives on. */
const fdChannel = 4;

if (process.send === undefined) {
  process.stderr.write('switchyard: the proxy process is started by its master (switchyard serve)\n');
  process.exit(2);
}
makeUndumpable();

const send = (message: FromProxy): void => {
  process.send?.(message);
};

/** Router calls waiting for the master's answer, by id. */
class MasterCalls implements RouterCalls {
  #next = 1;
  readonly #waiting = new Map<number, { resolve(value: unknown): void; reject(err: Error): void }>();

  call(router: number, op: RouterOp, conn?: ConnInfo, text?: string): Promise<unknown> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject });
      send({ t: 'call', id, router, op, ...(conn === undefined ? {} : { conn }), ...(text === undefined ? {} : { text }) });
    });
  }

  release(router: number): void {
    send({ t: 'release', router });
  }

  answered(message: ToProxy & { t: 'ret' }): void {
    const waiting = this.#waiting.get(message.id);
    if (waiting === undefined) return;
    this.#waiting.delete(message.id);
    if (message.error === undefined) waiting.resolve(message.value);
    else waiting.reject(new RouterError(message.error.reason, message.error.message));
  }

  /** The master is gone: nothing will answer. */
  failAll(): void {
    for (const w of this.#waiting.values()) w.reject(new RouterError(CloseReason.routerUnavailable, 'the master process is gone'));
    this.#waiting.clear();
  }
}

/** The node's shared count of a tenant's open connections (handoff.c's counters). */
class SharedAdmission implements Admission {
  constructor(
    readonly port: number,
    readonly row: number,
  ) {}
  acquire(max: number): boolean {
    return handoff().acquire(this.port, this.row, max);
  }
  release(): void {
    handoff().release(this.port, this.row);
  }
}

interface Served {
  readonly listener: TenantListener;
  readonly port: number;
}

class ProxyProcess {
  readonly #log: Logger;
  readonly #calls = new MasterCalls();
  readonly #tenants = new Map<string, Served>();
  readonly #resolver = new CachingResolver();
  #index = -1;
  #row = -1;
  #base = 0;
  #draining = false;

  constructor() {
    this.#log = createLogger();
  }

  readonly onMessage = (message: ToProxy): void => {
    switch (message.t) {
      case 'init':
        this.#index = message.index;
        this.#row = message.row;
        this.#base = message.counters.base;
        setLogLevel(this.#log, message.logLevel);
        this.#receiveCounters(message.counters);
        send({ t: 'ready' });
        return;
      case 'ret':
        this.#calls.answered(message);
        return;
      case 'drain':
        void this.#drain();
        return;
      case 'exit':
        for (const s of this.#tenants.values()) s.listener.destroy(CloseReason.shutdown);
        process.exit(0);
        return;
      default: {
        const { seq } = message;
        this.#request(message).then(
          (value) => send({ t: 'done', seq, value }),
          (err: unknown) => send({ t: 'done', seq, error: (err as Error).message }),
        );
      }
    }
  };

  async #request(r: ProxyRequest): Promise<unknown> {
    switch (r.t) {
      case 'tenant':
        return this.#addTenant(r);
      case 'router': {
        const s = this.#get(r.name);
        // Not serving this tenant (yet): its routers are not held here.
        if (s === undefined) {
          this.#calls.release(r.router.id);
          if (r.candidate !== undefined) this.#calls.release(r.candidate.router.id);
        } else s.listener.setRouters(this.#router(r.router), this.#candidate(r.candidate));
        return undefined;
      }
      case 'limits': {
        const s = this.#get(r.name);
        if (s !== undefined) this.#configure(s.listener, r.name, r.limits, r.policy);
        return undefined;
      }
      case 'remove': {
        const s = this.#get(r.name);
        if (s === undefined) return 0;
        this.#tenants.delete(r.name);
        const closed = s.listener.destroy(CloseReason.killed);
        s.listener.router.dispose();
        s.listener.candidate?.router.dispose();
        return closed;
      }
      case 'close': {
        const s = this.#get(r.name);
        if (s === undefined) return undefined;
        await s.listener.close();
        this.#tenants.delete(r.name);
        s.listener.router.dispose();
        s.listener.candidate?.router.dispose();
        return undefined;
      }
      case 'kill':
        return this.#get(r.name)?.listener.closeConnections(CloseReason.killed) ?? 0;
      case 'stats':
        return this.#figures();
      case 'log-level':
        setLogLevel(this.#log, r.level);
        return undefined;
      default:
        r satisfies never;
        return undefined;
    }
  }

  #get(name: string): Served | undefined {
    return this.#tenants.get(name);
  }

  #router(ref: RouterRef): RemoteRouter {
    return new RemoteRouter(this.#calls, ref);
  }

  /** A gradual rollout's router, as the listener takes it. */
  #candidate(ref: CandidateRef | undefined): Candidate<Router> | undefined {
    return ref === undefined ? undefined : { router: this.#router(ref.router), percent: ref.percent, salt: ref.salt };
  }

  /** The counters' file, sent just before `init`. */
  #receiveCounters(c: { ports: number; rows: number }): void {
    const got = handoff().recvFds(fdChannel, 5000);
    const fd = got?.[1][0];
    if (fd === undefined) throw new Error('the counters did not arrive');
    handoff().countersAttach(fd, c.ports, c.rows);
    handoff().close(fd);
  }

  /** A tenant's port: its listening sockets (one or more of the group) arrive on the descriptor channel. */
  async #addTenant(r: ProxyRequest & { t: 'tenant' }): Promise<number> {
    const got = handoff().recvFds(fdChannel, 5000);
    const fds = got?.[1] ?? [];
    const tag = got === null ? undefined : (JSON.parse(got[0].toString('utf8')) as { name?: string }).name;
    if (tag !== r.tenant.name || fds.length !== r.sockets) {
      for (const fd of fds) handoff().close(fd);
      this.#calls.release(r.tenant.router.id);
      if (r.tenant.candidate !== undefined) this.#calls.release(r.tenant.candidate.router.id);
      throw new Error(`the sockets of ${r.tenant.name} did not arrive`);
    }
    const spec = r.tenant;
    const existing = this.#tenants.get(spec.name);
    if (existing !== undefined) {
      existing.listener.destroy(CloseReason.killed);
      existing.listener.router.dispose();
      existing.listener.candidate?.router.dispose();
    }
    const listener = new TenantListener({
      tenant: spec.name,
      router: this.#router(spec.router),
      limits: spec.limits,
      log: this.#log,
      admission: new SharedAdmission(spec.port - this.#base, this.#row),
    });
    if (spec.candidate !== undefined) listener.setRouters(listener.router, this.#candidate(spec.candidate));
    this.#configure(listener, spec.name, spec.limits, spec.policy);
    this.#tenants.set(spec.name, { listener, port: spec.port });
    // Rejections go to the master's ring for the tenant (one per node) as well as to the log.
    const rejected = listener.rejected.bind(listener);
    listener.rejected = (rejection) => {
      rejected(rejection);
      listener.rejections.length = 0;
      send({
        t: 'rejected',
        name: spec.name,
        time: rejection.time.toISOString(),
        client: rejection.client,
        reason: rejection.reason,
        message: rejection.message,
        firstBytes: rejection.firstBytes.toString('base64'),
      });
    };
    // Each socket is the listener's once it listens on it; those it could not take are closed here.
    let taken = 0;
    try {
      for (const fd of fds) {
        await listener.listen({ fd });
        taken++;
      }
    } finally {
      for (const fd of fds.slice(taken)) handoff().close(fd);
    }
    if (this.#draining) listener.destroy(CloseReason.shutdown);
    return fds.length;
  }

  #configure(listener: TenantListener, name: string, limits: Limits, policy: PolicySpec | undefined): void {
    listener.limits = limits;
    if (policy === undefined) return;
    const rules = policy.rules.map((text) => parseAllowRule(text)).filter((r): r is AllowRule => typeof r !== 'string');
    const [lo, hi] = policy.ownPorts.range;
    const extra = new Set(policy.ownPorts.extra);
    listener.gate = { policy: new BackendPolicy(rules, (p) => (p >= lo && p <= hi) || extra.has(p)), resolver: this.#resolver.forTenant(name) };
  }

  #figures(): ProxyFigures {
    const tenants: Record<string, TenantFigures> = {};
    for (const [name, { listener }] of this.#tenants) {
      const s = listener.stats;
      const bytes = listener.bytes;
      tenants[name] = {
        connections: s.connections,
        active: s.active,
        bytesIn: bytes.in,
        bytesOut: bytes.out,
        decisions: { ...s.decisions },
        routerErrors: { ...s.routerErrors },
        routerCallBuckets: [...s.routerCallBuckets],
        routerCallSeconds: s.routerCallSeconds,
        rejections: Object.fromEntries(s.rejections),
      };
    }
    return { tenants, relay: processDataPath().figures() };
  }

  /** Stops accepting on every port, waits for the open connections, exits. */
  async #drain(): Promise<void> {
    this.#draining = true;
    this.#log.info({ proxy: this.#index, open: [...this.#tenants.values()].reduce((n, s) => n + s.listener.connectionCount, 0) }, 'proxy process draining');
    await Promise.all([...this.#tenants.values()].map((s) => s.listener.close()));
    process.exit(0);
  }

  /**
   * The master is gone (it crashed, or was killed): no router can answer and no one can manage
   * this process, and a master started again must own the ports alone. Everything closes now,
   * as it would had the node been one process.
   */
  readonly onDisconnect = (): void => {
    this.#calls.failAll();
    for (const s of this.#tenants.values()) s.listener.destroy(CloseReason.shutdown);
    this.#log.warn({ proxy: this.#index }, 'the master is gone; this proxy process exits');
    process.exit(1);
  };
}

const proxy = new ProxyProcess();
process.on('message', (m) => proxy.onMessage(m as ToProxy));
process.on('disconnect', proxy.onDisconnect);
// The master decides when this process stops; signals from the terminal reach it too.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const) process.on(signal, () => undefined);
