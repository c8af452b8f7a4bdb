/**
 * The sandbox wire format between the proxy and its worker processes: length-prefixed binary
 * frames on one socket pair, written in batches (see FrameWriter). Small and fixed, so a
 * decision costs one short frame each way.
 *
 *   request:  u32 length | u32 id | u8 op | u32 slot | op fields…
 *   response: u32 length | u32 id | u8 status | utf-8 payload
 *
 * Op fields: load: the IsolateSpec as JSON; route: conn, then the buffer as latin1 bytes;
 * accept: conn; hook: conn, u8 which, the remote as latin1; unload, evacuate, stats: nothing
 * (stats answers JSON { isolates, heapBytes }). unload lets the tenant's queued calls run first;
 * evacuate answers them `moved` at once (the tenant moved to another worker). A call is
 * answered `started` when it leaves the worker's queue and runs, then once more with its result.
 * conn: u16 remotePort | u16 localPort | u8 n | remoteAddress | u8 n | localAddress.
 */
import type { ConnInfo } from './router.js';

export const Op = { load: 1, unload: 2, route: 3, accept: 4, hook: 5, stats: 6, evacuate: 7 } as const;
export type Op = (typeof Op)[keyof typeof Op];

export const Status = {
  /** payload: the prelude's envelope text */
  ok: 0,
  /** payload: JSON { reason, message } of a RouterError */
  routerError: 1,
  /** payload: JSON { code, message, line?, column? } of a RouterLoadError */
  loadError: 2,
  /** answer to a load: JSON { envelope, heapBytes } (the isolate's heap once loaded) */
  loaded: 3,
  /** a call that had not started when its tenant was evacuated: to be sent where it went */
  moved: 4,
  /**
   * not an answer: the call has started running (the tenant's code is about to run); payload:
   * how, `sync` (on the worker's thread), `async` or `load`. The call's answer follows with the
   * same id. What the pool blames a crash or a hang on.
   */
  started: 5,
} as const;
export type Status = (typeof Status)[keyof typeof Status];

export const Hook = { connect: 0, inactivity: 1 } as const;

const maxFrame = 16 * 1024 * 1024;

export function encodeRequest(id: number, op: Op, slot: number, conn?: ConnInfo, extra?: { which?: number; text?: string; json?: string }): Buffer {
  const ra = conn?.remoteAddress ?? '';
  const la = conn?.localAddress ?? '';
  const connBytes = conn === undefined ? 0 : 6 + ra.length + la.length;
  const whichBytes = extra?.which === undefined ? 0 : 1;
  const textBytes = extra?.text?.length ?? 0;
  const jsonBytes = extra?.json === undefined ? 0 : Buffer.byteLength(extra.json);
  const body = 9 + connBytes + whichBytes + textBytes + jsonBytes;
  const frame = Buffer.allocUnsafe(4 + body);
  frame.writeUInt32LE(body, 0);
  frame.writeUInt32LE(id, 4);
  frame[8] = op;
  frame.writeUInt32LE(slot, 9);
  let at = 13;
  if (conn !== undefined) {
    frame.writeUInt16LE(conn.remotePort, at);
    frame.writeUInt16LE(conn.localPort, at + 2);
    frame[at + 4] = ra.length;
    frame.write(ra, at + 5, 'latin1');
    at += 5 + ra.length;
    frame[at] = la.length;
    frame.write(la, at + 1, 'latin1');
    at += 1 + la.length;
  }
  if (extra?.which !== undefined) frame[at++] = extra.which;
  if (extra?.text !== undefined) at += frame.write(extra.text, at, 'latin1');
  if (extra?.json !== undefined) frame.write(extra.json, at, 'utf8');
  return frame;
}

export interface Request {
  readonly id: number;
  readonly op: number;
  readonly slot: number;
  readonly body: Buffer;
  /** Where the op fields start in `body`. */
  readonly at: number;
}

export function decodeRequest(body: Buffer): Request {
  return { id: body.readUInt32LE(0), op: body[4]!, slot: body.readUInt32LE(5), body, at: 9 };
}

/** Reads a conn at `at`; returns it with the offset after it. */
export function decodeConn(body: Buffer, at: number, tenant: string): [ConnInfo, number] {
  const remotePort = body.readUInt16LE(at);
  const localPort = body.readUInt16LE(at + 2);
  const raLen = body[at + 4]!;
  const remoteAddress = body.toString('latin1', at + 5, at + 5 + raLen);
  let p = at + 5 + raLen;
  const laLen = body[p]!;
  const localAddress = body.toString('latin1', p + 1, p + 1 + laLen);
  p += 1 + laLen;
  return [{ tenant, remoteAddress, remotePort, localAddress, localPort }, p];
}

