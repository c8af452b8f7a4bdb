import { maxTimerMs, type Limits } from '../config.js';
import { CloseReason, ConnectError, RouterError } from '../errors.js';
import type { Logger } from '../log.js';
import type { TenantStats } from '../metrics/stats.js';
import type { Decision, RemoteDecision } from '../routing/decision.js';
import { formatEndpoint } from '../routing/endpoint.js';
import { admissionReason, admit, type BackendPolicy } from '../routing/policy.js';
import type { CachingResolver } from '../routing/resolver.js';
import type { ConnInfo, Router, RouterHooks } from '../sandbox/router.js';
import type { Client, ClientHandler, Upstream } from './client.js';
import { proxyProtocolHeader } from './proxy-protocol.js';
import { ConnectCancel } from './upstream.js';

/** What a connection needs from the listener that accepted it. */
export interface ConnectionHost {
  readonly tenant: string;
  readonly limits: Limits;
  /** The tenant's logger (it carries `tenant`). */
  readonly log: Logger;
  readonly stats: TenantStats;
  /** Hosting mode: backends are resolved and checked before any connect. Absent: any backend. */
  readonly gate?: { readonly policy: BackendPolicy; readonly resolver: CachingResolver } | undefined;
  /** A connection was closed without being relayed. */
  rejected(rejection: Rejection): void;
  /** Both sides are closed; the connection is done. */
  finished(connection: Connection): void;
}

export interface Rejection {
  readonly time: Date;
  readonly client: string;
  readonly reason: CloseReason;
  readonly message: string;
  /** Up to the first 256 bytes the client sent. */
  readonly firstBytes: Buffer;
}

type Phase = 'receiving' | 'connecting' | 'relaying' | 'closing' | 'closed';
type TimerKind = 'decision' | 'inactivity' | 'linger';

/** How long a closed-by-us client may take to close its side before it is destroyed. */
const lingerMs = 5000;

const empty = Buffer.alloc(0);

/**
 * One client connection's life, phase by phase, in the order they happen:
 *
 *   accept → receive → route (noop: receive more | close | remote) → connect → relay → finish
 *
 * One timer slot serves every phase: the decision deadline while receiving, the inactivity
 * timeout while relaying, and a linger limit once Switchyard has closed its side. The client
 * is the native data path's or a net.Socket (`Client`), and connects its own kind of backend
 * (`Upstream`); the phases are the same for both.
 */
export class Connection implements ClientHandler {
  readonly #host: ConnectionHost;
  /** The router live when the client arrived; a hot swap does not change it mid-connection. */
  readonly #router: Router;

  get router(): Router {
    return this.#router;
  }
  readonly #client: Client;
  readonly #info: ConnInfo;
  readonly #startedAt = Date.now();
  #phase: Phase = 'receiving';
  /**
   * What the connection may hold before a decision (maxBufferBytes when it was accepted): the
   * bytes received and the bytes owed to the client, together.
   */
  readonly #cap: number;
  /** Everything received before a decision: `#buffer[0, #held)`, grown geometrically up to the cap. */
  #buffer: Buffer = empty;
  #held = 0;
  /** How many of those bytes the router's last call saw. */
  #seen = 0;
  /** Bytes of the router's replies that Switchyard still holds for the client (not yet in the kernel). */
  #owed = 0;
  /** A router call is in flight; new chunks wait for it to answer. */
  #routing = false;
  #clientEnded = false;
  #cancel: ConnectCancel | undefined;
  #backend: string | undefined;
  #decision: Decision['kind'] | 'error' | 'none' = 'none';
  #reason: CloseReason | undefined;
  #timer: NodeJS.Timeout | undefined;
  #timerKind: TimerKind = 'decision';
  #inactivityMs = 0;
  /** Bytes from and to the client, once the connection is closed. */
  #totals: readonly [number, number] | undefined;

  constructor(host: ConnectionHost, client: Client, info: ConnInfo, router: Router) {
    this.#host = host;
    this.#router = router;
    this.#client = client;
    this.#info = info;
    this.#cap = host.limits.maxBufferBytes;
  }

  get client(): string {
    return `${this.#info.remoteAddress}:${this.#info.remotePort}`;
  }

  /** Bytes received from and sent to the client so far. */
  get bytes(): readonly [number, number] {
    return this.#totals ?? this.#client.bytes();
  }

  /**
   * accept: called once the listener has taken the client. Starts the decision deadline, the
   * router's warm-up or proxyAccept, then listens (the first bytes may have come with the accept).
   */
  accept(): void {
    this.#arm('decision', this.#host.limits.decisionTimeoutMs);
    const hooks = this.#router.hooks;
    if (hooks === undefined) void this.#warm();
    else if (hooks.accept) void this.#route(true);
    this.#readMore();
    this.#client.listen(this);
  }

