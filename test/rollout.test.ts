/**
 * Gradual rollouts, the pure part (src/routing/rollout.ts): which version a client gets, by a
 * stable hash of its address.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { bucketOf, choose } from '../src/routing/rollout.js';

describe('rollout', () => {
  it('a client always falls in the same bucket; the salt draws another sample', () => {
    assert.equal(bucketOf('198.51.100.7', 3), bucketOf('198.51.100.7', 3));
    assert.equal(bucketOf('::ffff:198.51.100.7', 3), bucketOf('198.51.100.7', 3), 'an IPv4-mapped address is its IPv4 address');
    assert.equal(bucketOf('2001:DB8::1', 3), bucketOf('2001:db8::1', 3));
    const addresses = Array.from({ length: 2000 }, (_, i) => `10.${i >> 8}.${i & 255}.1`);
    const differ = addresses.filter((a) => bucketOf(a, 3) !== bucketOf(a, 4)).length;
    assert.ok(differ > 1800, `${differ} of 2000 moved between salts`);
  });

  it('the share is close to the percent, and a wider share keeps the clients of a narrower one', () => {
    const addresses = Array.from({ length: 10_000 }, (_, i) => `203.0.${i >> 8}.${i & 255}`);
    const candidate = { router: 'new', percent: 10, salt: 7 };
    const chosen = addresses.filter((a) => choose('old', candidate, a) === 'new');
    assert.ok(chosen.length > 800 && chosen.length < 1200, `${chosen.length} of 10000 at 10%`);
    const wider = { ...candidate, percent: 50 };
    assert.ok(chosen.every((a) => choose('old', wider, a) === 'new'));
    assert.equal(choose('old', undefined, '203.0.0.1'), 'old');
  });
});
