/**
 * Hosting mode end to end (CONTRACT §2, §4, §5): `switchyard serve` with tenants routing real
 * clients to real backends. Two tenants at once; a hot swap with a connection held across it;
 * tables; rollback; dry runs; rejections; the kill switch; limits that are enforced; deleting a
 * tenant; metrics; the default backend policy and the service's own ports; /healthz; and a
 * `kill -9` of the service process followed by a restart on the same data directory.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  AdminApi,
  dial,
  eventually,
  exchange,
  freePortRange,
  httpCall,
  occupyPort,
  removeDir,
  startCliServe,
  startServer,
  startTestHosting,
  within,
  type CliProcess,
  type TestHosting,
  type TestServer,
  refusingPort,
  tryConnect,
  alive,
} from './helpers.js';

/** A backend that answers every chunk with `<tag>:<chunk>` and closes when the client does. */
function startTagged(tag: string): Promise<TestServer> {
  return startServer((socket) => {
    socket.on('data', (b: Buffer) => socket.write(`${tag}:${b.toString('latin1')}`));
    socket.on('end', () => socket.end());
  });
}

/** Writes `line` and resolves once the socket has received text that ends with `expected`. */
function roundTrip(socket: Socket, line: string, expected: string): Promise<void> {
  let text = '';
  return within(
    new Promise<void>((resolve) => {
      const onData = (b: Buffer): void => {
        text += b.toString('latin1');
        if (!text.endsWith(expected)) return;
        socket.off('data', onData);
        resolve();
      };
      socket.on('data', onData);
      socket.write(line);
    }),
    5000,
    `${JSON.stringify(expected)} in answer to ${JSON.stringify(line)} (got ${JSON.stringify(text)})`,
  );
}

/**
 * Resolves once the other side has closed `socket` (bounded): FIN ('end'; sockets from dial() allow
 * half-open, so this side is then ended too), a reset, or a full close.
 */
function closed(socket: Socket, what: string): Promise<unknown> {
  if (socket.destroyed) return Promise.resolve();
  // The FIN came before this was asked: end this side too, or the socket stays half-open (and
  // keeps this process alive).
  if (socket.readableEnded) {
    socket.end();
    return Promise.resolve();
  }
  return within(
    new Promise<void>((resolve) => {
      socket.once('end', () => {
        socket.end();
        resolve();
      });
      socket.once('close', () => resolve());
    }),
    5000,
    what,
  );
}

/** Everything `socket` receives until the other side closes it (FIN, reset or close). */
function receivedUntilClosed(socket: Socket): Promise<string> {
  const received: Buffer[] = [];
  socket.on('data', (b: Buffer) => received.push(b));
  return new Promise((resolve) => {
    const done = (): void => {
      socket.end();
      resolve(Buffer.concat(received).toString('latin1'));
    };
    socket.once('end', done);
    socket.once('close', done);
  });
}

/** A port nothing listens on, and nothing will unless the test binds it. */
const closedPort = refusingPort;

