import { BlockList, isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { type Endpoint, formatEndpoint } from './endpoint.js';
import type { CachingResolver } from './resolver.js';

/** An `--allow` rule: a network, and optionally a port or a port range on it. */
export interface AllowRule {
  readonly text: string;
  readonly network: BlockList;
  readonly ports?: readonly [number, number];
}

/**
 * Parses `CIDR`, `CIDR:PORT` or `CIDR:LO-HI`; IPv6 in brackets, as `[::1]/128:80`. A bare
 * address is a /32 (or /128). Returns a reason string when the text is not a rule.
 */
export function parseAllowRule(text: string): AllowRule | string {
  let address: string;
  let prefix: string | undefined;
  let ports: string | undefined;
  const v6 = /^\[([0-9a-fA-F:.]+)\](?:\/(\d{1,3}))?(?::(.+))?$/.exec(text);
  const v4 = /^([0-9.]+)(?:\/(\d{1,2}))?(?::(.+))?$/.exec(text);
  if (v6) [, address = '', prefix, ports] = v6;
  else if (v4) [, address = '', prefix, ports] = v4;
  else if (/^[0-9a-fA-F:.]+(\/\d{1,3})?$/.test(text)) [address = '', prefix] = text.split('/');
  else return `"${text}" is not CIDR, CIDR:PORT or CIDR:LO-HI (IPv6 in brackets: [::1]/128:80)`;
  const family = isIP(address);
  if (family === 0 || (v6 && family !== 6) || (v4 && family !== 4)) return `"${address}" is not an IP address`;
  const bits = prefix === undefined ? (family === 4 ? 32 : 128) : Number(prefix);
  if (bits > (family === 4 ? 32 : 128)) return `/${bits} is not a valid prefix for ${address}`;
  const network = new BlockList();
  network.addSubnet(address, bits, family === 4 ? 'ipv4' : 'ipv6');
  if (ports === undefined) return { text, network };
  const range = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(ports);
  if (!range) return `"${ports}" is not a port or a port range`;
  const lo = Number(range[1]);
  const hi = range[2] === undefined ? lo : Number(range[2]);
  if (lo < 1 || hi > 65535 || lo > hi) return `"${ports}" is not a port range within 1-65535`;
  return { text, network, ports: [lo, hi] };
}

/** Addresses hosting mode refuses unless a rule allows them: loopback, link-local, unspecified, multicast. */
const special = new BlockList();
special.addSubnet('127.0.0.0', 8, 'ipv4');
special.addSubnet('169.254.0.0', 16, 'ipv4');
special.addSubnet('0.0.0.0', 8, 'ipv4');
special.addSubnet('224.0.0.0', 4, 'ipv4');
special.addAddress('255.255.255.255', 'ipv4');
special.addAddress('::1', 'ipv6');
special.addAddress('::', 'ipv6');
special.addSubnet('fe80::', 10, 'ipv6');
special.addSubnet('ff00::', 8, 'ipv6');

export type PolicyVerdict = { readonly allowed: true } | { readonly allowed: false; readonly reason: string };

/**
 * Hosting mode's backend policy. An address is allowed unless it is special (loopback,
 * link-local, unspecified, multicast) and no rule covers it; the service's own ports on its
 * own addresses are never allowed, whatever the rules say.
 */
export class BackendPolicy {
  readonly #rules: readonly AllowRule[];
  readonly #ownPorts: (port: number) => boolean;

  constructor(rules: readonly AllowRule[], ownPorts: (port: number) => boolean) {
    this.#rules = rules;
    this.#ownPorts = ownPorts;
  }

  /** The same policy with a tenant's own rules added. */
  with(rules: readonly AllowRule[]): BackendPolicy {
    return rules.length === 0 ? this : new BackendPolicy([...this.#rules, ...rules], this.#ownPorts);
  }

  /** Checks one resolved address (an IP literal). */
  check(address: string, port: number): PolicyVerdict {
    const ip = unmapped(address);
    const type = isIP(ip) === 6 ? 'ipv6' : 'ipv4';
    if (this.#ownPorts(port) && isOwnAddress(ip, type)) {
      return { allowed: false, reason: `${ip}:${port} is one of the service's own ports` };
    }
    if (!special.check(ip, type)) return { allowed: true };
    const rule = this.#rules.find((r) => r.network.check(ip, type) && (r.ports === undefined || (port >= r.ports[0] && port <= r.ports[1])));
    return rule === undefined
      ? { allowed: false, reason: `${ip} is a loopback, link-local, unspecified or multicast address and no --allow rule covers ${ip}:${port}` }
      : { allowed: true };
  }
}

/** `::ffff:10.0.0.1` is 10.0.0.1. */
export function unmapped(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m ? m[1]! : address;
}

/** Whether an address reaches this machine: special ones and the addresses of its interfaces. */
function isOwnAddress(ip: string, type: 'ipv4' | 'ipv6'): boolean {
  if (special.check(ip, type)) return true;
  for (const list of Object.values(networkInterfaces())) {
    for (const i of list ?? []) if (unmapped(i.address) === ip) return true;
  }
  return false;
}

/** What the policy made of a decision's candidates. */
export interface Admission {
  /** Addresses to try, in the decision's order (a name may stand for several). */
  readonly candidates: readonly Endpoint[];
  /** Why candidates were refused, for the log and the rejection record. */
  readonly denied: readonly string[];
  /** Names that did not resolve. */
  readonly unresolved: readonly string[];
}

/** Resolves each candidate and keeps the addresses the policy allows. */
export async function admit(remotes: readonly Endpoint[], policy: BackendPolicy, resolver: CachingResolver): Promise<Admission> {
  const candidates: Endpoint[] = [];
  const denied: string[] = [];
  const unresolved: string[] = [];
  for (const remote of remotes) {
    let addresses: readonly string[];
    try {
      addresses = await resolver.resolve(remote.host);
    } catch {
      unresolved.push(formatEndpoint(remote));
      continue;
    }
    for (const address of addresses) {
      const verdict = policy.check(address, remote.port);
      if (verdict.allowed) candidates.push({ host: unmapped(address), port: remote.port });
      else denied.push(verdict.reason);
    }
  }
  return { candidates, denied, unresolved };
}
