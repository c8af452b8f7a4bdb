/**
 * The sandbox wire: frames survive any split of the byte stream, and the proxy's paced writer
 * keeps one batch in flight per worker (the next leaves once the worker has answered), while
 * the worker answers every batch it reads, with an ack when it has nothing else.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { ackId, decodeRequest, decodeResponse, encodeRequest, encodeResponse, FrameReader, FrameWriter, Op, Status } from '../src/sandbox/wire.js';

describe('sandbox wire', () => {
  let server: Server;
  let near: Socket;
  let far: Socket;
  before(async () => {
    server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const address = server.address();
    assert.ok(address !== null && typeof address === 'object');
    const accepted = once(server, 'connection') as Promise<[Socket]>;
    near = connect(address.port, '127.0.0.1');
    [far] = await accepted;
  });
  after(() => {
    near.destroy();
    far.destroy();
    server.close();
  });

  /** Reads frame bodies arriving on `socket` until `n` have come. */
  async function frames(socket: Socket, n: number): Promise<Buffer[]> {
    const reader = new FrameReader();
    const got: Buffer[] = [];
    while (got.length < n) {
      const [chunk] = (await once(socket, 'data')) as [Buffer];
      reader.push(chunk, (body) => got.push(Buffer.from(body)));
    }
    return got;
  }

  it('reads frames back whole however the stream is split', () => {
    const conn = { tenant: 't', remoteAddress: '127.0.0.1', remotePort: 40000, localAddress: '::ffff:127.0.0.1', localPort: 9418 };
    const sent = [encodeRequest(1, Op.route, 7, conn, { text: 'GET / HTTP/1.1\r\n\r\n' }), encodeResponse(2, Status.ok, '{"d":null}'), encodeRequest(3, Op.unload, 9)];
    const stream = Buffer.concat(sent);
    for (let cut = 0; cut <= stream.length; cut++) {
      const reader = new FrameReader();
      const bodies: Buffer[] = [];
      reader.push(stream.subarray(0, cut), (b) => bodies.push(Buffer.from(b)));
      reader.push(stream.subarray(cut), (b) => bodies.push(Buffer.from(b)));
      assert.equal(bodies.length, 3, `cut at ${cut}`);
      const first = decodeRequest(bodies[0]!);
      assert.deepEqual([first.id, first.op, first.slot], [1, Op.route, 7]);
      assert.deepEqual(decodeResponse(bodies[1]!), { id: 2, status: Status.ok, payload: '{"d":null}' });
      assert.equal(decodeRequest(bodies[2]!).op, Op.unload);
    }
  });

  it('refuses a frame over the size limit', () => {
    const header = Buffer.alloc(4);
    header.writeUInt32LE(64 * 1024 * 1024);
    assert.throws(() => new FrameReader().push(header, () => undefined), /over the limit/);
  });

  it('paced: one batch in flight; what follows leaves once the peer has answered', async () => {
    const writer = new FrameWriter(near, { paced: true });
    const a = encodeRequest(1, Op.stats, 0);
    const b = encodeRequest(2, Op.stats, 0);
    const c = encodeRequest(3, Op.stats, 0);
    writer.write(a);
    assert.equal(near.bytesWritten, 0, 'a frame waits for the end of the turn');
    await nextTurn();
    assert.equal(near.bytesWritten, a.length, 'the first batch leaves at once');
    writer.write(b);
    writer.write(c);
    for (let i = 0; i < 5; i++) await nextTurn();
    assert.equal(near.bytesWritten, a.length, 'no second batch before an answer');
    assert.equal((await frames(far, 1)).length, 1);

    writer.answered();
    await nextTurn();
    assert.equal(near.bytesWritten, a.length + b.length + c.length, 'the frames queued meanwhile leave together');
    const [first, second] = await frames(far, 2);
    assert.deepEqual([decodeRequest(first!).id, decodeRequest(second!).id], [2, 3]);
    writer.answered(); // nothing queued: nothing is written
    await nextTurn();
    assert.equal(near.bytesWritten, a.length + b.length + c.length);
  });

  it('unpaced: a batch read is answered at the end of the turn, with an ack when nothing else', async () => {
    const writer = new FrameWriter(far);
    writer.owe();
    const [ack] = await frames(near, 1);
    assert.deepEqual(decodeResponse(ack!), { id: ackId, status: Status.ok, payload: '' });

    // Answers written in the same turn stand in for the ack.
    const before = far.bytesWritten;
    const x = encodeResponse(5, Status.ok, 'x');
    const y = encodeResponse(6, Status.ok, 'y');
    writer.owe();
    writer.write(x);
    writer.write(y);
    const answers = (await frames(near, 2)).map(decodeResponse);
    assert.deepEqual(
      answers.map((r) => r.id),
      [5, 6],
    );
    assert.equal(far.bytesWritten - before, x.length + y.length, 'no ack besides the answers');
  });
});
