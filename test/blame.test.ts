/**
 * The blame policy as a pure function of timed events (src/sandbox/blame.ts), and the sliding
 * window it counts with. No processes: every time here is a number passed in.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Blame, type BlamePolicy, Placement, sourceOf } from '../src/sandbox/blame.js';
import { SlidingWindow } from '../src/sandbox/sliding-window.js';

const policy: BlamePolicy = {
  quarantineStrikes: 3,
  strikeWindowMs: 60_000,
  quarantineQuietMs: 120_000,
  slowLaneStrikes: 2,
  slowLaneQuietMs: 30_000,
  penaltyStrikes: 3,
  penaltyWindowMs: 10_000,
  penaltyMs: 5_000,
  penaltyMaxMs: 20_000,
  penaltySources: 3,
};

describe('sliding window', () => {
  it('counts the events of the last windowMs, and forgets older ones', () => {
    const w = new SlidingWindow(1000);
    assert.equal(w.add(0), 1);
    assert.equal(w.add(500), 2);
    assert.equal(w.count(999), 2);
    assert.equal(w.count(1000), 1, 'an event exactly windowMs old is out');
    assert.equal(w.add(1600), 1);
    assert.equal(w.last, 1600);
    w.clear();
    assert.equal(w.count(1600), 0);
  });

  it('carries a value with each event', () => {
    const w = new SlidingWindow<number>(100);
    w.add(0, 7);
    w.add(50, 8);
    assert.deepEqual(w.events(120).map((e) => e.value), [8]);
  });
});

describe('client sources', () => {
  it('judges IPv4 by address and IPv6 by /64', () => {
    assert.equal(sourceOf('192.0.2.7'), '192.0.2.7');
    assert.equal(sourceOf('::ffff:192.0.2.7'), '192.0.2.7');
    assert.equal(sourceOf('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
    assert.equal(sourceOf('2001:db8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64');
    assert.equal(sourceOf('2001:db8::1'), '2001:db8:0:0::/64');
    assert.equal(sourceOf('::1'), '0:0:0:0::/64');
    assert.equal(sourceOf('fe80::1%eth0'), 'fe80:0:0:0::/64');
    assert.equal(sourceOf(''), undefined);
    assert.equal(sourceOf(undefined), undefined);
  });
});

describe('blame', () => {
  it('quarantines after quarantineStrikes within the window, and only the tenant struck', () => {
    const b = new Blame(policy);
    assert.deepEqual(b.strike('evil', 'crash', '10.0.0.1', 0), []);
    assert.deepEqual(b.strike('evil', 'crash', '10.0.0.1', 1000), []);
    const v = b.strike('evil', 'crash', '10.0.0.1', 2000);
    assert.deepEqual(v[0], { kind: 'move', tenant: 'evil', from: Placement.shared, to: Placement.quarantine, strikes: 3, timeouts: 0 });
    assert.equal(b.placement('evil'), Placement.quarantine);
    assert.equal(b.placement('victim'), Placement.shared);
  });

  it('strikes outside the window do not add up', () => {
    const b = new Blame(policy);
    b.strike('t', 'crash', undefined, 0);
    b.strike('t', 'crash', undefined, 30_000);
    b.strike('t', 'crash', undefined, 61_000); // the first is out of the window
    assert.equal(b.placement('t'), Placement.shared);
    b.strike('t', 'crash', undefined, 62_000);
    assert.equal(b.placement('t'), Placement.quarantine);
  });

  it('lifts a quarantine after the quiet period without a strike, and forgets the strikes', () => {
    const b = new Blame(policy);
    for (const at of [0, 1, 2]) b.strike('t', 'crash', undefined, at);
    assert.deepEqual(b.tick(120_001), [], 'not quiet long enough yet');
    b.strike('t', 'crash', undefined, 100_000); // another strike while quarantined restarts the quiet period
    assert.deepEqual(b.tick(219_999), []);
    const v = b.tick(220_000);
    assert.deepEqual(v, [{ kind: 'move', tenant: 't', from: Placement.quarantine, to: Placement.shared, strikes: 0, timeouts: 0 }]);
    assert.equal(b.placement('t'), Placement.shared);
    // A single strike after the release does not quarantine again.
    b.strike('t', 'crash', undefined, 220_001);
    assert.equal(b.placement('t'), Placement.shared);
  });

  it('a hang is a strike and a time-out; time-outs lead to the slow lane and back after a quiet period', () => {
    const b = new Blame(policy);
    assert.deepEqual(b.strike('t', 'hang', undefined, 0), []);
    assert.equal(b.strikes('t', 0), 1);
    const v = b.timeout('t', undefined, 10);
    assert.equal(v[0]?.kind === 'move' && v[0].to, Placement.slowLane);
    assert.deepEqual(b.tick(30_009), []);
    assert.equal(b.tick(30_010)[0]?.kind, 'move');
    assert.equal(b.placement('t'), Placement.shared);
  });

  it('a quarantined tenant leaves to the slow lane when its time-outs are recent', () => {
    const b = new Blame(policy);
    for (const at of [0, 1, 2]) b.strike('t', 'hang', undefined, at);
    assert.equal(b.placement('t'), Placement.quarantine);
    b.timeout('t', undefined, 119_000);
    const v = b.tick(120_002);
    assert.equal(v[0]?.kind === 'move' && v[0].to, Placement.slowLane);
  });

  it('penalises the source whose calls time out, doubling up to the cap, and no other source', () => {
    const b = new Blame({ ...policy, slowLaneStrikes: 1e9 });
    b.timeout('t', '10.0.0.2', 0);
    b.timeout('t', '10.0.0.3', 0);
    b.timeout('t', '10.0.0.2', 100);
    const v = b.timeout('t', '10.0.0.2', 200);
    assert.deepEqual(v, [{ kind: 'penalty', tenant: 't', source: '10.0.0.2', ms: 5000 }]);
    assert.equal(b.refusal('t', '10.0.0.2', 200), 5000);
    assert.equal(b.refusal('t', '10.0.0.3', 200), 0, 'another client of the tenant');
    assert.equal(b.refusal('u', '10.0.0.2', 200), 0, 'the same client of another tenant');
    assert.equal(b.refusal('t', '10.0.0.2', 5200), 0);
    assert.equal(b.placement('t'), Placement.shared, 'no refusal of the tenant');
    // Again soon after: twice as long, then the cap.
    for (const at of [5300, 5400, 5500]) b.timeout('t', '10.0.0.2', at);
    assert.equal(b.refusal('t', '10.0.0.2', 5500), 10_000);
    for (const at of [15_600, 15_700, 15_800]) b.timeout('t', '10.0.0.2', at);
    assert.equal(b.refusal('t', '10.0.0.2', 15_800), 20_000);
    for (const at of [35_900, 36_000, 36_100]) b.timeout('t', '10.0.0.2', at);
    assert.equal(b.refusal('t', '10.0.0.2', 36_100), 20_000, 'capped at penaltyMaxMs');
    // After a quiet spell it starts over.
    for (const at of [100_000, 100_001, 100_002]) b.timeout('t', '10.0.0.2', at);
    assert.equal(b.refusal('t', '10.0.0.2', 100_002), 5000);
    assert.equal(b.penaltiesImposed('t'), 5);
  });

  it('crashes and hangs count against the source too; an IPv6 /64 is one source', () => {
    const b = new Blame(policy);
    b.strike('t', 'crash', '2001:db8:0:1::a', 0);
    b.strike('t', 'hang', '2001:db8:0:1::b', 1);
    b.timeout('t', '2001:db8:0:1:ffff::c', 2);
    assert.ok(b.refusal('t', '2001:db8:0:1::d', 3) > 0);
    assert.equal(b.refusal('t', '2001:db8:0:2::a', 3), 0);
  });

  it('keeps at most penaltySources sources per tenant, forgetting the oldest', () => {
    const b = new Blame({ ...policy, slowLaneStrikes: 1e9 });
    for (const a of ['10.0.0.1', '10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4']) b.timeout('t', a, 0);
    b.timeout('t', '10.0.0.1', 1);
    assert.equal(b.refusal('t', '10.0.0.1', 1), 0, 'its first two faults were forgotten with it');
  });

  it('forgets a deleted tenant at once, and says where it goes', () => {
    const b = new Blame(policy);
    for (const at of [0, 1, 2]) b.strike('t', 'crash', '10.0.0.1', at);
    assert.deepEqual(b.forget('t'), [{ kind: 'move', tenant: 't', from: Placement.quarantine, to: Placement.shared, strikes: 0, timeouts: 0 }]);
    assert.equal(b.strikes('t', 3), 0);
    assert.equal(b.refusal('t', '10.0.0.1', 3), 0);
    assert.deepEqual(b.forget('t'), []);
  });

  it('forgets tenants with nothing left to remember', () => {
    const b = new Blame(policy);
    b.timeout('t', '10.0.0.1', 0);
    b.tick(1_000_000);
    assert.equal(b.placement('t'), Placement.shared);
    assert.equal(b.strikes('t', 1_000_000), 0);
  });
});
