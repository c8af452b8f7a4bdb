/**
 * IP addresses as numbers, for the backend policy: an IPv4 address is a 32-bit integer, an
 * IPv6 address a 128-bit bigint. Parsing is strict (what `net.isIP` accepts, and no more):
 * dotted-quad IPv4 without leading zeros; IPv6 with at most one `::`, an optional dotted IPv4
 * tail, and an optional `%zone`, which is dropped (the zone picks an interface, not an address).
 */

export type Ip = { readonly family: 4; readonly value: number } | { readonly family: 6; readonly value: bigint };

/** A network: an address and a prefix length (with its mask, kept for `contains`). */
export interface Cidr {
  readonly family: 4 | 6;
  readonly base: bigint;
  readonly bits: number;
  readonly mask: bigint;
  /** An IPv4 network's base and mask as numbers: IPv4 checks need no bigint arithmetic. */
  readonly base4: number;
  readonly mask4: number;
}

/** The network of `base` (masked here) and `bits`. */
export function cidrOf(family: 4 | 6, base: bigint, bits: number): Cidr {
  const width = family === 4 ? 32n : 128n;
  const mask = ((1n << width) - 1n) ^ ((1n << (width - BigInt(bits))) - 1n);
  const masked = base & mask;
  return family === 4
    ? { family, base: masked, bits, mask, base4: Number(masked), mask4: Number(mask) }
    : { family, base: masked, bits, mask, base4: 0, mask4: 0 };
}

const octet = /^(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]\d|\d)$/;
const hextet = /^[0-9a-fA-F]{1,4}$/;

export function parseIPv4(text: string): number | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let value = 0;
  for (const part of parts) {
    if (!octet.test(part)) return undefined;
    value = value * 256 + Number(part);
  }
  return value;
}

export function parseIPv6(text: string): bigint | undefined {
  const zone = text.indexOf('%');
  if (zone >= 0) {
    if (zone === text.length - 1) return undefined;
    text = text.slice(0, zone);
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const groups = (half: string | undefined, last: boolean): number[] | undefined => {
    if (half === undefined || half === '') return [];
    const out: number[] = [];
    const parts = half.split(':');
    for (const [i, part] of parts.entries()) {
      if (last && i === parts.length - 1 && part.includes('.')) {
        const v4 = parseIPv4(part);
        if (v4 === undefined) return undefined;
        out.push(v4 >>> 16, v4 & 0xffff);
      } else if (hextet.test(part)) {
        out.push(parseInt(part, 16));
      } else {
        return undefined;
      }
    }
    return out;
  };
  const compressed = halves.length === 2;
  const head = groups(halves[0], !compressed);
  const tail = compressed ? groups(halves[1], true) : [];
  if (head === undefined || tail === undefined) return undefined;
  const given = head.length + tail.length;
  if (compressed ? given > 7 : given !== 8) return undefined;
  const all = [...head, ...new Array<number>(8 - given).fill(0), ...tail];
  let value = 0n;
  for (const g of all) value = (value << 16n) | BigInt(g);
  return value;
}

/** An IPv4 or IPv6 literal (no brackets), or undefined. */
export function parseIp(text: string): Ip | undefined {
  const v4 = parseIPv4(text);
  if (v4 !== undefined) return { family: 4, value: v4 };
  const v6 = text.includes(':') ? parseIPv6(text) : undefined;
  return v6 === undefined ? undefined : { family: 6, value: v6 };
}

export function formatIPv4(value: number): string {
  return [value >>> 24, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff].join('.');
}

/** RFC 5952's canonical text: lower case, the longest run of two or more zero groups as `::`. */
export function formatIPv6(value: bigint): string {
  const g: number[] = [];
  for (let i = 7; i >= 0; i--) g.push(Number((value >> BigInt(i * 16)) & 0xffffn));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (from: number, to: number): string => g.slice(from, to).map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(0, 8) : `${hex(0, best)}::${hex(best + bestLen, 8)}`;
}

export function formatIp(ip: Ip): string {
  return ip.family === 4 ? formatIPv4(ip.value) : formatIPv6(ip.value);
}

/** Parses `ADDRESS/BITS` (or a bare address: all bits); the address is masked to the prefix. */
export function parseCidr(text: string): Cidr | string {
  const slash = text.indexOf('/');
  const addressText = slash < 0 ? text : text.slice(0, slash);
  const ip = parseIp(addressText);
  if (ip === undefined || addressText.includes('%')) return `"${addressText}" is not an IP address`;
  const width = ip.family === 4 ? 32 : 128;
  const bitsText = slash < 0 ? String(width) : text.slice(slash + 1);
  if (!/^\d{1,3}$/.test(bitsText) || Number(bitsText) > width) return `/${bitsText} is not a valid prefix for ${addressText}`;
  return cidrOf(ip.family, BigInt(ip.value), Number(bitsText));
}

/** The CIDR literal for code that knows it is valid (tables of ranges). */
export function cidr(text: string): Cidr {
  const c = parseCidr(text);
  if (typeof c === 'string') throw new Error(c);
  return c;
}

export function contains(network: Cidr, ip: Ip): boolean {
  if (ip.family === 4) return network.family === 4 && (ip.value & network.mask4) >>> 0 === network.base4;
  return network.family === 6 && (ip.value & network.mask) === network.base;
}

export function formatCidr(c: Cidr): string {
  const address = c.family === 4 ? formatIPv4(Number(c.base)) : formatIPv6(c.base);
  return `${address}/${c.bits}`;
}