describe('hosting: tenants routing real clients', () => {
  let h: TestHosting;
  let api: AdminApi;
  let a: TestServer;
  let b: TestServer;

  before(async () => {
    [a, b] = await Promise.all([startTagged('A'), startTagged('B')]);
    h = await startTestHosting({ portCount: 24, allow: ['127.0.0.0/8'] });
    api = h.api;
  });

  after(async () => {
    await h?.close();
    await a?.close();
    await b?.close();
    if (h !== undefined) removeDir(h.dataDir);
  });

  it('two tenants route real clients at the same time, each to its own backend, and see their own name', async () => {
    const red = await api.createTenant('red');
    const blue = await api.createTenant('blue');
    const router = (port: number): string => `proxy((data, conn) => ({ remote: '127.0.0.1:${port}', data: conn.tenant + '|' + data }));`;
    assert.equal(await api.putRouter('red', router(a.port)), 1);
    assert.equal(await api.putRouter('blue', router(b.port), blue.token), 1);
    const clients = Array.from({ length: 10 }, (_, i) => i);
    const [reds, blues] = await Promise.all([
      Promise.all(clients.map((i) => exchange(red.port, [`r${i}`], { end: true }))),
      Promise.all(clients.map((i) => exchange(blue.port, [`b${i}`], { end: true }))),
    ]);
    reds.forEach((r, i) => assert.equal(r.data, `A:red|r${i}`));
    blues.forEach((r, i) => assert.equal(r.data, `B:blue|b${i}`));

    // GET …/:name shows the traffic.
    await eventually(async () => (await api.show('red')).stats.connections.active === 0, 'red connections finished');
    const shown = await api.show('red');
    assert.equal(shown.version, 1);
    assert.equal(shown.port, red.port);
    assert.equal(shown.limits.maxConnections, 10_000);
    assert.equal(shown.stats.connections.total, 10);
    assert.equal(shown.stats.decisions.remote, 10);
    assert.equal(shown.stats.bytesIn, reds.reduce((n, _r, i) => n + `r${i}`.length, 0));
    assert.equal(shown.stats.bytesOut, reds.reduce((n, r) => n + r.data.length, 0));
  });

  it('hot swap: a connection held across swaps keeps its backend; new connections get the live router; versions 1, 2, 3', async () => {
    const t = await api.createTenant('swap');
    assert.equal(await api.putRouter('swap', `proxy(() => ({ remote: '127.0.0.1:${a.port}' }));`), 1);
    const held = await dial(t.port);
    await roundTrip(held, 'one', 'A:one');

    assert.equal(await api.putRouter('swap', `proxy(() => ({ remote: '127.0.0.1:${b.port}' }));`), 2);
    assert.equal((await exchange(t.port, ['new'], { end: true })).data, 'B:new', 'a new connection uses version 2');
    await roundTrip(held, 'two', 'A:two');

    assert.equal(await api.putRouter('swap', "proxy(() => ({ close: 'version 3\\n' }));"), 3);
    assert.equal((await exchange(t.port, ['newer'])).data, 'version 3\n', 'a new connection uses version 3');
    await roundTrip(held, 'three', 'A:three');
    assert.equal((await api.show('swap')).version, 3);

    held.end();
    await closed(held, 'the held connection closes');
  });

  it('hot swap: a connection still deciding when the router changes is decided by the router it started with', async () => {
    const t = await api.createTenant('undecided');
    const waitForNewline = (port: number): string => `proxy((data) => data.includes('\\n') ? { remote: '127.0.0.1:${port}' } : { noop: true });`;
    await api.putRouter('undecided', waitForNewline(a.port));
    const client = await dial(t.port);
    const all = receivedUntilClosed(client);
    client.write('par');
    await eventually(async () => (await api.show('undecided')).stats.decisions.noop >= 1, 'the first piece was seen');
    await api.putRouter('undecided', waitForNewline(b.port));
    client.end('t\n');
    assert.equal(await within(all, 5000, 'the answer'), 'A:part\n');
    assert.equal((await exchange(t.port, ['new\n'], { end: true })).data, 'B:new\n');
  });

  it('tables: the router reads `table` ({} before any upload); a new table applies to new connections without re-uploading; it is frozen', async () => {
    const t = await api.createTenant('tbl');
    const router = `
      proxy((data) => {
        const name = data.split('\\n')[0];
        if (name === 'mutate') {
          try { table.backends.a = 'changed'; } catch (e) {}
          try { table.extra = 1; } catch (e) {}
          return { close: JSON.stringify(table) };
        }
        const backend = table.backends && table.backends[name];
        return backend ? { remote: backend } : { close: 'no ' + name + ' in ' + JSON.stringify(table) };
      });`;
    assert.equal(await api.putRouter('tbl', router), 1);
    assert.equal((await exchange(t.port, ['a\n'])).data, 'no a in {}');

    assert.equal((await api.call('PUT', '/v1/tenants/tbl/table', { body: { backends: { a: `127.0.0.1:${a.port}` } } })).status, 200);
    assert.equal((await exchange(t.port, ['a\n'], { end: true })).data, 'A:a\n');
    const held = await dial(t.port);
    await roundTrip(held, 'a\n', 'A:a\n');

    // The tenant's own token may change its table.
    const own = await httpCall(h.adminPort, 'PUT', '/v1/tenants/tbl/table', { token: t.token, body: { backends: { a: `127.0.0.1:${b.port}` } } });
    assert.equal(own.status, 200, own.text);
    assert.equal((await exchange(t.port, ['a\n'], { end: true })).data, 'B:a\n', 'new connections see the new table');
    await roundTrip(held, 'more', 'A:more');
    assert.equal((await api.show('tbl')).version, 1, 'a table is not a new router version');

    // Deeply frozen: the router cannot change what it sees.
    assert.equal((await exchange(t.port, ['mutate\n'])).data, JSON.stringify({ backends: { a: `127.0.0.1:${b.port}` } }));

    // Not an object: 400, and the table in force is unchanged.
    for (const body of ['[1]', '"x"', '3', 'null', 'false']) {
      const r = await api.call('PUT', '/v1/tenants/tbl/table', { body });
      assert.equal(r.status, 400, `${body}: ${r.text}`);
    }
    assert.equal((await exchange(t.port, ['a\n'], { end: true })).data, 'B:a\n');
    held.end();
    await closed(held, 'held closes');
  });

  it('rollback: 409 without an earlier version; otherwise the previous version is live again, for new connections', async () => {
    const t = await api.createTenant('rb');
    let r = await api.call('POST', '/v1/tenants/rb/router/rollback');
    assert.equal(r.status, 409, `no router at all: ${r.text}`);
    assert.equal(typeof r.json.error, 'string');
    await api.putRouter('rb', `proxy(() => ({ remote: '127.0.0.1:${a.port}' }));`);
    r = await api.call('POST', '/v1/tenants/rb/router/rollback');
    assert.equal(r.status, 409, `only version 1: ${r.text}`);
    assert.equal((await api.show('rb')).version, 1);

    assert.equal(await api.putRouter('rb', `proxy(() => ({ remote: '127.0.0.1:${b.port}' }));`), 2);
    assert.equal((await exchange(t.port, ['x'], { end: true })).data, 'B:x');
    const held = await dial(t.port);
    await roundTrip(held, 'v2', 'B:v2');

    r = await api.call('POST', '/v1/tenants/rb/router/rollback');
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { version: 1 });
    assert.equal((await api.show('rb')).version, 1);
    assert.equal((await exchange(t.port, ['y'], { end: true })).data, 'A:y', 'version 1 routes again');
    await roundTrip(held, 'still', 'B:still');
    assert.equal((await api.call('POST', '/v1/tenants/rb/router/rollback')).status, 409, 'nothing before version 1');

    // Versions are never reused: the next upload is 3; rolling back from 3 goes to 2.
    assert.equal(await api.putRouter('rb', "proxy(() => ({ close: 'v3' }));"), 3);
    assert.equal((await exchange(t.port, ['z'])).data, 'v3');
    r = await api.call('POST', '/v1/tenants/rb/router/rollback');
    assert.deepEqual(r.json, { version: 2 });
    assert.equal((await exchange(t.port, ['w'], { end: true })).data, 'B:w');
    held.end();
    await closed(held, 'held closes');
  });

  it('dry run: { data } and { base64 } give the decision, whether policy allows it, and the time; no backend is contacted; a failing router is a 200 { error }', async () => {
    const t = await api.createTenant('dry');
    // A tenant without a router: the dry run says the router failed.
    const none = await api.call('POST', '/v1/tenants/dry/route', { body: { data: 'x' } });
    assert.equal(none.status, 200, none.text);
    assert.equal(typeof none.json.error, 'string');
    assert.equal(typeof none.json.durationMs, 'number');

    await api.putRouter(
      'dry',
      `proxy((data, conn) => {
        if (data === 'throw') throw new Error('dry boom');
        if (data === 'deny') return { remote: '169.254.10.10:80' };
        if (data === 'admin') return { remote: '127.0.0.1:${h.adminPort}' };
        if (data === 'noop') return { noop: true, reply: 'more please' };
        if (data.charCodeAt(0) === 0 && data.charCodeAt(1) === 255) return { remote: '127.0.0.1:${a.port}', data: 'binary:' + data.length };
        if (data === 'who') return { close: conn.tenant + ' ' + conn.localPort };
        return { remote: '127.0.0.1:${a.port}' };
      });`,
    );
    const acceptedBefore = a.accepted.length;
    const dry = async (body: unknown): Promise<Record<string, unknown> & { decision?: unknown }> => {
      const r = await api.call('POST', '/v1/tenants/dry/route', { body });
      assert.equal(r.status, 200, r.text);
      return r.json;
    };
    let r = await dry({ data: 'GET / HTTP/1.1\r\n\r\n' });
    assert.deepEqual(r.decision, { remote: `127.0.0.1:${a.port}` });
    assert.equal(r.allowed, true);
    assert.equal(r.reason, undefined);
    assert.ok(typeof r.durationMs === 'number' && r.durationMs >= 0 && r.durationMs < 5000, `durationMs ${String(r.durationMs)}`);

    r = await dry({ base64: Buffer.from([0, 255, 1, 2, 3]).toString('base64') });
    assert.deepEqual(r.decision, { remote: `127.0.0.1:${a.port}`, data: 'binary:5' });
    assert.equal(r.allowed, true);

    r = await dry({ data: 'noop' });
    assert.deepEqual(r.decision, { noop: true, reply: 'more please' });
    r = await dry({ data: 'who' });
    assert.deepEqual(r.decision, { close: `dry ${t.port}` });

    r = await dry({ data: 'deny' });
    assert.deepEqual(r.decision, { remote: '169.254.10.10:80' });
    assert.equal(r.allowed, false);
    assert.ok(typeof r.reason === 'string' && r.reason.includes('169.254.10.10'), `reason: ${String(r.reason)}`);
    r = await dry({ data: 'admin' });
    assert.equal(r.allowed, false, 'the admin port is never a backend');
    assert.equal(typeof r.reason, 'string');

    r = await dry({ data: 'throw' });
    assert.equal(r.decision, undefined);
    assert.ok(typeof r.error === 'string' && r.error.length > 0);
    assert.equal(typeof r.durationMs, 'number');

    assert.equal(a.accepted.length, acceptedBefore, 'a dry run contacts no backend');
    assert.equal((await api.show('dry')).stats.connections.total, 0, 'a dry run is not a connection');
  });

  it('rejections: newest first, the last 100, with time, client, reason and firstBytes (base64, up to 256 bytes)', async () => {
    const t = await api.createTenant('rej');
    await api.putRouter(
      'rej',
      `proxy((data) => {
        if (data.startsWith('long')) return data.length < 300 ? { noop: true } : { close: true };
        if (data.startsWith('throw')) throw new Error('thrown');
        return { close: 'bye' };
      });`,
    );
    const clients: string[] = [];
    for (let i = 0; i < 105; i++) {
      const r = await exchange(t.port, [`conn-${i}`]);
      assert.equal(r.data, 'bye');
      clients.push(r.client);
    }
    await eventually(async () => (await api.rejections('rej')).length === 100 && (await api.rejections('rej'))[0].firstBytes === Buffer.from('conn-104').toString('base64'), 'the newest rejection is listed');
    let list = await api.rejections('rej');
    assert.equal(list.length, 100, 'at most 100');
    list.forEach((rej, k) => {
      const i = 104 - k;
      assert.equal(Buffer.from(rej.firstBytes, 'base64').toString('latin1'), `conn-${i}`, `position ${k}`);
      assert.equal(rej.client, clients[i]);
      assert.equal(rej.reason, 'router_close');
      assert.ok(!Number.isNaN(Date.parse(rej.time)), `time ${rej.time}`);
    });
    for (let k = 1; k < list.length; k++) assert.ok(Date.parse(list[k - 1].time) >= Date.parse(list[k].time), 'newest first');

    // 300 bytes (every byte value) before the decision: firstBytes is the first 256.
    const payload = Buffer.concat([Buffer.from('long'), Buffer.from(Array.from({ length: 296 }, (_, i) => (i * 7 + 3) % 256))]);
    await exchange(t.port, [payload]);
    const thrown = await exchange(t.port, ['throw it']);
    await eventually(async () => (await api.rejections('rej'))[0].reason === 'router_throw', 'the throw is listed');
    list = await api.rejections('rej');
    assert.equal(list.length, 100);
    assert.equal(list[0].client, thrown.client);
    assert.equal(Buffer.from(list[0].firstBytes, 'base64').toString('latin1'), 'throw it');
    assert.equal(list[1].reason, 'router_close');
    assert.deepEqual(Buffer.from(list[1].firstBytes, 'base64'), payload.subarray(0, 256));
  });

  it('rejections record router failures, connect failures, the buffer cap and the decision deadline', async () => {
    const t = await api.createTenant('kinds');
    const refused = await closedPort();
    const limits = await api.call('PUT', '/v1/tenants/kinds/limits', { body: { maxBufferBytes: 64, decisionTimeoutMs: 300 } });
    assert.equal(limits.status, 200, limits.text);
    await api.putRouter(
      'kinds',
      `proxy((data) => {
        if (data.startsWith('invalid')) return { remote: 5 };
        if (data.startsWith('refused')) return { remote: '127.0.0.1:${refused}' };
        return { noop: true };
      });`,
    );
    const expect = async (chunks: (string | Buffer)[], reason: string): Promise<void> => {
      const r = await within(exchange(t.port, chunks), 10_000, reason);
      assert.equal(r.data, '');
      await eventually(async () => (await api.rejections('kinds')).some((x) => x.client === r.client && x.reason === reason), `a ${reason} rejection for ${r.client}`);
    };
    await expect(['invalid'], 'router_invalid');
    await expect(['refused'], 'connect_failed');
    await expect(['x'.repeat(100)], 'buffer_limit');
    await expect(['wait for it'], 'decision_timeout');
  });

  it('the kill switch: DELETE …/connections closes every open connection, answers { closed: n }, and the port still accepts', async () => {
    const t = await api.createTenant('kill');
    await api.putRouter('kill', `proxy(() => ({ remote: '127.0.0.1:${a.port}' }));`);
    const acceptedBefore = a.accepted.length;
    const held = await Promise.all([1, 2, 3].map(() => dial(t.port)));
    await Promise.all(held.map((s, i) => roundTrip(s, `h${i}`, `A:h${i}`)));
    const upstreams = a.accepted.slice(acceptedBefore);
    assert.equal(upstreams.length, 3);

    const r = await httpCall(h.adminPort, 'DELETE', '/v1/tenants/kill/connections', { token: t.token });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { closed: 3 });
    await Promise.all(held.map((s, i) => closed(s, `client ${i} closed`)));
    await Promise.all(upstreams.map((s, i) => closed(s, `backend side ${i} closed`)));
    await eventually(async () => (await api.show('kill')).stats.connections.active === 0, 'no connection left');

    assert.equal((await exchange(t.port, ['after'], { end: true })).data, 'A:after', 'the port still accepts and routes');
    assert.deepEqual((await api.call('DELETE', '/v1/tenants/kill/connections')).json, { closed: 0 });
  });

  it('limits: maxConnections is enforced (over it, accepted and closed at once); 0 refuses everyone; null restores the default', async () => {
    const t = await api.createTenant('lim');
    await api.putRouter('lim', `proxy(() => ({ remote: '127.0.0.1:${a.port}' }));`);
    const set = await api.call('PUT', '/v1/tenants/lim/limits', { body: { maxConnections: 1 } });
    assert.equal(set.status, 200, set.text);
    assert.equal(set.json.maxConnections, 1);

    const first = await dial(t.port);
    await roundTrip(first, 'first', 'A:first');
    const second = await dial(t.port);
    const secondData = receivedUntilClosed(second);
    second.write('second');
    assert.equal(await within(secondData, 5000, 'the second client is closed'), '');
    await eventually(async () => (await api.rejections('lim'))[0]?.reason === 'connection_limit', 'a connection_limit rejection');
    await roundTrip(first, 'still', 'A:still');

    first.end();
    await closed(first, 'first closes');
    await eventually(async () => (await api.show('lim')).stats.connections.active === 0, 'the first connection finished');
    assert.equal((await exchange(t.port, ['third'], { end: true })).data, 'A:third', 'under the limit again');

    assert.equal((await api.call('PUT', '/v1/tenants/lim/limits', { body: { maxConnections: 0 } })).status, 200);
    assert.equal((await exchange(t.port, ['nobody'])).data, '');
    const reset = await api.call('PUT', '/v1/tenants/lim/limits', { body: { maxConnections: null } });
    assert.equal(reset.json.maxConnections, 10_000);
    assert.equal((await exchange(t.port, ['back'], { end: true })).data, 'A:back');
  });

  it('limits: routerTimeoutMs is enforced, both ways', async () => {
    const t = await api.createTenant('slow');
    await api.putRouter(
      'slow',
      `proxy((data) => {
        if (data.startsWith('slow')) { const end = Date.now() + 300; while (Date.now() < end) {} }
        return { remote: '127.0.0.1:${a.port}' };
      });`,
    );
    assert.equal((await exchange(t.port, ['fast'], { end: true })).data, 'A:fast');
    // The default, 50 ms: a 300 ms call is stopped and the client closed.
    let r = await exchange(t.port, ['slow 1'], { end: true });
    assert.equal(r.data, '');
    await eventually(async () => (await api.rejections('slow')).some((x) => x.client === r.client && x.reason === 'router_timeout'), 'a router_timeout rejection');
    // 2 s: the same call now decides.
    const raised = await api.call('PUT', '/v1/tenants/slow/limits', { body: { routerTimeoutMs: 2000 } });
    assert.equal(raised.json.routerTimeoutMs, 2000);
    assert.equal((await exchange(t.port, ['slow 2'], { end: true })).data, 'A:slow 2');
    // 100 ms: stopped again.
    assert.equal((await api.call('PUT', '/v1/tenants/slow/limits', { body: { routerTimeoutMs: 100 } })).status, 200);
    r = await exchange(t.port, ['slow 3'], { end: true });
    assert.equal(r.data, '');
    await eventually(async () => (await api.rejections('slow')).some((x) => x.client === r.client && x.reason === 'router_timeout'), 'a second router_timeout rejection');
    assert.equal((await exchange(t.port, ['fast again'], { end: true })).data, 'A:fast again', 'the isolate survives');
  });

  it('the service\'s own ports are never backends, even with --allow 127.0.0.0/8 (nor by a name that resolves to them)', async () => {
    const t = await api.createTenant('sneaky');
    const red = await api.show('red');
    const [lo, hi] = h.ports;
    const used = new Set(((await api.call('GET', '/v1/tenants')).json.tenants as { port: number }[]).map((x) => x.port));
    let spare = lo;
    while (used.has(spare) && spare < hi) spare++;
    await api.putRouter('sneaky', 'proxy((data) => ({ remote: data.trim() }));');
    assert.equal((await exchange(t.port, [`127.0.0.1:${a.port}\n`], { end: true })).data, `A:127.0.0.1:${a.port}\n`, 'the rule allows other loopback ports');
    for (const target of [`127.0.0.1:${h.adminPort}`, `localhost:${h.adminPort}`, `127.0.0.1:${red.port}`, `127.0.0.1:${t.port}`, `127.0.0.1:${spare}`]) {
      const r = await exchange(t.port, [`${target}\n`]);
      assert.equal(r.data, '', `${target}: closed`);
      await eventually(async () => (await api.rejections('sneaky')).some((x) => x.client === r.client && x.reason === 'policy_denied'), `${target}: policy_denied`);
    }
  });

  it('GET /metrics: Prometheus text with per-tenant series labelled tenant="…"', async () => {
    const r = await api.call('GET', '/metrics');
    assert.equal(r.status, 200);
    assert.match(String(r.headers['content-type']), /^text\/plain/);
    const lines = r.text.split('\n').filter((l) => l !== '');
    for (const line of lines) {
      if (line.startsWith('#')) assert.match(line, /^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+/, line);
      else assert.match(line, /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*\})? -?[0-9.e+-]+$/, line);
    }
    const value = (pattern: RegExp): number => {
      const line = lines.find((l) => pattern.test(l));
      assert.ok(line !== undefined, `a sample matching ${pattern}`);
      return Number(line.slice(line.lastIndexOf(' ') + 1));
    };
    assert.equal(value(/^switchyard_connections_total\{tenant="red"\} /), 10);
    assert.equal(value(/^switchyard_connections_total\{tenant="blue"\} /), 10);
    assert.ok(value(/^switchyard_decisions_total\{tenant="red",kind="remote"\} /) >= 10);
    assert.ok(value(/^switchyard_rejections_total\{tenant="rej",reason="router_close"\} /) >= 106);
    assert.ok(value(/^switchyard_rejections_total\{tenant="sneaky",reason="policy_denied"\} /) >= 5);
    assert.ok(value(/^switchyard_connections_active\{tenant="red"\} /) === 0);
    assert.ok(value(/^switchyard_client_bytes_received_total\{tenant="blue"\} /) > 0);
    assert.match(r.text, /^# TYPE switchyard_connections_total counter$/m);
  });

  it('DELETE a tenant: its port refuses at once, its connections are closed, the name can be reused', async () => {
    const t = await api.createTenant('doomed');
    await api.putRouter('doomed', `proxy(() => ({ remote: '127.0.0.1:${a.port}' }));`);
    const acceptedBefore = a.accepted.length;
    assert.equal((await api.call('PUT', '/v1/tenants/doomed/table', { body: { old: true } })).status, 200);
    const held = await dial(t.port);
    await roundTrip(held, 'alive', 'A:alive');
    const upstream = a.accepted[acceptedBefore]!;

    const r = await api.call('DELETE', '/v1/tenants/doomed');
    assert.equal(r.status, 204);
    assert.equal(await tryConnect(t.port), 'ECONNREFUSED', 'the port is closed by the time of the answer');
    await closed(held, 'the held client is closed');
    await closed(upstream, 'its backend connection is closed');
    assert.ok(!((await api.call('GET', '/v1/tenants')).json.tenants as { name: string }[]).some((x) => x.name === 'doomed'));

    const again = await api.createTenant('doomed', t.port);
    assert.equal(again.port, t.port);
    assert.equal((await api.show('doomed')).version, null, 'a fresh tenant: no router');
    assert.equal(await api.putRouter('doomed', `proxy((data) => data === 'table' ? { close: JSON.stringify(table) } : { remote: '127.0.0.1:${b.port}' });`), 1, 'versions start again from 1');
    assert.equal((await exchange(t.port, ['reborn'], { end: true })).data, 'B:reborn');
    assert.equal((await exchange(t.port, ['table'])).data, '{}', "the old tenant's table is gone");
  });

  it('concurrent changes: PUT table and PUT router at the same time leave the newest router with the newest table live', async () => {
    const t = await api.createTenant('race-table');
    const router = (v: string): string => `proxy(() => ({ close: '${v} ' + JSON.stringify(table) }));`;
    await api.putRouter('race-table', router('v1'));
    for (let round = 0; round < 3; round++) {
      const [table, put] = await Promise.all([
        api.call('PUT', '/v1/tenants/race-table/table', { body: { round } }),
        api.call('PUT', '/v1/tenants/race-table/router', { body: router(`v${round + 2}`) }),
      ]);
      assert.equal(table.status, 200, table.text);
      assert.deepEqual(put.json, { version: round + 2 });
      assert.equal((await api.show('race-table')).version, round + 2);
      assert.equal((await exchange(t.port, ['x'])).data, `v${round + 2} {"round":${round}}`, `round ${round}: both acknowledged changes are live`);
    }
  });

  it('concurrent changes: PUT limits during a router upload: the new router runs with the new limits', async () => {
    const t = await api.createTenant('race-limits');
    const router = (v: string): string =>
      `// ${v}\nproxy((data) => { if (data.startsWith('slow')) { const end = Date.now() + 300; while (Date.now() < end) {} } return { remote: '127.0.0.1:${a.port}' }; });`;
    await api.putRouter('race-limits', router('v1'));
    const [put, limits] = await Promise.all([
      api.call('PUT', '/v1/tenants/race-limits/router', { body: router('v2') }),
      api.call('PUT', '/v1/tenants/race-limits/limits', { body: { routerTimeoutMs: 2000 } }),
    ]);
    assert.deepEqual(put.json, { version: 2 });
    assert.equal(limits.json.routerTimeoutMs, 2000);
    assert.equal((await api.show('race-limits')).limits.routerTimeoutMs, 2000);
    const r = await exchange(t.port, ['slow'], { end: true });
    assert.equal(r.data, 'A:slow', `a 300 ms call within the 2000 ms limit in force; rejections: ${JSON.stringify((await api.rejections('race-limits')).slice(0, 1))}`);
  });

  it('concurrent changes: a router upload racing the deletion of its tenant is answered 404 (or 200), never 500', async () => {
    await api.createTenant('race-delete');
    const [put, del] = await Promise.all([
      api.call('PUT', '/v1/tenants/race-delete/router', { body: 'proxy(() => ({ noop: true }));' }),
      api.call('DELETE', '/v1/tenants/race-delete'),
    ]);
    assert.equal(del.status, 204);
    assert.ok(put.status === 404 || put.status === 200, `PUT router: ${put.status} ${put.text}`);
  });
});

