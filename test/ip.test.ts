/** The policy's IP parser: what it reads must be what Node connects to, and nothing net.isIP refuses. */
import assert from 'node:assert/strict';
import { isIP } from 'node:net';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { cidr, contains, formatIPv6, parseCidr, parseIp, parseIPv4, parseIPv6 } from '../src/routing/ip.js';

/** The WHATWG URL parser's canonical text of an IPv6 address: an independent reading. */
const urlCanonical = (text: string): string => new URL(`http://[${text}]/`).hostname.slice(1, -1);

const v6 = fc.bigInt({ min: 0n, max: (1n << 128n) - 1n });
/** Values with long runs of zero groups, the cases `::` exists for. */
const sparse = fc.array(fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 }).map((g) => g.reduce((v, x) => (v << 16n) | BigInt(x), 0n));

function groups(v: bigint): number[] {
  return Array.from({ length: 8 }, (_, i) => Number((v >> BigInt((7 - i) * 16)) & 0xffffn));
}

describe('IPv6 parsing', () => {
  it('expands :: and dotted tails', () => {
    const cases: [string, bigint][] = [
      ['::', 0n],
      ['::1', 1n],
      ['1::', 1n << 112n],
      ['::ffff:127.0.0.1', 0xffff7f000001n],
      ['::127.0.0.1', 0x7f000001n],
      ['64:ff9b::10.0.0.5', (0x64ff9bn << 96n) | 0x0a000005n],
      ['1:2:3:4:5:6:7:8', 0x00010002000300040005000600070008n],
      ['1:2:3:4:5:6:1.2.3.4', 0x00010002000300040005000601020304n],
      ['1:2:3:4:5:6:7::', 0x00010002000300040005000600070000n],
      ['::2:3:4:5:6:7:8', 0x00000002000300040005000600070008n],
      ['FE80::1%eth0', (0xfe80n << 112n) | 1n],
      ['2001:DB8::A', (0x20010db8n << 96n) | 0xan],
    ];
    for (const [text, value] of cases) assert.equal(parseIPv6(text), value, text);
  });

  it('refuses what is not an IPv6 address', () => {
    for (const text of ['', ':', ':::', '1::2::3', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7', '12345::', '::g', '::1.2.3', '::1.2.3.4.5', '1.2.3.4::', '::1.2.3.4:5', '::01.2.3.4', ':1::', '1::2:', 'fe80::1%', '::ffff:256.0.0.1', '1:2:3:4:5:6:7::8', '::1:2:3:4:5:6:7:8', '1:2:3:4::5:6:7:8', '1:2:3:4:5:6:7:1.2.3.4']) {
      assert.equal(parseIPv6(text), undefined, text);
      assert.notEqual(isIP(text), 6, `net.isIP agrees about ${text}`);
    }
  });

  it('reads every textual form of a value as that value, and formats it as RFC 5952 says (the URL parser agrees)', () => {
    fc.assert(
      fc.property(fc.oneof(v6, sparse), fc.boolean(), (value, upper) => {
        const g = groups(value);
        const full = g.map((x) => x.toString(16)).join(':');
        const padded = g.map((x) => x.toString(16).padStart(4, '0')).join(':');
        const dotted = `${g.slice(0, 6).map((x) => x.toString(16)).join(':')}:${g[6]! >> 8}.${g[6]! & 0xff}.${g[7]! >> 8}.${g[7]! & 0xff}`;
        const canonical = formatIPv6(value);
        assert.equal(canonical, urlCanonical(full));
        for (const text of [full, padded, dotted, canonical, canonical.toUpperCase()].map((t) => (upper ? t.toUpperCase() : t))) {
          assert.equal(parseIPv6(text), value, text);
          assert.equal(isIP(text), 6, text);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('accepts exactly what net.isIP accepts as IPv6, on strings made of address characters', () => {
    const text = fc.array(fc.constantFrom('0', '1', 'f', 'F', 'a', ':', ':', ':', '.', '2', '5', '::'), { maxLength: 24 }).map((parts) => parts.join(''));
    fc.assert(
      fc.property(text, (t) => {
        assert.equal(parseIPv6(t) !== undefined, isIP(t) === 6, t);
      }),
      { numRuns: 20000 },
    );
  });
});

describe('IPv4 parsing', () => {
  it('reads dotted quads only, as net.isIP does', () => {
    assert.equal(parseIPv4('127.0.0.1'), 0x7f000001);
    assert.equal(parseIPv4('255.255.255.255'), 0xffffffff);
    for (const text of ['127.1', '0x7f.0.0.1', '010.0.0.1', '2130706433', '1.2.3.4.', '256.0.0.0', '1.2.3.-1', ' 1.2.3.4']) {
      assert.equal(parseIPv4(text), undefined, text);
      assert.equal(isIP(text), 0, text);
    }
    fc.assert(
      fc.property(fc.ipV4(), (t) => {
        assert.equal(parseIPv4(t) === undefined, isIP(t) !== 4, t);
      }),
    );
  });
});

describe('networks', () => {
  it('masks the base, and contains by prefix', () => {
    assert.deepEqual(parseCidr('10.1.2.3/8'), { family: 4, base: 0x0a000000n, bits: 8, mask: 0xff000000n, base4: 0x0a000000, mask4: 0xff000000 });
    assert.ok(contains(cidr('255.255.255.255/32'), parseIp('255.255.255.255')!), 'the top address: no sign trouble');
    assert.ok(contains(cidr('128.0.0.0/1'), parseIp('200.1.2.3')!));
    assert.ok(!contains(cidr('128.0.0.0/1'), parseIp('127.255.255.255')!));
    assert.ok(contains(cidr('100.64.0.0/10'), parseIp('100.127.255.255')!));
    assert.ok(!contains(cidr('100.64.0.0/10'), parseIp('100.128.0.0')!));
    assert.ok(contains(cidr('fc00::/7'), parseIp('fdff::1')!));
    assert.ok(!contains(cidr('fc00::/7'), parseIp('fe00::1')!));
    assert.ok(!contains(cidr('::/0'), parseIp('1.2.3.4')!), 'families do not mix');
    assert.ok(contains(cidr('0.0.0.0/0'), parseIp('1.2.3.4')!));
    assert.equal(typeof parseCidr('10.0.0.0/33'), 'string');
    assert.equal(typeof parseCidr('::/129'), 'string');
  });
});
