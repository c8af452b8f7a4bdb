import { isIP, Socket } from 'node:net';
import { maxTimerMs, type Limits } from '../config.js';
import { CloseReason, ConnectError, RouterError } from '../errors.js';
import type { Logger } from '../log.js';
import type { TenantStats } from '../metrics/stats.js';
import type { Decision, RemoteDecision } from '../routing/decision.js';
import { formatEndpoint } from '../routing/endpoint.js';
import { admit, type BackendPolicy } from '../routing/policy.js';
import type { CachingResolver } from '../routing/resolver.js';
import type { ConnInfo, Router, RouterHooks } from '../sandbox/router.js';
import { proxyProtocolHeader } from './proxy-protocol.js';
import { DialedUpstream, NativeRelay, type RelayOwner } from './native-relay.js';
import { abortPeer, splice } from './relay.js';
import { ConnectCancel, connectUpstream, dialSocket, type Dial } from './upstream.js';

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

/**
 * One client connection's life, phase by phase, in the order they happen:
 *
 *   accept → receive → route (noop: receive more | close | remote) → connect → relay → finish
 *
 * One timer slot serves every phase: the decision deadline while receiving, the inactivity
 * timeout while relaying, and a linger limit once Switchyard has closed its side.
 */
export class Connection implements RelayOwner {
  readonly #host: ConnectionHost;
  /** The router live when the client arrived; a hot swap does not change it mid-connection. */
  readonly #router: Router;

  get router(): Router {
    return this.#router;
  }
  #client: Socket;
  readonly #info: ConnInfo;
  readonly #startedAt = Date.now();
  #phase: Phase = 'receiving';
  /** Everything received before a decision, one character per byte (latin1). */
  #buffer = '';
  /** A router call is in flight; new chunks wait for it to answer. */
  #routing = false;
  #clientEnded = false;
  #upstream: Socket | undefined;
  #cancel: ConnectCancel | undefined;
  #backend: string | undefined;
  #decision: Decision['kind'] | 'error' | 'none' = 'none';
  #reason: CloseReason | undefined;
  #timer: NodeJS.Timeout | undefined;
  #timerKind: TimerKind = 'decision';
  #inactivityMs = 0;
  #lastActivity = 0;
  #openSockets = 1;
  /** Relaying natively: the relay and its id, and the bytes Node moved before the handover. */
  #native: { readonly relay: NativeRelay; readonly id: number; readonly before: readonly [number, number] } | undefined;
  /** Bytes from and to the client, once the connection is closed. */
  #totals: readonly [number, number] | undefined;

  constructor(host: ConnectionHost, client: Socket, info: ConnInfo, router: Router) {
    this.#host = host;
    this.#router = router;
    this.#client = client;
    this.#info = info;
  }

  get client(): string {
    return `${this.#info.remoteAddress}:${this.#info.remotePort}`;
  }

