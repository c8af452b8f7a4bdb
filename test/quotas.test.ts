/**
 * What one tenant token can make the service do is bounded: router versions kept (and so the
 * data directory's growth), pushes a minute (429 with Retry-After), and script checks running
 * or waiting at once (503 with Retry-After past them). Each bound falls on whoever reaches it.
 */
import assert from 'node:assert/strict';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PushQuota } from '../src/tenants/quotas.js';
import { startTestHosting } from './helpers.js';

function dirBytes(dir: string): number {
  return readdirSync(dir).reduce((sum, f) => sum + statSync(join(dir, f)).size, 0);
}

describe('quotas', { concurrency: true }, () => {
  it('keeps the newest router versions only: the data directory stops growing, and rollback reaches back within them', { timeout: 120_000 }, async () => {
    const h = await startTestHosting({ quotas: { routerVersions: 3, pushesPerMinute: 6000, pushBurst: 100 } });
    try {
      await h.api.createTenant('acme');
      // 256 KiB scripts, each different.
      const script = (i: number): string => `// ${i}\nconst pad = '${'x'.repeat(256 * 1024 - 200)}';\nproxy(() => ({ close: 'v${i}' }));\n`;
      for (let i = 1; i <= 10; i++) assert.equal(await h.api.putRouter('acme', script(i)), i);
      const afterTen = dirBytes(h.dataDir);
      for (let i = 11; i <= 40; i++) assert.equal(await h.api.putRouter('acme', script(i)), i);
      const afterForty = dirBytes(h.dataDir);
      // Three versions of 256 KiB, and SQLite's WAL (truncated to 1 MiB after each checkpoint).
      assert.ok(afterForty < 4 * 1024 * 1024, `the data directory holds ${afterForty} bytes after 40 pushes`);
      assert.ok(afterForty < afterTen + 1024 * 1024, `it grew from ${afterTen} to ${afterForty} bytes`);
      for (const expected of [39, 38]) {
        const r = await h.api.call('POST', '/v1/tenants/acme/router/rollback');
        assert.deepEqual(r.json, { version: expected });
      }
      const none = await h.api.call('POST', '/v1/tenants/acme/router/rollback');
      assert.equal(none.status, 409, 'version 37 is no longer kept');
      assert.match(none.json.error, /no earlier router version/);
    } finally {
      await h.close();
    }
  });

  it('429 with Retry-After past a tenant\'s push rate, for routers and tables; other tenants push on', async () => {
    const h = await startTestHosting({ quotas: { pushesPerMinute: 1, pushBurst: 3 } });
    try {
      const acme = await h.api.createTenant('acme');
      await h.api.createTenant('other');
      const router = "proxy(() => ({ close: 'ok' }));";
      for (let i = 0; i < 2; i++) assert.equal((await h.api.call('PUT', '/v1/tenants/acme/router', { body: router, token: acme.token })).status, 200);
      assert.equal((await h.api.call('PUT', '/v1/tenants/acme/table', { body: { a: 1 }, token: acme.token })).status, 200);
      for (const [method, path, body] of [
        ['PUT', '/v1/tenants/acme/router', router],
        ['PUT', '/v1/tenants/acme/table', { a: 2 }],
      ] as const) {
        const r = await h.api.call(method, path, { body, token: acme.token });
        assert.equal(r.status, 429, `${path}: ${r.text}`);
        assert.match(r.json.error, /too many pushes: at most 3 at once and 1 a minute; try again in \d+ s/);
        const after = Number(r.headers['retry-after']);
        assert.ok(after >= 50 && after <= 60, `Retry-After: ${r.headers['retry-after']}`);
      }
      assert.equal((await h.api.call('PUT', '/v1/tenants/other/router', { body: router })).status, 200, 'another tenant is not held back');
      assert.equal((await h.api.show('acme')).version, 2, 'the refused push changed nothing');
    } finally {
      await h.close();
    }
  });

  it('503 with Retry-After when script checks are all running and the queue is full; the others complete', async () => {
    const h = await startTestHosting({ quotas: { checksRunning: 1, checksQueued: 1 } });
    try {
      const names = ['a', 'b', 'c', 'd'];
      for (const n of names) await h.api.createTenant(n);
      // Each check takes ~300 ms: its top level spins before calling proxy().
      const slow = "const end = Date.now() + 300; while (Date.now() < end) {}\nproxy(() => ({ close: 'ok' }));";
      const answers = await Promise.all(names.map((n) => h.api.call('PUT', `/v1/tenants/${n}/router`, { body: slow })));
      const statuses = answers.map((r) => r.status).sort();
      assert.deepEqual(statuses, [200, 200, 503, 503], answers.map((r) => r.text).join('\n'));
      for (const r of answers.filter((a) => a.status === 503)) {
        assert.match(r.json.error, /script checks are busy \(1 running, 1 waiting\)/);
        assert.equal(r.headers['retry-after'], '1');
      }
    } finally {
      await h.close();
    }
  });
});

describe('PushQuota', () => {
  it('refills at its rate, up to its burst', () => {
    let now = 0;
    const q = new PushQuota(60, 2, () => now);
    q.take('t');
    q.take('t');
    assert.throws(() => q.take('t'), /too many pushes/);
    q.take('u');
    now += 1000;
    q.take('t');
    assert.throws(() => q.take('t'));
    now += 60_000;
    q.take('t');
    q.take('t');
    assert.throws(() => q.take('t'), 'never more than the burst');
  });
});
