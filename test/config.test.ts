/**
 * One configuration, kept: `serve` reads DATA/switchyard.json (or --config-file), flags override
 * it, the effective configuration is logged and shown at GET /v1/config, and SIGHUP reloads it
 * (policy, limits' defaults, log level) without stopping anything. Every limit is declared once,
 * so the command line and the admin API accept the same values.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { limitTable } from '../src/config.js';
import { type CliProcess, exchange, freePortRange, httpCall, type LogRecord, removeDir, spawnCli, startCliProxy, startCliServe, startServer, within } from './helpers.js';

const token = `config-operator-${'t'.repeat(32)}`;
const env = { SWITCHYARD_ADMIN_TOKEN: token };

/** The next record named `msg` logged from now on. */
function next(proc: CliProcess, msg: string, timeoutMs = 10_000): Promise<LogRecord> {
  const seen = proc.log.records.length;
  return proc.log.waitFor((r) => r.msg === msg && proc.log.records.indexOf(r) >= seen, timeoutMs);
}

describe('the configuration file', () => {
  const dirs: string[] = [];
  const procs: CliProcess[] = [];
  after(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
    for (const d of dirs) removeDir(d);
  });

  async function serve(config: unknown, flags: string[] = []): Promise<CliProcess & { adminPort: number; dataDir: string; ports: [number, number] }> {
    const dataDir = mkdtempSync(join(tmpdir(), 'switchyard-config-'));
    dirs.push(dataDir);
    const ports = await freePortRange(4);
    writeFileSync(join(dataDir, 'switchyard.json'), JSON.stringify({ ports: `${ports[0]}-${ports[1]}`, bind: '127.0.0.1', sandboxWorkers: 1, ...(config as object) }));
    const p = await startCliServe(['--data', dataDir, '--admin', '127.0.0.1:0', ...flags], env);
    procs.push(p);
    return { ...p, dataDir, ports };
  }

  it('is read from the data directory, flags override it, and GET /v1/config shows what runs and where it came from', async () => {
    const p = await serve({ allow: ['127.0.0.0/8'], limits: { routerTimeoutMs: 70, maxConnections: 5 } }, ['--max-connections', '7']);
    const r = await httpCall(p.adminPort, 'GET', '/v1/config', { token });
    assert.equal(r.status, 200);
    const c = r.json as { file: string; settings: Record<string, unknown>; sources: Record<string, string> };
    assert.equal(c.file, join(p.dataDir, 'switchyard.json'));
    assert.deepEqual(c.settings.allow, ['127.0.0.0/8']);
    assert.equal(c.sources.allow, 'file');
    assert.equal(c.settings['limits.routerTimeoutMs'], 70);
    assert.equal(c.settings['limits.maxConnections'], 7);
    assert.equal(c.sources['limits.maxConnections'], 'flag');
    assert.equal(c.sources['limits.memoryMb'], 'default');
    const logged = await p.log.waitFor((rec) => rec.msg === 'configuration');
    assert.deepEqual(logged.settings, c.settings);
    // The file's rules and limits are what tenants get, without any flag.
    await httpCall(p.adminPort, 'POST', '/v1/tenants', { token, body: { name: 'acme' } });
    await httpCall(p.adminPort, 'PUT', '/v1/tenants/acme/router', { token, body: "proxy(() => ({ remote: '127.0.0.1:9' }));" });
    const dry = await httpCall(p.adminPort, 'POST', '/v1/tenants/acme/route', { token, body: { data: 'x' } });
    assert.equal((dry.json as { allowed: boolean }).allowed, true, dry.text);
    const shown = (await httpCall(p.adminPort, 'GET', '/v1/tenants/acme', { token })).json as { limits: Record<string, number> };
    assert.equal(shown.limits.routerTimeoutMs, 70);
    assert.equal(shown.limits.maxConnections, 7);
    assert.equal((await httpCall(p.adminPort, 'GET', '/v1/config', {})).status, 401);
  });

  it('refuses to start on an unknown key, a wrong value or a file that is not JSON, naming the key', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'switchyard-config-'));
    dirs.push(dataDir);
    const cases: [string, RegExp][] = [
      ['{ "alow": [] }', /configuration: .*switchyard\.json: unknown key "alow"/],
      ['{ "limits": { "routerTimeoutMs": 60001 } }', /limits\.routerTimeoutMs: expected an integer from 1 to 60000/],
      ['{ "limits": { "nope": 1 } }', /unknown limit "nope"/],
      ['{ "allow": ["10.0.0.0/33"] }', /allow: \/33 is not a valid prefix/],
      ['{ "ports": 20000 }', /ports: must be a string/],
      ['{ "logLevel": "loud" }', /logLevel: expected one of fatal, error/],
      ['{ "allow": ', /is not valid JSON/],
    ];
    for (const [text, message] of cases) {
      writeFileSync(join(dataDir, 'switchyard.json'), text);
      const p = spawnCli(['serve', '--data', dataDir, '--admin', '127.0.0.1:0'], { env });
      const { code } = await within(p.exited, 20_000, 'serve exits');
      assert.equal(code, 1, text);
      assert.match(p.stderr(), message, text);
    }
    const missing = spawnCli(['serve', '--data', dataDir, '--config-file', join(dataDir, 'absent.json')], { env });
    assert.equal((await within(missing.exited, 20_000, 'serve exits')).code, 1);
    assert.match(missing.stderr(), /absent\.json: ENOENT/);
  });

  it('SIGHUP applies policy, limits and log level live, names what needs a restart, and never stops the service', async () => {
    const echo = await startServer((socket) => socket.pipe(socket));
    try {
      const p = await serve({ allow: ['127.0.0.0/8'] });
      await httpCall(p.adminPort, 'POST', '/v1/tenants', { token, body: { name: 'acme' } });
      await httpCall(p.adminPort, 'PUT', '/v1/tenants/acme/router', { token, body: `proxy(() => ({ remote: '127.0.0.1:${echo.port}' }));` });
      const tenantPort = ((await httpCall(p.adminPort, 'GET', '/v1/tenants/acme', { token })).json as { port: number }).port;
      const before = await exchange(tenantPort, ['hello'], { end: true });
      assert.equal(before.data, 'hello');

      // Remove the loopback rule, change a limit and the log level, and the port range.
      writeFileSync(join(p.dataDir, 'switchyard.json'), JSON.stringify({ ports: `${p.ports[0]}-${p.ports[1] + 1}`, bind: '127.0.0.1', sandboxWorkers: 1, limits: { routerTimeoutMs: 90 }, logLevel: 'debug' }));
      const reloaded = next(p, 'configuration reloaded');
      p.child.kill('SIGHUP');
      const rec = await reloaded;
      assert.deepEqual([...(rec.applied as string[])].sort(), ['allow', 'limits.routerTimeoutMs', 'logLevel']);
      assert.deepEqual(rec.needRestart, ['ports']);
      const dry = (await httpCall(p.adminPort, 'POST', '/v1/tenants/acme/route', { token, body: { data: 'x' } })).json as { allowed: boolean; reason: string };
      assert.equal(dry.allowed, false, 'the loopback rule is gone');
      const shown = (await httpCall(p.adminPort, 'GET', '/v1/tenants/acme', { token })).json as { limits: Record<string, number> };
      assert.equal(shown.limits.routerTimeoutMs, 90);
      const c = (await httpCall(p.adminPort, 'GET', '/v1/config', { token })).json as { settings: Record<string, unknown>; pendingRestart: Record<string, unknown> };
      assert.equal(c.settings.ports, `${p.ports[0]}-${p.ports[1]}`, 'what runs, until a restart');
      assert.deepEqual(c.pendingRestart, { ports: `${p.ports[0]}-${p.ports[1] + 1}` });
      // Debug lines now reach the log (admin requests are logged at debug).
      const debugLine = p.log.waitFor((r) => r.level === 20 && r.msg === 'admin request');
      await httpCall(p.adminPort, 'GET', '/healthz');
      await debugLine;

      // A broken file changes nothing and stops nothing.
      writeFileSync(join(p.dataDir, 'switchyard.json'), '{ "limits": { "routerTimeoutMs": "fast" } }');
      const failed = next(p, 'reload failed; nothing changed');
      p.child.kill('SIGHUP');
      assert.match(String((await failed).err), /limits\.routerTimeoutMs: must be a number/);
      assert.equal(((await httpCall(p.adminPort, 'GET', '/v1/tenants/acme', { token })).json as { limits: Record<string, number> }).limits.routerTimeoutMs, 90);
      assert.equal(p.child.exitCode, null, 'still running');
      assert.equal((await httpCall(p.adminPort, 'GET', '/healthz')).status, 200);
    } finally {
      await echo.close();
    }
  });
});

