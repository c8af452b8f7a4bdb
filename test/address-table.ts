/**
 * Every address form the backend policy must deny by default, with the words its reason must
 * contain, and addresses it must allow; shared by the policy's unit test and the dry-run test.
 */
import { networkInterfaces } from 'node:os';

export interface DeniedRow {
  /** As a router returns it. */
  readonly remote: string;
  /** Each must appear in the reason. */
  readonly reason: readonly string[];
}

const loopback = ['127.0.0.0/8 (loopback, RFC 1122)', 'no --allow rule covers 127.0.0.1:80'];
const metadata = ['169.254.169.254/32 (cloud metadata service', 'only a rule for that address opens it, such as --allow 169.254.169.254/32:80'];

export const deniedByDefault: readonly DeniedRow[] = [
  // IPv4 special-purpose ranges.
  { remote: '10.0.0.5:80', reason: ['10.0.0.5 is in 10.0.0.0/8 (private, RFC 1918) and no --allow rule covers 10.0.0.5:80'] },
  { remote: '10.255.255.255:80', reason: ['10.0.0.0/8 (private, RFC 1918)'] },
  { remote: '172.16.0.1:80', reason: ['172.16.0.0/12 (private, RFC 1918)'] },
  { remote: '172.31.255.255:80', reason: ['172.16.0.0/12 (private, RFC 1918)'] },
  { remote: '192.168.1.1:80', reason: ['192.168.0.0/16 (private, RFC 1918)'] },
  { remote: '100.64.0.1:80', reason: ['100.64.0.0/10 (shared address space (CGNAT), RFC 6598)'] },
  { remote: '100.127.255.255:80', reason: ['100.64.0.0/10'] },
  { remote: '100.100.100.200:80', reason: ['100.100.100.200/32 (cloud metadata service: Alibaba Cloud)', '--allow 100.100.100.200/32:80'] },
  { remote: '127.0.0.1:80', reason: ['127.0.0.1 is in', ...loopback] },
  { remote: '127.1.2.3:80', reason: ['127.0.0.0/8 (loopback'] },
  { remote: '0.0.0.0:80', reason: ['0.0.0.0/8 ("this network"'] },
  { remote: '0.1.2.3:80', reason: ['0.0.0.0/8 ("this network"'] },
  { remote: '169.254.1.1:80', reason: ['169.254.0.0/16 (link-local, RFC 3927)'] },
  { remote: '169.254.169.254:80', reason: metadata },
  { remote: '169.254.170.2:80', reason: ['169.254.170.2/32 (cloud metadata service: AWS ECS'] },
  { remote: '192.0.0.8:80', reason: ['192.0.0.0/24 (IETF protocol assignments'] },
  { remote: '192.0.2.200:80', reason: ['192.0.2.0/24 (documentation'] },
  { remote: '198.51.100.1:80', reason: ['198.51.100.0/24 (documentation'] },
  { remote: '203.0.113.1:80', reason: ['203.0.113.0/24 (documentation'] },
  { remote: '198.18.0.1:80', reason: ['198.18.0.0/15 (benchmarking'] },
  { remote: '198.19.255.255:80', reason: ['198.18.0.0/15 (benchmarking'] },
  { remote: '192.88.99.1:80', reason: ['192.88.99.0/24 (6to4 relay anycast'] },
  { remote: '224.0.0.1:80', reason: ['224.0.0.0/4 (multicast'] },
  { remote: '239.255.255.250:80', reason: ['224.0.0.0/4 (multicast'] },
  { remote: '240.0.0.1:80', reason: ['240.0.0.0/4 (reserved'] },
  { remote: '255.255.255.255:80', reason: ['255.255.255.255/32 (limited broadcast'] },
  // IPv6 special-purpose ranges.
  { remote: '[::1]:80', reason: ['::1 is in ::1/128 (loopback, RFC 4291) and no --allow rule covers [::1]:80'] },
  { remote: '[::]:80', reason: ['::/128 (unspecified'] },
  { remote: '[fc00::1]:80', reason: ['fc00::/7 (unique local (ULA)'] },
  { remote: '[fd12:3456::1]:80', reason: ['fc00::/7 (unique local (ULA)', '[fd12:3456::1]:80'] },
  { remote: '[fd00:ec2::254]:80', reason: ['fd00:ec2::254/128 (cloud metadata service: AWS (IPv6))', '--allow [fd00:ec2::254]/128:80'] },
  { remote: '[fe80::1]:80', reason: ['fe80::/10 (link-local'] },
  { remote: '[fe80::1%lo]:80', reason: ['fe80::/10 (link-local'] },
  { remote: '[fec0::1]:80', reason: ['fec0::/10 (site-local'] },
  { remote: '[ff02::1]:80', reason: ['ff00::/8 (multicast'] },
  { remote: '[2001:db8::1]:80', reason: ['2001:db8::/32 (documentation'] },
  { remote: '[3fff::1]:80', reason: ['3fff::/20 (documentation, RFC 9637)'] },
  { remote: '[100::1]:80', reason: ['100::/64 (discard-only'] },
  { remote: '[2001:20::1]:80', reason: ['2001:20::/28 (ORCHIDv2'] },
  { remote: '[2001:2::1]:80', reason: ['2001:2::/48 (benchmarking'] },
  { remote: '[5f00::1]:80', reason: ['5f00::/16 (SRv6'] },
  { remote: '[::1:0:0:1]:80', reason: ['::/8 (reserved'] },
  // IPv6 forms that carry an IPv4 address: checked as that IPv4 address.
  { remote: '[::ffff:127.0.0.1]:80', reason: ['::ffff:127.0.0.1 carries 127.0.0.1 (IPv4-mapped, RFC 4291): 127.0.0.1 is in', ...loopback] },
  { remote: '[::ffff:7f00:1]:80', reason: ['carries 127.0.0.1 (IPv4-mapped', ...loopback] },
  { remote: '[::FFFF:10.0.0.5]:80', reason: ['carries 10.0.0.5 (IPv4-mapped', '10.0.0.0/8 (private'] },
  { remote: '[::127.0.0.1]:80', reason: ['::127.0.0.1 carries 127.0.0.1 (IPv4-compatible, RFC 4291)', ...loopback] },
  { remote: '[::7f00:1]:80', reason: ['::7f00:1 carries 127.0.0.1 (IPv4-compatible', ...loopback] },
  { remote: '[::ffff:0:7f00:1]:80', reason: ['::ffff:0:7f00:1 carries 127.0.0.1 (SIIT, RFC 2765)', ...loopback] },
  { remote: '[::ffff:0:127.0.0.1]:80', reason: ['carries 127.0.0.1 (SIIT', ...loopback] },
  { remote: '[64:ff9b::7f00:1]:80', reason: ['64:ff9b::7f00:1 carries 127.0.0.1 (NAT64, RFC 6052)', ...loopback] },
  { remote: '[64:ff9b::127.0.0.1]:80', reason: ['carries 127.0.0.1 (NAT64', ...loopback] },
  { remote: '[64:ff9b::a9fe:a9fe]:80', reason: ['64:ff9b::a9fe:a9fe carries 169.254.169.254 (NAT64, RFC 6052)', ...metadata] },
  { remote: '[64:ff9b::a00:5]:80', reason: ['carries 10.0.0.5 (NAT64', '10.0.0.0/8 (private'] },
  { remote: '[64:ff9b:1::808:808]:80', reason: ['64:ff9b:1::/48 (local-use IPv4/IPv6 translation, RFC 8215)'] },
  { remote: '[64:ff9b:1::7f00:1]:80', reason: ['64:ff9b:1::/48', 'no --allow rule covers [64:ff9b:1::7f00:1]:80; it carries 127.0.0.1 (local-use NAT64, RFC 8215, read as a /96)'] },
  { remote: '[2002:7f00:1::]:80', reason: ['2002:7f00:1:: carries 127.0.0.1 (6to4, RFC 3056)', ...loopback] },
  { remote: '[2002:a9fe:a9fe::]:80', reason: ['2002:a9fe:a9fe:: carries 169.254.169.254 (6to4, RFC 3056)', ...metadata] },
  { remote: '[2002:c0a8:101::1]:80', reason: ['carries 192.168.1.1 (6to4', '192.168.0.0/16 (private'] },
  { remote: '[2001:0:7f00:1::]:80', reason: ['2001:0:7f00:1:: carries 127.0.0.1 (Teredo, RFC 4380, server)', ...loopback] },
  { remote: '[2001:0:808:808:0:0:80ff:fffe]:80', reason: ['carries 127.0.0.1 (Teredo, RFC 4380, client, the last 32 bits XOR 0xffffffff)', ...loopback] },
  { remote: '[2001:0:808:808::f5ff:fffa]:80', reason: ['carries 10.0.0.5 (Teredo, RFC 4380, client', '10.0.0.0/8 (private'] },
];

