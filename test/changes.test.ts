/**
 * The change stream (src/tenants/changes.ts) on a real PostgreSQL: a node applies every change
 * exactly once and in revision order, whether it was connected when the change was made or
 * catches up after its connection was cut; a change that fails to apply is tried again, never
 * skipped; a node whose changes were pruned reloads everything.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { ChangeFeed } from '../src/tenants/changes.js';
import { PgTenantStore } from '../src/tenants/pg-store.js';
import type { Change } from '../src/tenants/store.js';
import { CapturedLog, eventually } from './helpers.js';
import { pgQuery, startPostgres, type TestPostgres } from './postgres.js';

describe('ChangeFeed on PostgreSQL', () => {
  let server: TestPostgres;
  let url: string;
  const closers: (() => Promise<void>)[] = [];

  before(async () => {
    server = await startPostgres();
  });
  after(async () => {
    await server?.destroy();
  });
  beforeEach(async () => {
    url = await server.newDatabase();
  });
  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
  });

  async function store(applicationName = 'switchyard-test'): Promise<PgTenantStore> {
    const s = await PgTenantStore.open({ url, poolSize: 2, applicationName });
    closers.push(() => s.close());
    return s;
  }

  async function feed(options: Partial<ConstructorParameters<typeof ChangeFeed>[0]> & { applied: Change[] }): Promise<ChangeFeed> {
    const s = options.store ?? (await store('switchyard-feed'));
    const f = new ChangeFeed({
      store: s,
      from: 0,
      log: new CapturedLog().logger,
      apply: async (c) => {
        options.applied.push(c);
      },
      reload: async () => s.revision(),
      pollMs: 60_000, // only notifications and reconnections deliver changes here
      ...options,
    });
    closers.push(() => f.close());
    await f.start();
    return f;
  }

  it('a connected node applies every change once, in revision order, as it is notified', async () => {
    const writer = await store();
    const applied: Change[] = [];
    const f = await feed({ applied });
    assert.equal(f.state, 'up');
    await writer.createTenant({ name: 'acme', port: 7001, tokenHash: 'h1' });
    await Promise.all([writer.addRouterVersion('acme', 'v1'), writer.setTable('acme', '{}'), writer.setLimits('acme', {})]);
    await writer.recordKill('acme');
    await eventually(() => applied.length >= 5, 'five changes applied');
    assert.deepEqual(applied.map((c) => c.revision), [1, 2, 3, 4, 5]);
    assert.deepEqual(applied[4], { revision: 5, tenant: 'acme', kind: 'kill' });
    assert.equal(f.applied, 5);
  });

  it('a node whose connection was cut catches up on everything committed meanwhile, exactly once and in order', async () => {
    const writer = await store();
    const applied: Change[] = [];
    // Reconnecting takes at least 1.5 s here, so the writes below are certainly made while the node is away.
    const f = await feed({ applied, backoffMs: [3000, 3000] });
    await writer.createTenant({ name: 'acme', port: 7001, tokenHash: 'h1' });
    await eventually(() => applied.length === 1, 'the first change applied');
    await pgQuery(server.adminUrl, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'switchyard-feed%'");
    await eventually(() => f.state === 'down', 'the feed sees its connection lost');
    for (let v = 1; v <= 20; v++) await writer.addRouterVersion('acme', `v${v}`);
    assert.equal(applied.length, 1, 'nothing reaches a disconnected node');
    await eventually(() => f.state === 'up' && applied.length === 21, 'caught up after reconnecting', 15_000);
    assert.deepEqual(applied.map((c) => c.revision), Array.from({ length: 21 }, (_, i) => i + 1));
    await writer.setTable('acme', '{}');
    await eventually(() => applied.length === 22, 'notified again once reconnected');
  });

  it('a change that fails to apply is tried again, never skipped nor applied out of order', async () => {
    const writer = await store();
    const applied: Change[] = [];
    let failOnce = true;
    await feed({
      applied,
      backoffMs: [50, 50],
      apply: async (c) => {
        if (c.revision === 3 && failOnce) {
          failOnce = false;
          throw new Error('the store went away in the middle');
        }
        applied.push(c);
      },
    });
    await writer.createTenant({ name: 'acme', port: 7001, tokenHash: 'h1' });
    for (let v = 1; v <= 4; v++) await writer.addRouterVersion('acme', `v${v}`);
    await eventually(() => applied.length === 5, 'every change applied', 10_000);
    assert.deepEqual(applied.map((c) => c.revision), [1, 2, 3, 4, 5]);
  });

  it('a node behind pruned changes reloads everything, then follows from the revision it reloaded', async () => {
    const writer = await store();
    await writer.createTenant({ name: 'acme', port: 7001, tokenHash: 'h1' });
    for (let v = 1; v <= 4; v++) await writer.addRouterVersion('acme', `v${v}`);
    await pgQuery(url, 'DELETE FROM changes WHERE revision <= 2');
    const applied: Change[] = [];
    let reloads = 0;
    const s = await store('switchyard-feed');
    const f = await feed({
      applied,
      store: s,
      reload: async () => {
        reloads++;
        return s.revision();
      },
    });
    assert.equal(reloads, 1);
    assert.equal(f.applied, 5);
    assert.equal(applied.length, 0, "nothing to apply: the reload covered it");
    await writer.setTable('acme', '{}');
    await eventually(() => applied.length === 1, 'the next change applied');
    assert.equal(applied[0]?.revision, 6);
  });
});
