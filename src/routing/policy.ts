import { isIP } from 'node:net';
import { type Endpoint, formatEndpoint } from './endpoint.js';
import { HostAddresses } from './host-addresses.js';
import { type Cidr, contains, formatCidr, formatIp, type Ip, cidrOf, parseCidr, parseIp } from './ip.js';
import { type Carried, classify, type DeniedRange } from './ranges.js';
import type { CachingResolver } from './resolver.js';

/** An `--allow` rule: a network, and optionally a port or a port range on it. */
export interface AllowRule {
  readonly text: string;
  readonly network: Cidr;
  readonly ports?: readonly [number, number];
}

/**
 * Parses `CIDR`, `CIDR:PORT` or `CIDR:LO-HI`; IPv6 in brackets, as `[::1]/128:80`. A bare
 * address is a /32 (or /128). An IPv4-mapped IPv6 network (`[::ffff:10.0.0.0]/104`) is the
 * IPv4 network it maps. Returns a reason string when the text is not a rule.
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
  const parsed = parseCidr(prefix === undefined ? address : `${address}/${prefix}`);
  if (typeof parsed === 'string') return parsed;
  const network = mappedToIPv4(parsed);
  if (ports === undefined) return { text, network };
  const range = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(ports);
  if (!range) return `"${ports}" is not a port or a port range`;
  const lo = Number(range[1]);
  const hi = range[2] === undefined ? lo : Number(range[2]);
  if (lo < 1 || hi > 65535 || lo > hi) return `"${ports}" is not a port range within 1-65535`;
  return { text, network, ports: [lo, hi] };
}

function mappedToIPv4(c: Cidr): Cidr {
  if (c.family !== 6 || c.bits < 96 || c.base >> 32n !== 0xffffn) return c;
  return cidrOf(4, c.base & 0xffffffffn, c.bits - 96);
}

export type PolicyVerdict = { readonly allowed: true } | { readonly allowed: false; readonly reason: string };

/** Addresses that reach this host whatever its interfaces say: loopback and unspecified. */
function reachesThisHost(ip: Ip): boolean {
  return ip.family === 4 ? ip.value >>> 24 === 127 || ip.value >>> 24 === 0 : ip.value === 0n || ip.value === 1n;
}

/** The one reading of this host's addresses that every policy shares, unless given another. */
let sharedHostAddresses: HostAddresses | undefined;

/**
 * Hosting mode's backend policy (the README's "Backend policy"). An address is denied when it
 * is one of this host's own (non-loopback) interface addresses, or lies in a special-purpose
 * range (ranges.ts), or is an IPv6 form that carries an IPv4 address so denied, and no rule
 * opens it. The service's own ports on this host are never allowed, whatever the rules say.
 */
export class BackendPolicy {
  readonly #rules: readonly AllowRule[];
  readonly #ownPorts: (port: number) => boolean;
  readonly #host: HostAddresses;

  constructor(rules: readonly AllowRule[], ownPorts: (port: number) => boolean, hostAddresses?: HostAddresses) {
    this.#rules = rules;
    this.#ownPorts = ownPorts;
    this.#host = hostAddresses ?? (sharedHostAddresses ??= new HostAddresses());
  }

  /** Its rules as written (`--allow` texts): what another process needs to build the same policy. */
  get ruleTexts(): string[] {
    return this.#rules.map((r) => r.text);
  }