/** Public addresses, including the edges just outside denied ranges, and IPv6 forms that carry public IPv4 addresses. */
export const allowedByDefault: readonly string[] = [
  '8.8.8.8:53',
  '1.1.1.1:443',
  '11.0.0.1:80',
  '100.63.255.255:80',
  '100.128.0.0:80',
  '172.15.255.255:80',
  '172.32.0.0:80',
  '192.167.255.255:80',
  '192.169.0.0:80',
  '198.17.255.255:80',
  '198.20.0.0:80',
  '223.255.255.255:80',
  '[2606:4700:4700::1111]:443',
  '[::ffff:8.8.8.8]:53',
  '[64:ff9b::808:808]:53',
  '[2002:808:808::1]:80',
  '[2001:0:808:808::f7f7:f7f7]:80',
  '[2001:4860:4860::8888]:53',
  '[2001:db9::1]:80',
  '[2001:3::1]:80',
];

/** A non-loopback address of this machine's interfaces, if it has one. */
export function hostAddress(): { address: string; family: 4 | 6; name: string } | undefined {
  for (const [name, list] of Object.entries(networkInterfaces())) {
    for (const i of list ?? []) {
      if (!i.internal && !i.address.startsWith('fe80:')) return { address: i.address, family: i.family === 'IPv4' ? 4 : 6, name };
    }
  }
  return undefined;
}