describe('hosting: the default backend policy', () => {
  let h: TestHosting;
  let backend: TestServer;

  before(async () => {
    backend = await startTagged('L');
    h = await startTestHosting({ portCount: 4 }); // no --allow
  });

  after(async () => {
    await h?.close();
    await backend?.close();
    if (h !== undefined) removeDir(h.dataDir);
  });

  it('without --allow, loopback backends are denied: the client is closed, the rejection recorded as policy_denied, the backend never contacted', async () => {
    const t = await h.api.createTenant('plain');
    await h.api.putRouter('plain', 'proxy((data) => ({ remote: data.trim() }));');
    for (const target of [`127.0.0.1:${backend.port}`, `localhost:${backend.port}`, `[::1]:${backend.port}`, `127.9.9.9:${backend.port}`, `0.0.0.0:${backend.port}`, `169.254.1.1:80`, `224.0.0.1:80`]) {
      const r = await exchange(t.port, [`${target}\n`]);
      assert.equal(r.data, '', `${target}: closed`);
      await eventually(async () => (await h.api.rejections('plain')).some((x) => x.client === r.client && x.reason === 'policy_denied'), `${target}: policy_denied`);
    }
    assert.equal(backend.accepted.length, 0, 'no backend connection was made');
    const logged = await h.log.waitFor((rec) => rec.msg === 'connection rejected' && rec.reason === 'policy_denied');
    assert.equal(logged.tenant, 'plain');
    const dry = await h.api.call('POST', '/v1/tenants/plain/route', { body: { data: `127.0.0.1:${backend.port}` } });
    assert.equal(dry.json.allowed, false);
    assert.equal(typeof dry.json.reason, 'string');
  });

  it("a tenant's own allow limit lets it reach a loopback backend, and no other tenant", async () => {
    const t = await h.api.createTenant('trusted');
    const other = await h.api.createTenant('other');
    const router = `proxy(() => ({ remote: '127.0.0.1:${backend.port}' }));`;
    await h.api.putRouter('trusted', router);
    await h.api.putRouter('other', router);
    const r = await h.api.call('PUT', '/v1/tenants/trusted/limits', { body: { allow: [`127.0.0.1/32:${backend.port}`] } });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.allow, [`127.0.0.1/32:${backend.port}`]);
    assert.equal((await exchange(t.port, ['hi'], { end: true })).data, 'L:hi');
    const denied = await exchange(other.port, ['hi']);
    assert.equal(denied.data, '');
    await eventually(async () => (await h.api.rejections('other')).some((x) => x.reason === 'policy_denied'), 'the other tenant is still denied');
  });
});