export function encodeResponse(id: number, status: Status, payload: string): Buffer {
  const bytes = Buffer.byteLength(payload);
  const frame = Buffer.allocUnsafe(9 + bytes);
  frame.writeUInt32LE(5 + bytes, 0);
  frame.writeUInt32LE(id, 4);
  frame[8] = status;
  frame.write(payload, 9, 'utf8');
  return frame;
}

export interface Response {
  readonly id: number;
  readonly status: number;
  readonly payload: string;
}

export function decodeResponse(body: Buffer): Response {
  return { id: body.readUInt32LE(0), status: body[4]!, payload: body.toString('utf8', 5) };
}

/** Splits a byte stream into frame bodies. */
export class FrameReader {
  #pending: Buffer | undefined;

  push(chunk: Buffer, onFrame: (body: Buffer) => void): void {
    const buf = this.#pending === undefined ? chunk : Buffer.concat([this.#pending, chunk]);
    this.#pending = undefined;
    let at = 0;
    while (buf.length - at >= 4) {
      const length = buf.readUInt32LE(at);
      if (length > maxFrame) throw new Error(`sandbox frame of ${length} bytes is over the limit`);
      if (buf.length - at - 4 < length) break;
      onFrame(buf.subarray(at + 4, at + 4 + length));
      at += 4 + length;
    }
    if (at < buf.length) this.#pending = Buffer.from(buf.subarray(at));
  }
}

/** The id of an empty answer: a worker read a batch that left it nothing to answer at once. */
export const ackId = 0;

/**
 * Writes frames in batches: everything written in one turn of the event loop leaves in one
 * write, once the turn's I/O callbacks have run.
 *
 * Paced (the proxy's side): after a batch is sent, what follows waits until the worker answers
 * anything (it answers every batch it reads, with an ack when no call finished at once). So
 * the worker wakes once per batch rather than once per decision, and the busier the proxy,
 * the larger the batches; when idle, a decision still leaves at the end of its turn.
 */
export class FrameWriter {
  readonly #stream: NodeJS.WritableStream;
  readonly #paced: boolean;
  #frames: Buffer[] = [];
  /** How many of #frames answer something (not news such as `started`). */
  #answers = 0;
  #scheduled = false;
  /** Paced: a batch went out and the peer has not answered since. */
  #awaiting = false;
  /** Unpaced: the peer sent a batch; answer it at the end of the turn, if only with an ack. */
  #owed = false;

  constructor(stream: NodeJS.WritableStream, options: { paced?: boolean } = {}) {
    this.#stream = stream;
    this.#paced = options.paced === true;
  }

  /**
   * Queues a frame. `news` (a `started` frame) tells the peer something without answering its
   * batch: the batch is still owed an answer, and a paced peer does not count it as one.
   */
  write(frame: Buffer, options: { news?: boolean } = {}): void {
    this.#frames.push(frame);
    if (options.news !== true) this.#answers++;
    this.#schedule();
  }

  /** Paced: the peer answered; what queued meanwhile leaves at the end of this turn. */
  answered(): void {
    this.#awaiting = false;
    if (this.#frames.length > 0) this.#schedule();
  }

  /**
   * Unpaced: writes what is queued now, in this turn: before the worker's thread runs code that
   * may not give it back (a synchronous call), so that the peer knows what it started.
   */
  flushNow(): void {
    if (this.#frames.length === 0) return;
    if (this.#answers > 0) this.#owed = false;
    this.#send();
  }

  /** The peer sent a batch: something goes back at the end of this turn. */
  owe(): void {
    this.#owed = true;
    this.#schedule();
  }

  #schedule(): void {
    if (this.#scheduled || this.#awaiting) return;
    this.#scheduled = true;
    setImmediate(this.#flush);
  }

  readonly #flush = (): void => {
    this.#scheduled = false;
    if (this.#answers === 0 && this.#owed) {
      this.#frames.push(encodeResponse(ackId, Status.ok, ''));
      this.#answers++;
    }
    this.#owed = false;
    if (this.#frames.length === 0) return;
    this.#send();
    if (this.#paced) this.#awaiting = true;
  };

  #send(): void {
    const frames = this.#frames;
    this.#frames = [];
    this.#answers = 0;
    this.#stream.write(frames.length === 1 ? frames[0]! : Buffer.concat(frames));
  }
}
