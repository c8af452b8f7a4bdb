/**
 * The buffer cap with real clients, against switchyard as a separate process, on both data
 * paths (native, and Node with SWITCHYARD_RELAY=node): an upload larger than the cap is held
 * back by TCP while the router decides and then reaches the backend byte for byte; replies a
 * client does not read are bounded, and such a client ends at the decision deadline.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { routerSource, rss, runCommand, sampleRss, startCliProxy, within, type CliProcess } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;


/** CPU seconds (user + system) a process has used; /proc counts in ticks of 1/100 s. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}


/** routers/http-host.js, taking 15 ms of CPU per call: the client's bytes keep coming meanwhile. */
function slowHttpHost(backendPort: number): string {
  return routerSource('http-host.js', {
    "'127.0.0.1:8081'": `'127.0.0.1:${backendPort}'`,
    'proxy((data) => {': 'proxy((data) => {\n  const until = Date.now() + 15; while (Date.now() < until) {}',
  });
}

/** An HTTP backend that answers each request with the length and sha256 of its body. */
async function startDigestBackend(): Promise<{ port: number; server: Server }> {
  const server = createServer((req, res) => {
    const hash = createHash('sha256');
    let bytes = 0;
    req.on('data', (b: Buffer) => {
      bytes += b.length;
      hash.update(b);
    });
    req.on('end', () => res.end(`${bytes} ${hash.digest('hex')}`));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as { port: number }).port, server };
}