describe('hosting: /healthz', () => {
  it('200 once every tenant port is listening; not 200 while one cannot be bound', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'switchyard-health-'));
    const ports = await freePortRange(4);
    let h: TestHosting | undefined = await startTestHosting({ dataDir, ports });
    let occupant: Awaited<ReturnType<typeof occupyPort>> | undefined;
    try {
      assert.equal((await httpCall(h.adminPort, 'GET', '/healthz')).status, 200, 'no tenants');
      await h.api.createTenant('one', ports[0]);
      await h.api.createTenant('two', ports[1]);
      assert.equal((await httpCall(h.adminPort, 'GET', '/healthz')).status, 200, 'both ports listening');
      assert.equal(await tryConnect(ports[0]), 'connected');
      assert.equal(await tryConnect(ports[1]), 'connected');
      await h.close();
      h = undefined;

      // Restart while something else holds tenant two's port.
      occupant = await occupyPort(ports[1]);
      h = await startTestHosting({ dataDir, ports });
      const r = await httpCall(h.adminPort, 'GET', '/healthz');
      assert.notEqual(r.status, 200, `tenant two's port is not listening: ${r.status} ${r.text}`);
      assert.ok(r.status >= 500, `a server-side status: ${r.status}`);
      assert.equal(await tryConnect(ports[0]), 'connected', "tenant one's port is open");
      assert.equal(h.announced.length, 0, 'the operator token is not announced again');
    } finally {
      await h?.close();
      if (occupant !== undefined) await new Promise<void>((resolve) => occupant!.close(() => resolve()));
      removeDir(dataDir);
    }
  });

  it('a port that could not be bound at start is tried again until it binds; once the service is closed, never', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'switchyard-rebind-'));
    const ports = await freePortRange(4);
    let h: TestHosting | undefined = await startTestHosting({ dataDir, ports, rebindAfterMs: 20 });
    let occupant: Awaited<ReturnType<typeof occupyPort>> | undefined;
    const release = async (): Promise<void> => {
      const o = occupant;
      occupant = undefined;
      if (o !== undefined) await new Promise<void>((resolve) => o.close(() => resolve()));
    };
    try {
      await h.api.createTenant('one', ports[0]);
      await h.close();

      occupant = await occupyPort(ports[0]);
      h = await startTestHosting({ dataDir, ports, rebindAfterMs: 20 });
      assert.notEqual((await httpCall(h.adminPort, 'GET', '/healthz')).status, 200);
      assert.equal(h.pendingRebinds(), 1);
      await release();
      await eventually(async () => (await httpCall(h!.adminPort, 'GET', '/healthz')).status === 200, 'the freed port is bound');
      assert.equal(await tryConnect(ports[0]), 'connected');
      assert.equal(h.pendingRebinds(), 0);
      await h.close();

      // Closed while waiting to try again: nothing is left to bind the port later.
      occupant = await occupyPort(ports[0]);
      h = await startTestHosting({ dataDir, ports, rebindAfterMs: 20 });
      assert.equal(h.pendingRebinds(), 1);
      const closing = h;
      h = undefined;
      await closing.close();
      assert.equal(closing.pendingRebinds(), 0);
      await release();
      assert.equal(await tryConnect(ports[0]), 'ECONNREFUSED');
    } finally {
      await h?.close();
      await release();
      removeDir(dataDir);
    }
  });
});

