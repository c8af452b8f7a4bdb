/**
 * The admin API's connections, as an attacker on its address would hold them: connections that
 * send nothing, headers or a body that trickle, and more connections than the cap. Each goes
 * within its deadline, and the operator is answered throughout.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eventually, freePortRange, httpCall, removeDir, startCliServe, startTestHosting, within } from './helpers.js';

/** Opens a raw connection to the admin port; resolves once connected. */
type Held = Socket & { closedAt?: number; received: string; done: Promise<void> };

async function open(port: number): Promise<Held> {
  const socket = connect({ host: '127.0.0.1', port }) as Held;
  socket.received = '';
  // 'close' whatever came before it: a reset after the answer is how some of these end.
  socket.done = new Promise((resolve) => socket.once('close', () => resolve()));
  socket.setEncoding('latin1');
  socket.on('data', (s: string) => {
    socket.received += s;
  });
  socket.on('error', () => undefined);
  socket.once('close', () => {
    socket.closedAt = performance.now();
  });
  await once(socket, 'connect');
  return socket;
}

function closed(socket: Held): Promise<void> {
  return socket.done;
}

describe('admin API connections', { concurrency: true }, () => {
  it('closes connections that send nothing within the 10 s headers deadline, and answers the operator meanwhile', { timeout: 60_000 }, async () => {
    // The service as operators run it: its own process, on its defaults.
    const dataDir = mkdtempSync(join(tmpdir(), 'switchyard-admin-conns-'));
    const [lo, hi] = await freePortRange(2);
    const token = `admin-conns-${'k'.repeat(32)}`;
    const proc = await startCliServe(['--data', dataDir, '--admin', '127.0.0.1:0', '--ports', `${lo}-${hi}`, '--bind', '127.0.0.1', '--sandbox-workers', '1'], { SWITCHYARD_ADMIN_TOKEN: token });
    const h = { adminPort: proc.adminPort, operatorToken: token };
    const sockets: Held[] = [];
    try {
      const openedAt = performance.now();
      for (let i = 0; i < 100; i++) sockets.push(await open(h.adminPort));
      // Half of them send the start of a request line and never finish it.
      for (const s of sockets.slice(50)) s.write('GET /v1/tenants HTTP/1.1\r\nHost: x\r\n');
      // The operator is answered at once, on a connection of its own, however many are held.
      let answered = 0;
      while (sockets.some((s) => s.closedAt === undefined) && performance.now() - openedAt < 20_000) {
        const started = performance.now();
        const r = await httpCall(h.adminPort, 'GET', '/v1/tenants', { token: h.operatorToken });
        assert.equal(r.status, 200);
        assert.ok(performance.now() - started < 2000, 'the operator waited');
        answered++;
        // Until the next held connection closes, or half a second.
        const held = sockets.find((s) => s.closedAt === undefined);
        if (held !== undefined) await within(Promise.race([closed(held), new Promise((r) => setTimeout(r, 500))]), 5000, 'a pause');
      }
      assert.ok(answered >= 5);
      await within(Promise.all(sockets.map(closed)), 5000, 'every held connection closed');
      const last = Math.max(...sockets.map((s) => s.closedAt! - openedAt));
      const first = Math.min(...sockets.map((s) => s.closedAt! - openedAt));
      assert.ok(first >= 9000, `a connection closed after ${first} ms, before the 10 s deadline`);
      assert.ok(last <= 13_000, `a connection was still open at ${last} ms`);
    } finally {
      for (const s of sockets) s.destroy();
      proc.child.kill('SIGKILL');
      await proc.exited;
      removeDir(dataDir);
    }
  });

  it('cuts off a body that trickles past the request deadline', { timeout: 30_000 }, async () => {
    const h = await startTestHosting({ adminConnections: { requestTimeoutMs: 1500, checkIntervalMs: 100 } });
    const s = await open(h.adminPort);
    try {
      await h.api.createTenant('acme');
      const started = performance.now();
      s.write(`PUT /v1/tenants/acme/table HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${h.operatorToken}\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n{"a":"`);
      const drip = setInterval(() => s.writable && s.write('x'), 100);
      try {
        await within(closed(s), 10_000, 'the trickling connection closed');
      } finally {
        clearInterval(drip);
      }
      const took = performance.now() - started;
      assert.ok(took >= 1400 && took < 5000, `closed after ${took} ms`);
      assert.match(s.received, /^HTTP\/1\.1 408 /, 'answered 408 before closing');
      // The service answers on. (Node's own request-deadline sweep, every 100 ms here, can reset
      // a connection opened in the same instant as the one it cuts: asked again, it answers.)
      await eventually(async () => (await httpCall(h.adminPort, 'GET', '/v1/tenants/acme', { token: h.operatorToken }).catch(() => undefined))?.status === 200, 'the tenant answered', 5000);
    } finally {
      s.destroy();
      await h.close();
    }
  });

  it('past the cap, a newcomer takes the place of an idle connection; when all are mid-request it is answered 503', { timeout: 30_000 }, async () => {
    const cap = 8;
    const h = await startTestHosting({ adminConnections: { maxConnections: cap } });
    const held: Held[] = [];
    try {
      await h.api.createTenant('acme');
      // 3 × cap idle connections: the newest replace the oldest, and the operator still gets in.
      for (let i = 0; i < 3 * cap; i++) held.push(await open(h.adminPort));
      await within(Promise.all(held.slice(0, 2 * cap).map(closed)), 5000, 'the oldest idle connections replaced');
      assert.ok(held.slice(2 * cap).every((s) => s.closedAt === undefined), 'the newest are kept');
      assert.equal((await httpCall(h.adminPort, 'GET', '/v1/tenants', { token: h.operatorToken })).status, 200);

      // Now fill the cap with connections in the middle of a request (a body still to come).
      for (const s of held) s.destroy();
      held.length = 0;
      for (let i = 0; i < cap; i++) {
        const s = await open(h.adminPort);
        // Expect: 100-continue: the server says "100 Continue" once it has taken the request.
        s.write(`PUT /v1/tenants/acme/table HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${h.operatorToken}\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n{`);
        held.push(s);
      }
      await within(
        Promise.all(held.map((s) => new Promise<void>((resolve) => (function check(): void { if (s.received.startsWith('HTTP/1.1 100 ')) resolve(); else s.once('data', check); })()))),
        5000,
        'every held request taken',
      );
      const r = await httpCall(h.adminPort, 'GET', '/v1/tenants', { token: h.operatorToken });
      assert.equal(r.status, 503);
      assert.match((r.json as { error: string }).error, /too many admin connections \(at most 8/);
      // Once they finish, the operator is served again.
      for (const s of held) s.end('"x":1}'.padEnd(99, ' '));
      await within(Promise.all(held.map((s) => once(s, 'end'))), 5000, 'the held requests answered');
      for (const s of held) assert.match(s.received, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 /);
      assert.equal((await httpCall(h.adminPort, 'GET', '/v1/tenants', { token: h.operatorToken })).status, 200);
    } finally {
      for (const s of held) s.destroy();
      await h.close();
    }
  });

  it('closes an idle keep-alive connection after the keep-alive timeout', { timeout: 30_000 }, async () => {
    const h = await startTestHosting({ adminConnections: { keepAliveTimeoutMs: 500 } });
    const s = await open(h.adminPort);
    try {
      s.write(`GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n`);
      await within(
        new Promise<void>((resolve) => {
          const check = (): void => {
            if (s.received.includes('{"ok":true}') && s.received.endsWith('0\r\n\r\n')) resolve();
            else s.once('data', check);
          };
          check();
        }),
        5000,
        'the answer',
      );
      const answeredAt = performance.now();
      await within(closed(s), 5000, 'the keep-alive connection closed');
      const idle = s.closedAt! - answeredAt;
      assert.ok(idle >= 400 && idle < 2500, `closed after ${idle} ms idle`);
    } finally {
      s.destroy();
      await h.close();
    }
  });
});