describe('SIGHUP in single-router mode', () => {
  it('loads the router file again; one that does not load leaves the old router live', async () => {
    const proc = await startCliProxy("proxy(() => ({ close: 'one' }));");
    try {
      assert.equal((await exchange(proc.port, ['x'])).data, 'one');
      writeFileSync(proc.file, "proxy(() => ({ close: 'two' }));");
      const reloaded = next(proc, 'router reloaded');
      proc.child.kill('SIGHUP');
      await reloaded;
      assert.equal((await exchange(proc.port, ['x'])).data, 'two');
      writeFileSync(proc.file, 'proxy(() => {');
      const failed = next(proc, 'reload failed; nothing changed');
      proc.child.kill('SIGHUP');
      assert.match(String((await failed).err), /Unexpected|SyntaxError|end of input/);
      assert.equal((await exchange(proc.port, ['x'])).data, 'two');
    } finally {
      proc.child.kill('SIGKILL');
      await proc.exited;
    }
  });
});

describe('every limit declared once', () => {
  it('the command line and the admin API take the same range for each tenant limit', async () => {
    for (const l of limitTable) {
      for (const [value, ok] of [
        [l.max, true],
        [l.max + 1, false],
      ] as const) {
        const p = spawnCli(['-c', '/nonexistent/router.js', l.flag, String(value)]);
        await within(p.exited, 20_000, 'switchyard exits');
        // A value it takes gets as far as the missing file; one it refuses is named.
        if (ok) assert.match(p.stderr(), /no such file/, `${l.flag} ${value}: ${p.stderr()}`);
        else assert.match(p.stderr(), new RegExp(`option '${l.flag} <${l.arg}>' argument '${value}' is invalid`), `${l.flag} ${value}`);
      }
    }
    const { updateOverrides } = await import('../src/tenants/limits.js');
    for (const l of limitTable.filter((x) => x.tenant)) {
      assert.equal(typeof updateOverrides({}, { [l.key]: l.min }), 'object', `${l.key} ${l.min}`);
      assert.equal(typeof updateOverrides({}, { [l.key]: l.max }), 'object', `${l.key} ${l.max}`);
      assert.match(String(updateOverrides({}, { [l.key]: l.max + 1 })), new RegExp(`${l.key} must be an integer from ${l.min} to ${l.max}`));
    }
    assert.match(String(updateOverrides({}, { connectTries: 3 })), /unknown limit "connectTries"/);
  });
});
