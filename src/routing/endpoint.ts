import { isIP } from 'node:net';

/** A backend address as a router names it: `host:port`, `[v6]:port`. */
export interface Endpoint {
  /** Host name or IP address, without brackets. */
  readonly host: string;
  readonly port: number;
}

const hostname = /^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$/;
const port = /^[0-9]{1,5}$/;

/** Parses `host:port` strictly; returns a reason string when it is not one. */
export function parseEndpoint(text: string): Endpoint | string {
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close < 0 || text[close + 1] !== ':') return `"${text}" is not [ipv6]:port`;
    host = text.slice(1, close);
    portText = text.slice(close + 2);
    if (isIP(host) !== 6) return `"${host}" is not an IPv6 address`;
  } else {
    const colon = text.lastIndexOf(':');
    if (colon <= 0) return `"${text}" is not host:port`;
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) return `"${text}": an IPv6 address needs brackets, as [::1]:port`;
    if (isIP(host) === 0 && !hostname.test(host)) return `"${host}" is not a valid host name`;
  }
  if (!port.test(portText)) return `"${portText}" is not a port number`;
  const n = Number(portText);
  if (n < 1 || n > 65535) return `port ${n} is out of range 1-65535`;
  return { host, port: n };
}

export function formatEndpoint(e: Endpoint): string {
  return isIP(e.host) === 6 ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`;
}