  /** The same policy with a tenant's own rules added. */
  with(rules: readonly AllowRule[]): BackendPolicy {
    return rules.length === 0 ? this : new BackendPolicy([...this.#rules, ...rules], this.#ownPorts, this.#host);
  }

  /** Checks one resolved address (an IP literal, as a router or the resolver gives it). */
  check(address: string, port: number): PolicyVerdict {
    const ip = isIP(address) === 0 ? undefined : parseIp(address);
    if (ip === undefined) return deny(`"${address}" is not an IP address`);
    const { denied, embedded } = classify(ip);
    const subjects: readonly Carried[] = [{ ip, via: '' }, ...embedded];
    const carried = (c: Carried): string => (c.ip === ip ? '' : `${address} carries ${formatIp(c.ip)} (${c.via}): `);
    const mine = subjects.map((s) => this.#host.find(s.ip));
    const own = subjects.find((s, i) => reachesThisHost(s.ip) || mine[i] !== undefined);
    if (own !== undefined && this.#ownPorts(port)) {
      return deny(`${carried(own)}${formatEndpoint({ host: formatIp(own.ip), port })} is one of the service's own ports`);
    }
    for (const [i, s] of subjects.entries()) {
      const ours = mine[i];
      // Loopback and unspecified addresses are their ranges' to deny (and a range rule opens them).
      if (ours === undefined || reachesThisHost(s.ip) || this.#opens(s.ip, port, true)) continue;
      const shown = formatIp(s.ip);
      return deny(`${carried(s)}${shown} is an address of this host (${ours.interface}); only a rule for that address opens it, such as --allow ${exactRule(s.ip, port)}`);
    }
    if (denied !== undefined && !this.#opens(ip, port, denied.exact === true)) {
      const carries = embedded.map((c) => `${formatIp(c.ip)} (${c.via})`).join(' and ');
      return deny(inRange(address, ip, denied, port) + (carries === '' ? '' : `; it carries ${carries}`));
    }
    for (const c of embedded) {
      const range = classify(c.ip).denied;
      if (range !== undefined && !this.#opens(c.ip, port, range.exact === true)) return deny(carried(c) + inRange(formatIp(c.ip), c.ip, range, port));
    }
    return { allowed: true };
  }

  /** Whether a rule opens `ip:port`; `exact`: only a rule for that one address. */
  #opens(ip: Ip, port: number, exact: boolean): boolean {
    const width = ip.family === 4 ? 32 : 128;
    return this.#rules.some(
      (r) => contains(r.network, ip) && (!exact || r.network.bits === width) && (r.ports === undefined || (port >= r.ports[0] && port <= r.ports[1])),
    );
  }
}

function deny(reason: string): PolicyVerdict {
  return { allowed: false, reason };
}

function inRange(shown: string, ip: Ip, range: DeniedRange, port: number): string {
  const endpoint = formatEndpoint({ host: formatIp(ip), port });
  const opener = range.exact === true ? `only a rule for that address opens it, such as --allow ${exactRule(ip, port)}` : `no --allow rule covers ${endpoint}`;
  return `${shown} is in ${formatCidr(range.network)} (${range.why}) and ${opener}`;
}

/** The `--allow` rule for one address and port: `10.0.0.5/32:80`, `[fd00::1]/128:80`. */
function exactRule(ip: Ip, port: number): string {
  return ip.family === 4 ? `${formatIp(ip)}/32:${port}` : `[${formatIp(ip)}]/128:${port}`;
}

/** The host to connect to for an allowed address: an IPv4-mapped IPv6 address is its IPv4 address. */
function connectHost(address: string): string {
  const ip = parseIp(address);
  return ip?.family === 6 && ip.value >> 32n === 0xffffn ? formatIp({ family: 4, value: Number(ip.value & 0xffffffffn) }) : address;
}

/** What the policy made of a decision's candidates. */
export interface Admission {
  /** Addresses to try, in the decision's order (a name may stand for several). */
  readonly candidates: readonly Endpoint[];
  /** Why candidates were refused, for the log and the rejection record. */
  readonly denied: readonly string[];
  /** Names that did not resolve (`host:port`). */
  readonly unresolved: readonly string[];
  /** Why each of `unresolved` did not resolve (not found, timed out, the tenant's lookup budget). */
  readonly unresolvedReasons: readonly string[];
}

/** Resolves each candidate and keeps the addresses the policy allows. */
export async function admit(remotes: readonly Endpoint[], policy: BackendPolicy, resolver: CachingResolver): Promise<Admission> {
  const candidates: Endpoint[] = [];
  const denied: string[] = [];
  const unresolved: string[] = [];
  const unresolvedReasons: string[] = [];
  for (const remote of remotes) {
    let addresses: readonly string[];
    try {
      addresses = await resolver.resolve(remote.host);
    } catch (err) {
      unresolved.push(formatEndpoint(remote));
      unresolvedReasons.push(err instanceof Error ? err.message : `${remote.host} did not resolve`);
      continue;
    }
    for (const address of addresses) {
      const verdict = policy.check(address, remote.port);
      if (verdict.allowed) candidates.push({ host: connectHost(address), port: remote.port });
      else denied.push(verdict.reason);
    }
  }
  return { candidates, denied, unresolved, unresolvedReasons };
}

/** Why an admission has no candidates, in one line: every denial, then every name that did not resolve. */
export function admissionReason(a: Admission): string {
  const parts: string[] = [];
  if (a.denied.length > 0) parts.push(`backend not allowed: ${a.denied.join('; ')}`);
  if (a.unresolvedReasons.length > 0) parts.push(`not resolved: ${a.unresolvedReasons.join('; ')}`);
  return parts.join('; ');
}