/** The records of a message the proxy has logged so far. */
function logged(proxy: CliProcess, msg: string): Record<string, unknown>[] {
  return proxy.log.records.filter((r) => r.msg === msg);
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Sends an HTTP request with `body` in one write (header and body together); resolves with the response. */
function rawPost(port: number, body: Buffer): Promise<string> {
  const head = `POST /upload HTTP/1.1\r\nHost: alpha.example\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
  const socket = connect({ port, host: '127.0.0.1' });
  const chunks: Buffer[] = [];
  socket.on('data', (b: Buffer) => chunks.push(b));
  socket.write(Buffer.concat([Buffer.from(head), body]));
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.once('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
  });
}

/**
 * `uploadRssMiB`: how much the proxy's RSS may grow while 16 clients upload 8 MiB each (128 MiB
 * in all). The native path holds at most 64 KiB per connection before a decision and a pipe or
 * a 64 KiB buffer per direction after it. The Node path's streams pass every chunk through the
 * JavaScript heap as a Buffer: bounded by backpressure, but garbage until collected.
 */
const paths = [
  { name: 'native data path', env: {}, uploadRssMiB: 32 },
  { name: 'Node data path', env: { SWITCHYARD_RELAY: 'node' }, uploadRssMiB: 96 },
] as const;

for (const path of paths) {
  describe(`uploads larger than the buffer cap (${path.name})`, { timeout: 180_000 }, () => {
    let backend: { port: number; server: Server };
    let proxy: CliProcess & { port: number };

    before(async () => {
      backend = await startDigestBackend();
      // A time limit no busy test machine reaches: these tests are about buffering, not time.
      proxy = await startCliProxy(slowHttpHost(backend.port), { env: path.env, args: ['--router-timeout', '2000'] });
    });
    after(async () => {
      proxy.child.kill('SIGTERM');
      await within(proxy.exited, 15_000, 'proxy exit');
      backend.server.close();
    });

    it('curl POSTs of 64 KiB to 8 MiB (no Expect: 100-continue) all reach the backend, byte for byte', async () => {
      for (const size of [64 * KiB, 100 * KiB, MiB, 8 * MiB]) {
        const body = randomBytes(size);
        const file = join(tmpdir(), `switchyard-upload-${process.pid}-${size}`);
        writeFileSync(file, body);
        const result = await runCommand(
          'curl',
          ['-sS', '--max-time', '60', '-H', 'Expect:', '-H', 'Host: alpha.example', '--data-binary', `@${file}`, `http://127.0.0.1:${proxy.port}/upload`],
          { timeoutMs: 70_000 },
        );
        assert.equal(result.code, 0, `curl ${size} bytes: ${result.stderr}`);
        assert.equal(result.stdout, `${size} ${sha(body)}`, `${size} bytes`);
      }
      assert.equal(logged(proxy, 'connection rejected').length, 0);
    });

    it('16 clients sending a header and 8 MiB in one write each: every byte arrives, and the proxy holds little', async () => {
      const body = randomBytes(8 * MiB);
      const expected = `HTTP/1.1 200 OK`;
      const baseline = rss(proxy.pid);
      const sampler = sampleRss(proxy.pid);
      const answers = await within(Promise.all(Array.from({ length: 16 }, () => rawPost(proxy.port, body))), 120_000, '16 uploads');
      sampler.stop();
      const growth = sampler.max - baseline;
      console.log(`${path.name}: 16 × 8 MiB uploads, proxy RSS ${(baseline / MiB).toFixed(0)} MiB at rest, max ${(sampler.max / MiB).toFixed(0)} MiB (+${(growth / MiB).toFixed(1)} MiB)`);
      for (const answer of answers) {
        assert.ok(answer.startsWith(expected), answer.slice(0, 200));
        assert.ok(answer.endsWith(`\r\n\r\n${body.length} ${sha(body)}`), answer.slice(-200));
      }
      assert.equal(logged(proxy, 'connection rejected').length, 0);
      assert.ok(growth < path.uploadRssMiB * MiB, `proxy RSS grew by ${(growth / MiB).toFixed(1)} MiB (limit ${path.uploadRssMiB})`);
    });
  });

  describe(`bytes owed to clients that do not read (${path.name})`, { timeout: 120_000 }, () => {
    let proxy: CliProcess & { port: number };
    const clients: Socket[] = [];

    afterEach(async () => {
      for (const c of clients) c.destroy();
      proxy.child.kill('SIGTERM');
      await within(proxy.exited, 15_000, 'proxy exit');
    });

    it('32 trickling clients that never read a 64 KiB reply: the proxy stops reading them, holds little, and ends them at the decision deadline', async () => {
      const deadlineMs = 8000;
      proxy = await startCliProxy(`proxy(() => ({ noop: true, reply: 'R'.repeat(65536) }));`, {
        env: path.env,
        args: ['--decision-timeout', String(deadlineMs), '--router-timeout', '2000'],
      });
      const baseline = rss(proxy.pid);
      const cpuBefore = cpuSeconds(proxy.pid);
      const started = Date.now();
      const sampler = sampleRss(proxy.pid);
      // Halfway to the deadline the kernel's socket buffers are long full (about 4 MiB of
      // replies a client, taken in a second or two): from then on nothing should move.
      let half: { rss: number; cpu: number } | undefined;
      const halfway = setTimeout(() => {
        half = { rss: rss(proxy.pid), cpu: cpuSeconds(proxy.pid) };
      }, deadlineMs / 2);
      for (let i = 0; i < 32; i++) {
        const socket = connect({ port: proxy.port, host: '127.0.0.1' });
        socket.pause(); // never reads: the replies back up
        socket.on('error', () => undefined);
        const trickle = setInterval(() => {
          if (socket.writable) socket.write('.');
        }, 20);
        socket.once('close', () => clearInterval(trickle));
        clients.push(socket);
      }
      const rejected = await within(
        proxy.log.waitFor((r) => r.msg === 'connection rejected' && logged(proxy, 'connection rejected').length >= 32, 20_000),
        25_000,
        'every client rejected',
      );
      assert.ok(rejected);
      const closed = await within(
        proxy.log.waitFor((r) => r.msg === 'connection closed' && logged(proxy, 'connection closed').length >= 32, 20_000),
        25_000,
        'every client closed',
      );
      assert.ok(closed);
      sampler.stop();
      clearTimeout(halfway);
      assert.ok(half, 'sampled halfway');
      const seconds = (Date.now() - started) / 1000;
      const cpu = cpuSeconds(proxy.pid) - cpuBefore;
      const lateCpu = cpuSeconds(proxy.pid) - half.cpu;
      const growth = sampler.max - baseline;
      console.log(
        `${path.name}: 32 clients owed 64 KiB replies, proxy RSS ${(baseline / MiB).toFixed(0)} MiB at rest, ${(half.rss / MiB).toFixed(0)} MiB halfway, max ${(sampler.max / MiB).toFixed(0)} MiB (+${(growth / MiB).toFixed(1)} MiB); proxy CPU ${cpu.toFixed(2)} s in ${seconds.toFixed(1)} s, ${lateCpu.toFixed(2)} s of it after halfway`,
      );
      for (const r of logged(proxy, 'connection rejected')) assert.equal(r.reason, 'decision_timeout');
      for (const r of logged(proxy, 'connection closed')) {
        assert.equal(r.reason, 'decision_timeout');
        assert.ok((r.durationMs as number) >= deadlineMs - 2, `closed after ${String(r.durationMs)} ms`);
      }
      // What a client is owed is bounded (the cap and one reply); before that, the replies that
      // filled the kernel's buffers (about 130 MiB in all) passed through as garbage. Once the
      // clients are held back, the proxy does next to nothing for them.
      assert.ok(growth < 192 * MiB, `proxy RSS grew by ${(growth / MiB).toFixed(1)} MiB`);
      assert.ok(lateCpu < 1, `proxy CPU ${lateCpu.toFixed(2)} s after halfway`);
    });
  });
}
