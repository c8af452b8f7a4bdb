import { isIPv4, isIPv6 } from 'node:net';

/** The client's side of a connection as the PROXY protocol carries it. */
export interface ProxiedAddresses {
  readonly sourceAddress: string;
  readonly sourcePort: number;
  readonly destinationAddress: string;
  readonly destinationPort: number;
}

const v2Signature = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

/** HAProxy's PROXY protocol header, version 1 (text) or 2 (binary), sent first to the backend. */
export function proxyProtocolHeader(version: 1 | 2, a: ProxiedAddresses): Buffer {
  const src = unmapped(a.sourceAddress);
  const dst = unmapped(a.destinationAddress);
  const family = isIPv4(src) && isIPv4(dst) ? 4 : isIPv6(src) && isIPv6(dst) ? 6 : 0;
  return version === 1 ? v1(family, src, dst, a) : v2(family, src, dst, a);
}

function v1(family: 0 | 4 | 6, src: string, dst: string, a: ProxiedAddresses): Buffer {
  if (family === 0) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
  return Buffer.from(`PROXY TCP${family} ${src} ${dst} ${a.sourcePort} ${a.destinationPort}\r\n`, 'latin1');
}

function v2(family: 0 | 4 | 6, src: string, dst: string, a: ProxiedAddresses): Buffer {
  const addressBytes = family === 4 ? 12 : family === 6 ? 36 : 0;
  const header = Buffer.alloc(16 + addressBytes);
  v2Signature.copy(header, 0);
  header[12] = family === 0 ? 0x20 : 0x21; // version 2; LOCAL when the family is unknown, else PROXY
  header[13] = family === 4 ? 0x11 : family === 6 ? 0x21 : 0x00; // TCP over IPv4 / IPv6, or UNSPEC
  header.writeUInt16BE(addressBytes, 14);
  if (family === 4) {
    writeIPv4(header, 16, src);
    writeIPv4(header, 20, dst);
    header.writeUInt16BE(a.sourcePort, 24);
    header.writeUInt16BE(a.destinationPort, 26);
  } else if (family === 6) {
    writeIPv6(header, 16, src);
    writeIPv6(header, 32, dst);
    header.writeUInt16BE(a.sourcePort, 48);
    header.writeUInt16BE(a.destinationPort, 50);
  }
  return header;
}

/** `::ffff:1.2.3.4`, as Node reports IPv4 clients of a dual-stack listener, is IPv4. */
function unmapped(address: string): string {
  return address.startsWith('::ffff:') && isIPv4(address.slice(7)) ? address.slice(7) : address;
}

function writeIPv4(buf: Buffer, offset: number, address: string): void {
  const parts = address.split('.');
  for (let i = 0; i < 4; i++) buf[offset + i] = Number(parts[i]);
}

function writeIPv6(buf: Buffer, offset: number, address: string): void {
  let text = address;
  const zone = text.indexOf('%');
  if (zone >= 0) text = text.slice(0, zone);
  // An embedded IPv4 tail (::ffff:1.2.3.4 with a non-IPv4 peer) becomes two groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4[1]!.split('.').map(Number) as [number, number, number, number];
    text = text.slice(0, -v4[1]!.length) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const headGroups = head === '' ? [] : head.split(':');
  const tailGroups = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups =
    tail === undefined ? headGroups : [...headGroups, ...Array<string>(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups];
  for (let i = 0; i < 8; i++) buf.writeUInt16BE(parseInt(groups[i] ?? '0', 16), offset + i * 2);
}
