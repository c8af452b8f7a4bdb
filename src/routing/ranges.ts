import { type Cidr, cidr, contains, type Ip } from './ip.js';

/**
 * The address ranges hosting mode denies by default, from the IANA IPv4 and IPv6
 * special-purpose address registries (RFC 6890) plus the cloud metadata services, and the
 * IPv6 forms that carry an IPv4 address. The README's table is this one, in words.
 */

/** A denied range. `exact`: only a rule for the address itself (a /32 or /128) opens it. */
export interface DeniedRange {
  readonly network: Cidr;
  readonly text: string;
  readonly why: string;
  readonly exact?: true;
}

/** An IPv6 form that carries IPv4 addresses: each one is checked as IPv4. */
export interface EmbeddingForm {
  readonly network: Cidr;
  readonly text: string;
  readonly name: string;
  /** The IPv4 addresses the IPv6 address carries, each with its role when the form carries two. */
  readonly embedded: (value: bigint) => readonly { readonly value: number; readonly role?: string }[];
  /** The form is itself a denied range (besides what it carries). */
  readonly denied?: DeniedRange;
}

function range(text: string, why: string, exact?: true): DeniedRange {
  return { network: cidr(text), text, why, ...(exact ? { exact } : {}) };
}

/** Most specific first: the first range that holds an address names it in the reason. */
export const deniedIPv4: readonly DeniedRange[] = [
  range('169.254.169.254/32', 'cloud metadata service: AWS, GCP, Azure, OCI, DigitalOcean', true),
  range('169.254.170.2/32', 'cloud metadata service: AWS ECS task credentials', true),
  range('100.100.100.200/32', 'cloud metadata service: Alibaba Cloud', true),
  range('255.255.255.255/32', 'limited broadcast, RFC 919'),
  range('0.0.0.0/8', '"this network", RFC 791; 0.0.0.0 reaches this host'),
  range('10.0.0.0/8', 'private, RFC 1918'),
  range('100.64.0.0/10', 'shared address space (CGNAT), RFC 6598'),
  range('127.0.0.0/8', 'loopback, RFC 1122'),
  range('169.254.0.0/16', 'link-local, RFC 3927'),
  range('172.16.0.0/12', 'private, RFC 1918'),
  range('192.0.0.0/24', 'IETF protocol assignments, RFC 6890'),
  range('192.0.2.0/24', 'documentation (TEST-NET-1), RFC 5737'),
  range('192.88.99.0/24', '6to4 relay anycast, RFC 7526'),
  range('192.168.0.0/16', 'private, RFC 1918'),
  range('198.18.0.0/15', 'benchmarking, RFC 2544'),
  range('198.51.100.0/24', 'documentation (TEST-NET-2), RFC 5737'),
  range('203.0.113.0/24', 'documentation (TEST-NET-3), RFC 5737'),
  range('224.0.0.0/4', 'multicast, RFC 5771'),
  range('240.0.0.0/4', 'reserved, RFC 1112'),
];

const low32 = (v: bigint): number => Number(v & 0xffffffffn);
const last32 = (v: bigint): readonly { value: number }[] => [{ value: low32(v) }];

/** Checked before the denied IPv6 ranges; `::` and `::1` come first, as they are not IPv4-compatible forms. */
export const embeddingForms: readonly EmbeddingForm[] = [
  { network: cidr('::ffff:0:0/96'), text: '::ffff:0:0/96', name: 'IPv4-mapped, RFC 4291', embedded: last32 },
  { network: cidr('::ffff:0:0:0/96'), text: '::ffff:0:0:0/96', name: 'SIIT, RFC 2765', embedded: last32 },
  { network: cidr('64:ff9b::/96'), text: '64:ff9b::/96', name: 'NAT64, RFC 6052', embedded: last32 },
  {
    network: cidr('64:ff9b:1::/48'),
    text: '64:ff9b:1::/48',
    name: 'local-use NAT64, RFC 8215, read as a /96',
    embedded: last32,
    denied: range('64:ff9b:1::/48', 'local-use IPv4/IPv6 translation, RFC 8215'),
  },
  { network: cidr('2002::/16'), text: '2002::/16', name: '6to4, RFC 3056', embedded: (v) => [{ value: Number((v >> 80n) & 0xffffffffn) }] },
  {
    network: cidr('2001::/32'),
    text: '2001::/32',
    name: 'Teredo, RFC 4380',
    embedded: (v) => [
      { value: Number((v >> 64n) & 0xffffffffn), role: 'server' },
      { value: (low32(v) ^ 0xffffffff) >>> 0, role: 'client, the last 32 bits XOR 0xffffffff' },
    ],
  },
];

/** `::/96` (IPv4-compatible, RFC 4291, deprecated) after `::` and `::1`. */
const compatible: EmbeddingForm = { network: cidr('::/96'), text: '::/96', name: 'IPv4-compatible, RFC 4291', embedded: last32 };

const allForms = [...embeddingForms, compatible];

export const deniedIPv6: readonly DeniedRange[] = [
  range('::1/128', 'loopback, RFC 4291'),
  range('::/128', 'unspecified, RFC 4291; reaches this host'),
  range('fd00:ec2::254/128', 'cloud metadata service: AWS (IPv6)', true),
  range('100::/64', 'discard-only, RFC 6666'),
  range('2001:2::/48', 'benchmarking, RFC 5180'),
  range('2001:10::/28', 'ORCHID (deprecated), RFC 4843'),
  range('2001:20::/28', 'ORCHIDv2, RFC 7343'),
  range('2001:db8::/32', 'documentation, RFC 3849'),
  range('3fff::/20', 'documentation, RFC 9637'),
  range('5f00::/16', 'SRv6 SIDs, RFC 9602'),
  range('::/8', 'reserved by the IETF, RFC 4291'),
  range('fc00::/7', 'unique local (ULA), RFC 4193'),
  range('fe80::/10', 'link-local, RFC 4291'),
  range('fec0::/10', 'site-local (deprecated), RFC 3879'),
  range('ff00::/8', 'multicast, RFC 4291'),
];

/**
 * What the default policy makes of one address: the range that denies it (if any) and, for
 * an IPv6 form that carries IPv4 addresses, those addresses, each to be checked as IPv4.
 */
export interface Classification {
  readonly denied?: DeniedRange;
  readonly embedded: readonly Carried[];
}

/** An IPv4 address an IPv6 address carries, and how: "NAT64, RFC 6052". */
export interface Carried {
  readonly ip: Ip;
  readonly via: string;
}

export function classify(ip: Ip): Classification {
  if (ip.family === 4) {
    const denied = deniedIPv4.find((r) => contains(r.network, ip));
    return denied === undefined ? { embedded: [] } : { denied, embedded: [] };
  }
  const unspecifiedOrLoopback = ip.value === 0n || ip.value === 1n;
  const form = unspecifiedOrLoopback ? undefined : allForms.find((f) => contains(f.network, ip));
  if (form !== undefined) {
    const embedded = form.embedded(ip.value).map(({ value, role }): Carried => ({ ip: { family: 4, value }, via: role === undefined ? form.name : `${form.name}, ${role}` }));
    return form.denied === undefined ? { embedded } : { denied: form.denied, embedded };
  }
  const denied = deniedIPv6.find((r) => contains(r.network, ip));
  return denied === undefined ? { embedded: [] } : { denied, embedded: [] };
}
