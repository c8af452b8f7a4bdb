/**
 * sd_notify without libsystemd: notifications reach a real AF_UNIX datagram socket, bound at a
 * path or an abstract name as systemd binds its own, with the sender's pid as the kernel
 * reports it (SO_PASSCRED: how systemd tells which process spoke). Node cannot receive unix
 * datagrams, so the receiver is a few lines of Python (python3 is there wherever node-gyp
 * builds the addons).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { mainPid, notify, NotifyError, ready, reloading, status, stopping } from '../src/node/notify.js';
import { removeDir, within } from './helpers.js';

/** Binds argv[1] ('@' for an abstract name), says "bound", then prints each datagram and its sender's pid as a JSON line. */
const receiverSource = `
import json, socket, struct, sys
address = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind('\\0' + address[1:] if address.startswith('@') else address)
print('bound', flush=True)
while True:
    data, ancillary, flags, _ = s.recvmsg(65536, socket.CMSG_SPACE(12))
    pid = None
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack('iII', value[:12])[0]
    print(json.dumps({'state': data.decode('utf-8'), 'pid': pid, 'truncated': bool(flags & socket.MSG_TRUNC)}), flush=True)
`;

interface Received {
  state: string;
  pid: number;
  truncated: boolean;
}

class Receiver {
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #lines: AsyncIterator<string>;
  readonly #input: Interface;
  private constructor(child: ChildProcessWithoutNullStreams) {
    this.#child = child;
    this.#input = createInterface({ input: child.stdout });
    this.#lines = this.#input[Symbol.asyncIterator]();
  }

  static async start(address: string): Promise<Receiver> {
    const child = spawn('python3', ['-c', receiverSource, address]);
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const receiver = new Receiver(child);
    const first = await within(receiver.#next(), 10_000, `the receiver binds ${address} (${stderr})`);
    assert.equal(first, 'bound', stderr);
    return receiver;
  }

  async #next(): Promise<string> {
    const { value, done } = await this.#lines.next();
    if (done === true) throw new Error('the receiver exited');
    return value;
  }

  /** The next datagram received. */
  async next(): Promise<Received> {
    return JSON.parse(await within(this.#next(), 10_000, 'a notification')) as Received;
  }

  async stop(): Promise<void> {
    this.#input.close();
    if (this.#child.exitCode === null && this.#child.signalCode === null) {
      const exited = once(this.#child, 'exit');
      this.#child.kill();
      await exited;
    }
  }
}

const dir = mkdtempSync(join(tmpdir(), 'switchyard-notify-'));
after(() => removeDir(dir));
const saved = process.env.NOTIFY_SOCKET;
after(() => {
  if (saved === undefined) delete process.env.NOTIFY_SOCKET;
  else process.env.NOTIFY_SOCKET = saved;
});

describe('notify', () => {
  it('does nothing without $NOTIFY_SOCKET', () => {
    delete process.env.NOTIFY_SOCKET;
    assert.equal(notify(ready()), false);
    process.env.NOTIFY_SOCKET = '';
    assert.equal(notify(ready()), false);
  });

  it('sends to a socket bound at a path, from this process', async (t) => {
    const path = join(dir, 'notify.sock');
    const receiver = await Receiver.start(path);
    t.after(() => receiver.stop());
    process.env.NOTIFY_SOCKET = path;
    assert.equal(notify(ready()), true);
    assert.deepEqual(await receiver.next(), { state: 'READY=1', pid: process.pid, truncated: false });
    assert.equal(notify(`${stopping()}\n${status('draining 3 connections\nof 5')}`), true);
    assert.deepEqual(await receiver.next(), { state: 'STOPPING=1\nSTATUS=draining 3 connections of 5', pid: process.pid, truncated: false });
  });

  it('sends to an abstract socket name (@…), as systemd names its own', async (t) => {
    const address = `@switchyard-notify-test/${process.pid}/${Date.now()}`;
    const receiver = await Receiver.start(address);
    t.after(() => receiver.stop());
    process.env.NOTIFY_SOCKET = address;
    const before = process.hrtime.bigint() / 1000n;
    assert.equal(notify(reloading()), true);
    const afterwards = process.hrtime.bigint() / 1000n;
    const got = await receiver.next();
    assert.equal(got.pid, process.pid);
    const m = /^RELOADING=1\nMONOTONIC_USEC=(\d+)$/.exec(got.state);
    assert.ok(m !== null, got.state);
    const usec = BigInt(m[1]!);
    assert.ok(usec >= before && usec <= afterwards, 'MONOTONIC_USEC is CLOCK_MONOTONIC now');
  });

  it('a new master (another process, inheriting $NOTIFY_SOCKET) announces itself with MAINPID', async (t) => {
    const path = join(dir, 'upgrade.sock');
    const receiver = await Receiver.start(path);
    t.after(() => receiver.stop());
    const module = fileURLToPath(new URL('../src/node/notify.js', import.meta.url));
    const source = `const n = await import(${JSON.stringify(module)}); n.notify(n.mainPid(process.pid) + '\\n' + n.ready());`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', source], { env: { ...process.env, NOTIFY_SOCKET: path }, stdio: 'inherit' });
    const [code] = (await once(child, 'exit')) as [number | null];
    assert.equal(code, 0);
    assert.deepEqual(await receiver.next(), { state: `MAINPID=${child.pid}\nREADY=1`, pid: child.pid, truncated: false });
  });

  it('sends a notification of 4095 bytes whole, refuses a longer one, a NUL and a bad pid', async (t) => {
    const path = join(dir, 'long.sock');
    const receiver = await Receiver.start(path);
    t.after(() => receiver.stop());
    process.env.NOTIFY_SOCKET = path;
    const long = status('x'.repeat(4095 - 'STATUS='.length));
    assert.equal(notify(long), true);
    assert.deepEqual(await receiver.next(), { state: long, pid: process.pid, truncated: false });
    assert.throws(() => notify(`${long}y`), (err: unknown) => err instanceof NotifyError && err.code === 'ERR_NOTIFY');
    assert.throws(() => notify('READY=1\0'), NotifyError);
    assert.throws(() => notify(''), NotifyError);
    assert.throws(() => mainPid(0), NotifyError);
    // Nothing more arrived: the next datagram is this one.
    notify(ready());
    assert.equal((await receiver.next()).state, 'READY=1');
  });

  it('throws NotifyError with the errno when nothing listens, or for an address it cannot use', () => {
    const cases: [string, string][] = [
      [join(dir, 'nobody-listens.sock'), 'ENOENT'],
      [`@switchyard-notify-test/nobody/${process.pid}`, 'ECONNREFUSED'],
      ['vsock:2:1234', 'EAFNOSUPPORT'],
      [`/${'x'.repeat(200)}`, 'ENAMETOOLONG'],
    ];
    for (const [address, errno] of cases) {
      process.env.NOTIFY_SOCKET = address;
      assert.throws(
        () => notify(ready()),
        (err: unknown) => err instanceof NotifyError && err.code === 'ERR_NOTIFY' && (err.cause as NodeJS.ErrnoException).code === errno,
        `${address}: ${errno}`,
      );
    }
  });
});
