/**
 * Synchronous calls in a sandbox worker: a router is called with applySync while it behaves,
 * and sent to asynchronous calls (on an isolated-vm thread) after a failure, or after three
 * calls over the 2 ms budget of the isolate's CPU time that are not rare among its calls.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TenantIsolate } from '../src/sandbox/tenant-isolate.js';

const source = `proxy((data) => {
  // 'burn:N' uses about N ms of CPU; anything else answers at once.
  const m = /^burn:(\\d+)$/.exec(data);
  if (m) { const end = Date.now() + Number(m[1]); while (Date.now() < end) {} }
  if (data === 'throw') throw new Error('no');
  return { close: true };
});`;

async function tenant(): Promise<TenantIsolate> {
  const { isolate } = await TenantIsolate.create({ source, filename: 'sync.js', routerTimeoutMs: 200, memoryMb: 32 }, { syncCalls: true });
  return isolate;
}

const args = (data: string) => [data, 't', '127.0.0.1', 40000, '127.0.0.1', 9418];

describe('synchronous router calls', () => {
  it('stay synchronous while calls stay under the CPU budget', async () => {
    const isolate = await tenant();
    try {
      for (let i = 0; i < 50; i++) assert.match(await isolate.call('route', args('x')), /"close":true/);
      assert.equal(isolate.callMode, 'sync');
      // Two slow calls within the window are not yet enough.
      for (let i = 0; i < 2; i++) await isolate.call('route', args('burn:20'));
      assert.equal(isolate.callMode, 'sync');
    } finally {
      isolate.dispose();
    }
  });

  it('go asynchronous after three calls over the budget', async () => {
    const isolate = await tenant();
    try {
      for (let i = 0; i < 12; i++) await isolate.call('route', args('x')); // past the first calls, which compile
      for (let i = 0; i < 3; i++) await isolate.call('route', args('burn:20'));
      assert.equal(isolate.callMode, 'async');
      assert.match(await isolate.call('route', args('x')), /"close":true/, 'and keep answering');
    } finally {
      isolate.dispose();
    }
  });

  it('stay synchronous when slow calls are rare among many, as garbage-collector pauses are', async () => {
    // A call the runtime itself slows (a compile or a collection on a busy machine) is a slow
    // call too; should two of them fall beside one of ours, the scenario runs again on a fresh
    // isolate. Under the rule of three slow calls within ten seconds, every attempt would fail.
    let attempts = 0;
    let isolate: TenantIsolate | undefined;
    while (isolate === undefined && attempts++ < 3) {
      const candidate = await tenant();
      // Past the first few thousand calls, in which the isolate's compiler and collector may
      // stop a call or two for a few ms of their own.
      for (let i = 0; i < 4000; i++) await candidate.call('route', args('x'));
      // Three slow calls within the window, each after 2,500 fast ones: too few to count.
      for (let round = 0; round < 3; round++) {
        await candidate.call('route', args('burn:5'));
        for (let i = 0; i < 2500; i++) await candidate.call('route', args('x'));
      }
      if (candidate.callMode === 'sync') isolate = candidate;
      else candidate.dispose();
    }
    assert.ok(isolate, `went asynchronous in ${attempts - 1} attempts of rare slow calls`);
    try {
      // Three of the same slow calls close together are a slow router.
      for (let i = 0; i < 3; i++) await isolate.call('route', args('burn:5'));
      assert.equal(isolate.callMode, 'async');
    } finally {
      isolate.dispose();
    }
  });

  it('go asynchronous after a call that fails', async () => {
    const isolate = await tenant();
    try {
      await isolate.call('route', args('x'));
      await assert.rejects(isolate.call('route', args('burn:1000')), /time limit|ran past/);
      assert.equal(isolate.callMode, 'async');
    } finally {
      isolate.dispose();
    }
  });

  it('are never used outside a worker', async () => {
    const { isolate } = await TenantIsolate.create({ source, filename: 'sync.js', routerTimeoutMs: 200, memoryMb: 32 });
    try {
      await isolate.call('route', args('x'));
      assert.equal(isolate.callMode, 'async');
    } finally {
      isolate.dispose();
    }
  });
});