/** The pids of a process's direct children. */
function childPids(pid: number): number[] {
  try {
    return execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' })
      .split('\n')
      .map((s) => Number(s.trim()))
      .filter((n) => n > 0);
  } catch {
    return []; // ps exits 1 when there are none
  }
}


describe('hosting: the service as a process', () => {
  const procs: CliProcess[] = [];
  const dirs: string[] = [];
  let a: TestServer;
  let b: TestServer;

  before(async () => {
    [a, b] = await Promise.all([startTagged('A'), startTagged('B')]);
  });

  after(async () => {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
    await a?.close();
    await b?.close();
    for (const d of dirs) removeDir(d);
  });

  it('kill -9, then a restart on the same data directory: tenants, ports, live versions, tables, limits and tokens are all back; first connections route (cold start)', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'switchyard-restart-'));
    dirs.push(dataDir);
    const [lo, hi] = await freePortRange(8);
    const args = ['--data', dataDir, '--admin', '127.0.0.1:0', '--ports', `${lo}-${hi}`, '--bind', '127.0.0.1', '--allow', '127.0.0.0/8', '--sandbox-workers', '1'];
    const env = { SWITCHYARD_ADMIN_TOKEN: '' };

    const first = await startCliServe(args, env);
    procs.push(first);
    const operator = readFileSync(join(dataDir, 'admin-token'), 'utf8').trim();
    assert.ok(first.stderr().includes(operator), 'the generated operator token is printed on first start');
    let api = new AdminApi(first.adminPort, operator);

    const north = await api.createTenant('north', lo + 3);
    const south = await api.createTenant('south');
    // north: version 2 live, reading its table; its limits changed.
    await api.putRouter('north', "proxy((data) => ({ remote: table.backend, data: 'v1|' + data }));");
    await api.putRouter('north', "proxy((data) => ({ remote: table.backend, data: 'v2|' + data }));", north.token);
    assert.equal((await httpCall(first.adminPort, 'PUT', '/v1/tenants/north/table', { token: north.token, body: { backend: `127.0.0.1:${a.port}` } })).status, 200);
    const limits = await api.call('PUT', '/v1/tenants/north/limits', { body: { maxConnections: 50, routerTimeoutMs: 200, allow: ['10.1.0.0/16'] } });
    assert.equal(limits.status, 200, limits.text);
    // south: versions 1 and 2, rolled back to 1.
    await api.putRouter('south', `proxy(() => ({ remote: '127.0.0.1:${b.port}' }));`);
    await api.putRouter('south', "proxy(() => ({ close: 'south v2' }));");
    assert.deepEqual((await api.call('POST', '/v1/tenants/south/router/rollback')).json, { version: 1 });
    assert.equal((await exchange(north.port, ['before'], { end: true })).data, 'A:v2|before');
    assert.equal((await exchange(south.port, ['before'], { end: true })).data, 'B:before');
    await api.createTenant('west');
    assert.equal((await api.call('DELETE', '/v1/tenants/west')).status, 204);
    const held = await dial(north.port);
    await roundTrip(held, 'x', 'A:v2|x');

    // kill -9: no chance to flush or clean up.
    const workers = childPids(first.pid);
    assert.ok(workers.length >= 1, 'the service runs its sandbox worker as a child process');
    process.kill(first.pid, 'SIGKILL');
    const exit = await within(first.exited, 10_000, 'the killed service exits');
    assert.equal(exit.signal, 'SIGKILL');
    await closed(held, 'the held client sees the service die');
    await eventually(() => workers.every((pid) => !alive(pid)), `the sandbox workers of the killed service (${workers.join(', ')}) exit`, 10_000, 50);

    const second = await startCliServe(args, env);
    procs.push(second);
    assert.ok(!second.stderr().includes(operator), 'the operator token is printed only once');
    api = new AdminApi(second.adminPort, operator);
    assert.equal((await httpCall(second.adminPort, 'GET', '/healthz')).status, 200);

    // The old operator token works; the tenants, ports and live versions are back.
    const list = await api.call('GET', '/v1/tenants');
    assert.equal(list.status, 200, list.text);
    const tenants = (list.json.tenants as { name: string; port: number; version: number }[]).sort((x, y) => (x.name < y.name ? -1 : 1));
    assert.deepEqual(tenants, [
      { name: 'north', port: lo + 3, version: 2 },
      { name: 'south', port: south.port, version: 1 },
    ]);

    // The first connections after the restart: routers built cold, the table in force.
    const [n1, s1] = await Promise.all([exchange(north.port, ['after'], { end: true }), exchange(south.port, ['after'], { end: true })]);
    assert.equal(n1.data, 'A:v2|after');
    assert.equal(s1.data, 'B:after');

    // The old tenant tokens work, and reach only their own tenant.
    const shown = await httpCall(second.adminPort, 'GET', '/v1/tenants/north', { token: north.token });
    assert.equal(shown.status, 200, shown.text);
    assert.equal(shown.json.version, 2);
    assert.equal(shown.json.limits.maxConnections, 50);
    assert.equal(shown.json.limits.routerTimeoutMs, 200);
    assert.deepEqual(shown.json.limits.allow, ['10.1.0.0/16']);
    assert.equal((await httpCall(second.adminPort, 'GET', '/v1/tenants/north', { token: south.token })).status, 403);
    assert.equal((await httpCall(second.adminPort, 'GET', '/v1/tenants/south', { token: south.token })).status, 200);

    // History and counters survived too: rollback goes to 1, the next upload is 3.
    const back = await httpCall(second.adminPort, 'POST', '/v1/tenants/north/router/rollback', { token: north.token });
    assert.deepEqual(back.json, { version: 1 });
    assert.equal((await exchange(north.port, ['rolled'], { end: true })).data, 'A:v1|rolled');
    assert.equal(await api.putRouter('south', "proxy(() => ({ close: 'south v3' }));", south.token), 3);
    assert.equal((await exchange(south.port, ['x'])).data, 'south v3');

    second.child.kill('SIGTERM');
    assert.equal((await within(second.exited, 15_000, 'the service stops on TERM')).code, 0);
  });

  it('SWITCHYARD_ADMIN_TOKEN: that token is the operator token; none is generated or printed', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'switchyard-envtoken-'));
    dirs.push(dataDir);
    const [lo, hi] = await freePortRange(2);
    const token = `env-operator-${'k'.repeat(40)}`;
    const p = await startCliServe(['--data', dataDir, '--admin', '127.0.0.1:0', '--ports', `${lo}-${hi}`, '--bind', '127.0.0.1', '--sandbox-workers', '1'], { SWITCHYARD_ADMIN_TOKEN: token });
    procs.push(p);
    assert.equal((await httpCall(p.adminPort, 'GET', '/v1/tenants', { token })).status, 200);
    assert.equal((await httpCall(p.adminPort, 'GET', '/v1/tenants', { token: `${token}x` })).status, 401);
    assert.ok(!existsSync(join(dataDir, 'admin-token')), 'no token file is written');
    assert.ok(!/generated the operator token/.test(p.stderr()), p.stderr());
    p.child.kill('SIGTERM');
    assert.equal((await within(p.exited, 15_000, 'the service stops on TERM')).code, 0);
  });
});