  /**
   * A cold router (the tenant's first connection since start-up or since its isolate was
   * unloaded) is built first; what the client sends meanwhile is buffered.
   */
  async #warm(): Promise<void> {
    this.#routing = true;
    let hooks: RouterHooks;
    try {
      hooks = await this.#router.warm();
    } catch (err) {
      this.#routing = false;
      if (this.#phase !== 'receiving') return;
      this.#decision = 'error';
      this.#reject(CloseReason.routerUnavailable, `router could not be loaded: ${(err as Error).message}`);
      return;
    }
    this.#routing = false;
    if (this.#phase !== 'receiving') return;
    if (hooks.accept) void this.#route(true);
    else this.#next();
  }

  /**
   * receive: a chunk from the client before any decision; buffer it and ask the router again.
   * The client is read only as far as the cap (`#readMore`), so the buffer never passes it.
   */
  received(chunk: Buffer): void {
    if (this.#phase !== 'receiving') return;
    if (this.#held + chunk.length > this.#cap) {
      // Not reached: the client is read no further than the cap. Kept as the cap's last word.
      this.#reject(CloseReason.bufferLimit, `client sent ${this.#held + chunk.length} bytes without a decision (limit ${this.#cap})`);
      return;
    }
    this.#append(chunk);
    this.#readMore();
    this.#next();
  }

  /**
   * The client sent FIN (after its last chunk). A router call in flight still decides on what
   * is there; if the router has seen everything and waits for more, none can come: close.
   */
  ended(): void {
    this.#clientEnded = true;
    this.#next();
  }

  /** The client has taken every reply Switchyard held for it: read and route again. */
  drained(): void {
    if (this.#phase !== 'receiving') return;
    this.#owed = 0;
    this.#readMore();
    this.#next();
  }

  /** Appends a chunk to the buffer, which doubles (up to the cap) when it is full. */
  #append(chunk: Buffer): void {
    const held = this.#held + chunk.length;
    if (held > this.#buffer.length) {
      const grown = Buffer.allocUnsafe(Math.min(this.#cap, Math.max(held, 2 * this.#buffer.length, 4096)));
      this.#buffer.copy(grown, 0, 0, this.#held);
      this.#buffer = grown;
    }
    chunk.copy(this.#buffer, this.#held);
    this.#held = held;
  }

  /**
   * The watermark: the client may be read for what is left of the cap once the buffer and the
   * bytes owed to it are counted. At 0 its bytes wait in the kernel (TCP holds it back) until
   * the router decides, or until the client has read what it is owed.
   */
  #readMore(): void {
    if (this.#phase === 'receiving') this.#client.read(Math.max(0, this.#cap - this.#held - this.#owed));
  }

  /**
   * Replies the client has not read yet, with the buffer, fill the cap: no router call (none
   * could add a reply) until they drain. The decision deadline still runs.
   */
  #overCap(): boolean {
    return this.#owed > 0 && this.#held + this.#owed >= this.#cap;
  }

  /**
   * What a connection being received does next, when no router call is in flight: route again
   * if bytes came that the router has not seen (once the client is not over the cap); give up
   * if it has seen everything and none can come.
   */
  #next(): void {
    if (this.#phase !== 'receiving' || this.#routing) return;
    if (this.#held > this.#seen) {
      if (!this.#overCap()) void this.#route(false);
    } else if (this.#clientEnded) this.#noMoreData();
  }

  /**
   * route: ask the router about the whole buffer (or proxyAccept about the new client). One call
   * at a time; chunks that arrive meanwhile are seen by the next call.
   */
  async #route(accepting: boolean): Promise<void> {
    this.#routing = true;
    const seen = accepting ? this.#seen : this.#held;
    const stats = this.#host.stats;
    const started = performance.now();
    let decision: Decision | undefined;
    try {
      decision = accepting
        ? await this.#router.accept(this.#info)
        : await this.#router.route(this.#buffer.toString('latin1', 0, seen), this.#info);
      stats.routerCall((performance.now() - started) / 1000);
    } catch (err) {
      stats.routerCall((performance.now() - started) / 1000);
      this.#routing = false;
      const e = err instanceof RouterError ? err : new RouterError(CloseReason.routerUnavailable, String(err));
      stats.routerFailed(e.reason);
      if (this.#phase !== 'receiving') return;
      this.#decision = 'error';
      this.#reject(e.reason, e.message);
      return;
    }
    this.#routing = false;
    if (this.#phase !== 'receiving') return;
    this.#seen = seen;
    if (decision === undefined) {
      this.#next();
      return;
    }
    this.#decision = decision.kind;
    this.#host.stats.decided(decision.kind);
    switch (decision.kind) {
      case 'noop':
        if (seen >= this.#cap) {
          // The router saw a full buffer and wants more: nothing more can be held for it.
          this.#reject(CloseReason.bufferLimit, `the router asked for more than ${this.#cap} bytes (the limit)`, decision.reply);
          return;
        }
        if (decision.reply !== undefined) {
          this.#owed = this.#client.write(decision.reply);
          this.#readMore();
        }
        this.#next();
        return;
      case 'close':
        this.#reject(CloseReason.routerClose, 'router closed the connection', decision.reply);
        return;
      case 'remote':
        void this.#connect(decision);
        return;
      default:
        decision satisfies never;
    }
  }

  /** The client gave up before a decision: closed, but not a rejection (nothing refused it). */
  #noMoreData(): void {
    this.#reason = CloseReason.clientClosed;
    this.#endClient();
  }

  /**
   * connect: the router chose backends. The client is paused (what it sends meanwhile waits in
   * the kernel) while each candidate is tried, with ProxyMachine's retries.
   */
  async #connect(decision: RemoteDecision): Promise<void> {
    this.#phase = 'connecting';
    this.#disarm();
    this.#client.pause();
    const limits = this.#host.limits;
    const cancel = (this.#cancel = new ConnectCancel());
    this.#backend = formatEndpoint(decision.remotes[0]!);
    let remotes = decision.remotes;
    const gate = this.#host.gate;
    if (gate !== undefined) {
      const admission = await admit(remotes, gate.policy, gate.resolver);
      if (this.#phase !== 'connecting') return;
      if (admission.candidates.length === 0) {
        // The same words as the dry run's reason.
        if (admission.denied.length > 0) this.#reject(CloseReason.policyDenied, admissionReason(admission));
        else await this.#connectFailed(new ConnectError(admission.unresolved.at(-1) ?? this.#backend, admissionReason(admission)));
        return;
      }
      remotes = admission.candidates;
    }
    try {
      const upstream = await this.#client.connect(
        {
          remotes,
          tries: limits.connectTries,
          retryDelayMs: limits.connectRetryDelayMs,
          timeoutMs: clamp(decision.connectTimeoutMs ?? limits.connectTimeoutMs),
        },
        cancel,
      );
      this.#cancel = undefined;
      this.#backend = formatEndpoint(upstream.endpoint);
      if (this.#phase !== 'connecting') {
        upstream.destroy();
        return;
      }
      this.#relay(upstream, decision);
    } catch (err) {
      this.#cancel = undefined;
      if (this.#phase !== 'connecting') return;
      if (err instanceof ConnectError) await this.#connectFailed(err);
      else this.#reject(CloseReason.connectFailed, String(err));
    }
  }

  /** Every candidate failed: tell the router's proxyConnectError hook, then close the client. */
  async #connectFailed(err: ConnectError): Promise<void> {
    this.#backend = err.backend;
    if (this.#router.hooks?.connectError === true) {
      await this.#router
        .connectError(err.backend, this.#info)
        .catch((e: unknown) => this.#host.log.warn({ client: this.client, err: (e as Error).message }, 'proxyConnectError hook failed'));
    }
    if (this.#phase === 'connecting') this.#reject(CloseReason.connectFailed, err.message);
  }

  /**
   * relay: send the PROXY header if asked, replay the buffer (or the router's `data` in place of
   * what it saw), send `reply` to the client, then relay both directions until both close.
   */
  #relay(upstream: Upstream, decision: RemoteDecision): void {
    this.#phase = 'relaying';
    const header =
      decision.proxyProtocol === undefined
        ? undefined
        : proxyProtocolHeader(decision.proxyProtocol, {
            sourceAddress: this.#info.remoteAddress,
            sourcePort: this.#info.remotePort,
            destinationAddress: this.#info.localAddress,
            destinationPort: this.#info.localPort,
          });
    const received = this.#buffer.subarray(0, this.#held);
    const replay = decision.data === undefined ? received : Buffer.concat([Buffer.from(decision.data, 'latin1'), received.subarray(this.#seen)]);
    this.#buffer = empty;
    this.#held = this.#seen = 0;
    let toUpstream: Buffer | undefined = replay.length > 0 ? replay : undefined;
    if (header !== undefined) toUpstream = toUpstream === undefined ? header : Buffer.concat([header, toUpstream]);
    const toClient = decision.reply === undefined ? undefined : Buffer.from(decision.reply, 'latin1');
    this.#inactivityMs = clamp(decision.inactivityTimeoutMs ?? this.#host.limits.inactivityTimeoutMs);
    if (this.#inactivityMs > 0) this.#arm('inactivity', this.#inactivityMs);
    try {
      upstream.relay(toUpstream, toClient);
    } catch (err) {
      upstream.destroy();
      this.#host.log.warn({ client: this.client, backend: this.#backend, err: (err as Error).message }, 'relay could not start');
      this.#reason = CloseReason.connectFailed;
      this.#destroyClient();
    }
  }

  /**
   * unbind: the client is gone, with its relay if it had one: both sides closed, or a socket
   * failed. Before a decision, that is the client giving up.
   */
  closed(bytesIn: number, bytesOut: number, errno: number): void {
    if (errno !== 0) this.#host.log.debug({ client: this.client, backend: this.#backend, errno }, 'socket failed');
    if (this.#phase === 'receiving' || this.#phase === 'connecting') {
      this.#reason ??= CloseReason.clientClosed;
      this.#cancel?.cancel(new Error('client closed'));
    }
    this.#finish(bytesIn, bytesOut);
  }

  /** The one timer of the connection fired: what it means depends on the phase. */
  readonly #onTimer = (): void => {
    this.#timer = undefined;
    switch (this.#timerKind) {
      case 'decision':
        if (this.#phase === 'receiving') {
          this.#reject(CloseReason.decisionTimeout, `no decision within ${this.#host.limits.decisionTimeoutMs} ms`);
        }
        return;
      case 'inactivity': {
        const idle = this.#client.idleMs();
        if (idle < this.#inactivityMs) this.#arm('inactivity', this.#inactivityMs - idle);
        else void this.#inactive();
        return;
      }
      case 'linger':
        this.#destroyClient();
        return;
    }
  };

  /** No bytes either way for the inactivity timeout: tell proxyInactivityError, then close. */
  async #inactive(): Promise<void> {
    this.#reason = CloseReason.inactivityTimeout;
    this.#host.log.info({ client: this.client, backend: this.#backend, timeoutMs: this.#inactivityMs }, 'inactivity timeout');
    if (this.#router.hooks?.inactivityError === true) {
      await this.#router
        .inactivityError(this.#backend ?? '', this.#info)
        .catch((e: unknown) => this.#host.log.warn({ client: this.client, err: (e as Error).message }, 'proxyInactivityError hook failed'));
    }
    this.#destroyClient();
  }

  /**
   * Closes a connection that will not be relayed: the router closed it, failed, or a limit
   * was hit. `reply` (from a close decision) is sent first.
   */
  #reject(reason: CloseReason, message: string, reply?: string): void {
    this.#reason = reason;
    const first = Buffer.from(this.#buffer.subarray(0, Math.min(256, this.#held)));
    this.#host.stats.rejected(reason);
    this.#host.rejected({ time: new Date(), client: this.client, reason, message, firstBytes: first });
    this.#endClient(reply);
  }

  /** Sends FIN to the client (after `reply`), and gives it a moment to close its side. */
  #endClient(reply?: string): void {
    this.#phase = 'closing';
    this.#cancel?.cancel(new Error('connection closed'));
    this.#client.end(reply);
    this.#arm('linger', lingerMs);
  }

  /** Forced close: both sides destroyed now (shutdown, kill switch). */
  destroy(reason: CloseReason): void {
    if (this.#phase === 'closed') return;
    this.#reason ??= reason;
    // No phase may carry on (a pending router call or connect attempt sees this and stops).
    this.#cancel?.cancel(new Error('connection destroyed'));
    this.#destroyClient();
  }

  /** Closes the client (and its relay) now, and finishes. Not once closed: the client is gone. */
  #destroyClient(): void {
    if (this.#phase === 'closed') return;
    const [bytesIn, bytesOut] = this.#client.destroy();
    this.#finish(bytesIn, bytesOut);
  }

  /** finish: log the connection's one line and count it. */
  #finish(bytesIn: number, bytesOut: number): void {
    if (this.#phase === 'closed') return;
    this.#phase = 'closed';
    this.#disarm();
    const stats = this.#host.stats;
    this.#totals = [bytesIn, bytesOut];
    stats.bytesIn += bytesIn;
    stats.bytesOut += bytesOut;
    this.#host.log.info(
      {
        client: this.client,
        backend: this.#backend,
        decision: this.#decision,
        reason: this.#reason,
        bytesIn,
        bytesOut,
        durationMs: Date.now() - this.#startedAt,
      },
      'connection closed',
    );
    this.#host.finished(this);
  }

  #arm(kind: TimerKind, ms: number): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timerKind = kind;
    this.#timer = setTimeout(this.#onTimer, ms);
  }

  #disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

function clamp(ms: number): number {
  return Math.min(Math.ceil(ms), maxTimerMs);
}