  /** Bytes received from and sent to the client so far. */
  get bytes(): readonly [number, number] {
    if (this.#totals !== undefined) return this.#totals;
    const native = this.#native;
    if (native === undefined) return [this.#client.bytesRead, this.#client.bytesWritten];
    const [bytesIn, bytesOut] = native.relay.bytes(native.id);
    return [native.before[0] + bytesIn, native.before[1] + bytesOut];
  }

  /** accept: called once the listener has taken the client. Starts the decision deadline. */
  accept(): void {
    const client = this.#client;
    client.on('data', this.#receive);
    client.on('end', this.#clientEnd);
    client.on('error', this.#clientError);
    client.on('close', this.#socketClosed);
    this.#arm('decision', this.#host.limits.decisionTimeoutMs);
    const hooks = this.#router.hooks;
    if (hooks === undefined) void this.#warm();
    else if (hooks.accept) void this.#route(true);
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
    else this.#waitForMore(0);
  }

  /** receive: a chunk from the client before any decision; buffer it and ask the router again. */
  readonly #receive = (chunk: Buffer): void => {
    if (this.#phase !== 'receiving') return;
    this.#buffer += chunk.toString('latin1');
    if (this.#buffer.length > this.#host.limits.maxBufferBytes) {
      this.#reject(CloseReason.bufferLimit, `client sent ${this.#buffer.length} bytes without a decision (limit ${this.#host.limits.maxBufferBytes})`);
      return;
    }
    if (!this.#routing) void this.#route(false);
  };

  /**
   * The client sent FIN (after its last chunk). A router call in flight still decides on what
   * is there; if the router has seen everything and waits for more, none can come: close.
   */
  readonly #clientEnd = (): void => {
    this.#clientEnded = true;
    if (this.#phase === 'receiving' && !this.#routing) this.#noMoreData();
  };

  /**
   * route: ask the router about the whole buffer (or proxyAccept about the new client). One call
   * at a time; chunks that arrive meanwhile are seen by the next call.
   */
  async #route(accepting: boolean): Promise<void> {
    this.#routing = true;
    const seen = this.#buffer.length;
    const stats = this.#host.stats;
    const started = performance.now();
    let decision: Decision | undefined;
    try {
      decision = accepting
        ? await this.#router.accept(this.#info)
        : await this.#router.route(this.#buffer, this.#info);
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
    if (decision === undefined) {
      this.#waitForMore(seen);
      return;
    }
    this.#decision = decision.kind;
    this.#host.stats.decided(decision.kind);
    switch (decision.kind) {
      case 'noop':
        if (decision.reply !== undefined) this.#client.write(decision.reply, 'latin1');
        this.#waitForMore(seen);
        return;
      case 'close':
        this.#reject(CloseReason.routerClose, 'router closed the connection', decision.reply);
        return;
      case 'remote':
        void this.#connect(decision, seen);
        return;
      default:
        decision satisfies never;
    }
  }

  /** After a noop: route again if more arrived during the call; give up if no more can come. */
  #waitForMore(seen: number): void {
    if (this.#buffer.length > seen) void this.#route(false);
    else if (this.#clientEnded) this.#noMoreData();
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
  async #connect(decision: RemoteDecision, seen: number): Promise<void> {
    this.#phase = 'connecting';
    this.#disarm();
    this.#client.pause();
    const limits = this.#host.limits;
    const cancel = (this.#cancel = new ConnectCancel());
    this.#backend = formatEndpoint(decision.remotes[0]!);
    let remotes = decision.remotes;
    const gate = this.#host.gate;
    if (gate !== undefined) {
      const { candidates, denied, unresolved } = await admit(remotes, gate.policy, gate.resolver);
      if (this.#phase !== 'connecting') return;
      if (candidates.length === 0) {
        if (denied.length > 0) this.#reject(CloseReason.policyDenied, `backend not allowed: ${denied.join('; ')}`);
        else await this.#connectFailed(new ConnectError(unresolved.at(-1) ?? this.#backend, `${unresolved.join(', ')} did not resolve`));
        return;
      }
      remotes = candidates;
    }
    try {
      const { upstream, endpoint } = await connectUpstream(
        {
          remotes,
          tries: limits.connectTries,
          retryDelayMs: limits.connectRetryDelayMs,
          timeoutMs: clamp(decision.connectTimeoutMs ?? limits.connectTimeoutMs),
        },
        cancel,
        dialer(),
      );
      this.#cancel = undefined;
      this.#backend = formatEndpoint(endpoint);
      if (this.#phase !== 'connecting') {
        upstream.destroy();
        return;
      }
      this.#relay(upstream, decision, seen);
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
   * what it saw), send `reply` to the client, then splice both directions until both close.
   * The native relay takes both sockets when it can; otherwise Node streams relay them.
   */
  #relay(dialed: Socket | DialedUpstream, decision: RemoteDecision, seen: number): void {
    this.#phase = 'relaying';
    const client = this.#client;
    const header =
      decision.proxyProtocol === undefined
        ? undefined
        : proxyProtocolHeader(decision.proxyProtocol, {
            sourceAddress: this.#info.remoteAddress,
            sourcePort: this.#info.remotePort,
            destinationAddress: this.#info.localAddress,
            destinationPort: this.#info.localPort,
          });
    const replay = decision.data === undefined ? this.#buffer : decision.data + this.#buffer.slice(seen);
    this.#buffer = '';
    this.#inactivityMs = clamp(decision.inactivityTimeoutMs ?? this.#host.limits.inactivityTimeoutMs);
    if (this.#inactivityMs > 0) this.#arm('inactivity', this.#inactivityMs);
    if (this.#relayNatively(dialed, header, replay, decision.reply)) return;
    const upstream = dialed instanceof DialedUpstream ? dialed.relay.socketFor(dialed.id) : dialed;

    this.#upstream = upstream;
    this.#openSockets++;
    upstream.on('error', this.#upstreamError);
    upstream.on('close', this.#socketClosed);
    if (header !== undefined) upstream.write(header);
    if (replay.length > 0) upstream.write(replay, 'latin1');
    if (decision.reply !== undefined) client.write(decision.reply, 'latin1');

    client.off('data', this.#receive);
    client.off('end', this.#clientEnd);
    splice(client, upstream, this.#touch);
    splice(upstream, client, this.#touch);
    if (this.#clientEnded) upstream.end();
    client.resume();
    this.#touch();
  }

  /** Hands both sides to the native relay, with the bytes owed to each; false if it declines. */
  #relayNatively(upstream: Socket | DialedUpstream, header: Buffer | undefined, replay: string, reply: string | undefined): boolean {
    const relay = upstream instanceof DialedUpstream ? upstream.relay : NativeRelay.get();
    if (relay === undefined) return false;
    const client = this.#client;
    let toUpstream: Buffer | undefined = replay.length > 0 ? Buffer.from(replay, 'latin1') : undefined;
    if (header !== undefined) toUpstream = toUpstream === undefined ? header : Buffer.concat([header, toUpstream]);
    const toClient = reply === undefined ? undefined : Buffer.from(reply, 'latin1');
    const before = [client.bytesRead, client.bytesWritten] as const;
    const id =
      upstream instanceof DialedUpstream
        ? relay.adoptDialed(client, upstream.id, toUpstream, toClient, this)
          ? upstream.id
          : undefined
        : relay.adopt(client, upstream, toUpstream, toClient, this);
    if (id === undefined) return false;
    this.#native = { relay, id, before };
    // The relay holds the socket now: let Node's Socket object go (about 0.9 KiB per connection).
    this.#client = handedOver;
    return true;
  }

  /** The native relay ended: both sides closed, or one failed (`errno`). */
  relayClosed(bytesIn: number, bytesOut: number, errno: number): void {
    if (errno !== 0) this.#host.log.debug({ client: this.client, backend: this.#backend, errno }, 'relayed socket failed');
    this.#finish(bytesIn, bytesOut);
  }

  readonly #touch = (): void => {
    this.#lastActivity = Date.now();
  };

  readonly #upstreamError = (err: NodeJS.ErrnoException): void => {
    this.#host.log.debug({ client: this.client, backend: this.#backend, code: err.code }, 'backend socket error');
    abortPeer(this.#client, err);
  };

  readonly #clientError = (err: NodeJS.ErrnoException): void => {
    this.#host.log.debug({ client: this.client, code: err.code }, 'client socket error');
    if (this.#upstream !== undefined) abortPeer(this.#upstream, err);
  };

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
        const idle = this.#native === undefined ? Date.now() - this.#lastActivity : this.#native.relay.idleMs(this.#native.id);
        if (idle < this.#inactivityMs) this.#arm('inactivity', this.#inactivityMs - idle);
        else void this.#inactive();
        return;
      }
      case 'linger':
        this.#client.destroy();
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
    if (this.#native !== undefined) {
      this.#destroyNative();
      return;
    }
    this.#upstream?.destroy();
    this.#endClient();
  }

  /**
   * Closes a connection that will not be relayed: the router closed it, failed, or a limit
   * was hit. `reply` (from a close decision) is sent first.
   */
  #reject(reason: CloseReason, message: string, reply?: string): void {
    this.#reason = reason;
    const first = Buffer.from(this.#buffer.slice(0, 256), 'latin1');
    this.#host.stats.rejected(reason);
    this.#host.rejected({ time: new Date(), client: this.client, reason, message, firstBytes: first });
    this.#endClient(reply);
  }

  /** Sends FIN to the client (after `reply`), and gives it a moment to close its side. */
  #endClient(reply?: string): void {
    this.#phase = 'closing';
    this.#cancel?.cancel(new Error('connection closed'));
    this.#client.off('data', this.#receive);
    this.#client.resume();
    if (reply !== undefined) this.#client.end(reply, 'latin1');
    else this.#client.end();
    this.#arm('linger', lingerMs);
  }

  /** Forced close: both sides destroyed now (shutdown, kill switch). */
  destroy(reason: CloseReason): void {
    if (this.#phase === 'closed') return;
    this.#reason ??= reason;
    if (this.#native !== undefined) {
      this.#destroyNative();
      return;
    }
    // No phase may carry on (a pending router call or connect attempt sees this and stops).
    if (this.#phase !== 'relaying') this.#phase = 'closing';
    this.#cancel?.cancel(new Error('connection destroyed'));
    this.#upstream?.destroy();
    this.#client.destroy();
  }

  /**
   * Closes a natively relayed connection now (a closed-down relay calls nobody back). Not once
   * it has ended: its id may be another connection's by then (the inactivity hook awaits).
   */
  #destroyNative(): void {
    const native = this.#native;
    if (native === undefined || this.#phase === 'closed') return;
    const [bytesIn, bytesOut] = native.relay.destroy(native.id);
    this.#finish(bytesIn, bytesOut);
  }

  /** A socket closed; when both have, the connection is done. */
  readonly #socketClosed = (): void => {
    if (--this.#openSockets > 0) {
      // One side is fully gone; a relay cannot go on with the other.
      if (this.#upstream?.destroyed === true && !this.#client.destroyed && !this.#client.writableEnded) this.#client.end();
      if (this.#client.destroyed && this.#upstream !== undefined && !this.#upstream.destroyed) this.#upstream.destroy();
      return;
    }
    if (this.#phase === 'receiving' || this.#phase === 'connecting') {
      this.#reason ??= CloseReason.clientClosed;
      this.#cancel?.cancel(new Error('client closed'));
    }
    this.#finish();
  };

  /** finish: log the connection's one line and count it, with the bytes the native relay moved. */
  #finish(relayedIn = 0, relayedOut = 0): void {
    if (this.#phase === 'closed') return;
    this.#phase = 'closed';
    this.#disarm();
    const stats = this.#host.stats;
    const before = this.#native?.before ?? [this.#client.bytesRead, this.#client.bytesWritten];
    const bytesIn = before[0] + relayedIn;
    const bytesOut = before[1] + relayedOut;
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

/**
 * How backends are connected: by the native relay, when it runs and the address is an IP (a
 * router's host name, in single-router mode, goes through Node's resolver and a net.Socket,
 * and so does an IPv6 address with a zone).
 */
function dialer(): Dial<Socket | DialedUpstream> {
  if (chosenDialer !== undefined) return chosenDialer;
  const relay = NativeRelay.get();
  chosenDialer =
    relay === undefined
      ? dialSocket
      : (endpoint, timeoutMs, cancel) => (dialsNatively(endpoint.host) ? relay.dial(endpoint, timeoutMs, cancel) : dialSocket(endpoint, timeoutMs, cancel));
  return chosenDialer;
}

let chosenDialer: Dial<Socket | DialedUpstream> | undefined;

/** An IP address the relay's inet_pton takes: not a host name, and no IPv6 zone ("fe80::1%eth0"). */
function dialsNatively(host: string): boolean {
  return isIP(host) !== 0 && !host.includes('%');
}

/**
 * Stands in for the client socket once the native relay holds it. Nothing uses it (every path
 * of a natively relayed connection checks `#native` first); it lets the real one be collected.
 */
const handedOver = new Socket();
