/**
 * Leak checks: a few thousand connections that end every way a connection can — cleanly,
 * half-closed, reset by the client or by the backend mid-relay, abandoned before a decision,
 * silent, refused by the router, over the connection limit — and afterwards the process holds
 * the file descriptors it held before, and its heap and its worker's memory are where they were.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { ProcessRouter } from '../src/sandbox/process-router.js';
import { dial, startProxy, startServer, until } from './helpers.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const openFds = (): number => readdirSync('/proc/self/fd').length;
const rssMb = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'latin1'))![1]) / 1024;

type Ending = 'clean' | 'half-close' | 'client-reset' | 'backend-reset' | 'abandon' | 'silent' | 'refused';
const endings: Ending[] = ['clean', 'half-close', 'client-reset', 'backend-reset', 'abandon', 'silent', 'refused'];

/** Runs one client to its ending; resolves once its socket is closed. */
async function client(port: number, ending: Ending): Promise<void> {
  const s: Socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  s.on('error', () => undefined);
  const closed = new Promise((resolve) => s.once('close', resolve));
  try {
    await exchangeAndEnd(s, ending);
  } catch {
    // reset by the peer: over the connection limit, or the backend's reset passed on
    s.destroy();
  }
  await closed;
}

async function exchangeAndEnd(s: Socket, ending: Ending): Promise<void> {
  await once(s, 'connect');
  switch (ending) {
    case 'clean':
      s.write('echo');
      await firstChunk(s);
      s.end();
      s.on('end', () => s.destroy());
      s.resume();
      break;
    case 'half-close':
      s.end('echo');
      s.resume();
      break;
    case 'client-reset':
      s.write('echo');
      await firstChunk(s);
      s.resetAndDestroy();
      break;
    case 'backend-reset':
      s.write('reset');
      s.on('end', () => s.end());
      s.resume();
      break;
    case 'abandon':
      s.write('wait');
      s.destroy();
      break;
    case 'silent':
      s.destroy();
      break;
    case 'refused':
      s.write('refuse');
      s.on('end', () => s.end());
      s.resume();
      break;
  }
}

/** Resolves with the first chunk; rejects when the proxy closes first (over the connection limit). */
function firstChunk(s: Socket): Promise<unknown> {
  return Promise.race([
    once(s, 'data'),
    once(s, 'end').then(() => {
      throw new Error('closed before any data');
    }),
  ]);
}

/** A client over the connection limit: accepted and closed by the proxy before it says anything. */
async function refusedAtOnce(port: number): Promise<void> {
  const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  s.on('error', () => undefined);
  s.on('end', () => s.end());
  s.resume();
  await once(s, 'close');
}

describe('leaks', () => {
  it('holds no file descriptors or memory after thousands of connections with resets', async () => {
    const echo = await startServer((s) => s.pipe(s));
    const resetter = await startServer((s) => s.once('data', () => s.resetAndDestroy()));
    const proxy = await startProxy(
      `proxy((data) => {
        if (data === 'echo') return { remote: '127.0.0.1:${echo.port}' };
        if (data === 'reset') return { remote: '127.0.0.1:${resetter.port}' };
        if (data === 'refuse') return { close: 'no' };
        return { noop: true };
      });`,
      { limits: { maxConnections: 40 } },
    );
    try {
      const round = async (n: number): Promise<void> => {
        for (let i = 0; i < n; i += 50) {
          await Promise.all(Array.from({ length: 50 }, (_, j) => client(proxy.port, endings[(i + j) % endings.length]!)));
        }
        await until(() => proxy.listener.connectionCount === 0, 'every connection finished');
        echo.accepted.length = 0;
        resetter.accepted.length = 0;
      };
      await round(200); // warm up: lazily opened descriptors and caches
      gc();
      const fds = openFds();
      const heap = process.memoryUsage().heapUsed;
      const worker = (proxy.router as ProcessRouter).pid!;
      const workerRss = rssMb(worker);

      // Fill the connection limit with clients that wait, so the next ones are refused at once.
      const held = await Promise.all(Array.from({ length: 40 }, () => dial(proxy.port)));
      for (const h of held) h.write('wait');
      await until(() => proxy.listener.connectionCount === 40, '40 connections open');
      await Promise.all(Array.from({ length: 20 }, () => refusedAtOnce(proxy.port)));
      for (const h of held) h.destroy();
      await round(3000);
      gc();
      const stats = proxy.listener.stats;
      assert.ok(stats.connections >= 3200, `${stats.connections} connections`);
      assert.ok((stats.rejections.get('connection_limit') ?? 0) >= 20, 'clients over the limit of 40 were refused');
      assert.equal(stats.active, 0);
      assert.ok(openFds() <= fds + 2, `file descriptors: ${fds} before, ${openFds()} after`);
      const grown = (process.memoryUsage().heapUsed - heap) / 1024 / 1024;
      assert.ok(grown < 16, `heap grew by ${grown.toFixed(1)} MiB`);
      assert.equal((proxy.router as ProcessRouter).pid, worker, 'the worker was never replaced');
      const workerGrown = rssMb(worker) - workerRss;
      assert.ok(workerGrown < 64, `worker RSS grew by ${workerGrown.toFixed(1)} MiB`);
    } finally {
      await proxy.close();
      await echo.close();
      await resetter.close();
    }
  });
});
