/**
 * HAProxy as a comparator, when `haproxy` is on PATH (`apt-get install haproxy`). The config is
 * written at bench time: TCP mode with content inspection, the same rules as the bench routers:
 *
 *   - git: wait (tcp-request inspect-delay) until the buffered payload holds a complete
 *     `git-upload-pack /user/repo.git\0host=...\0` request (the regex of routers/git.js), then pick
 *     the backend by the user in the payload; an unknown user or a malformed request is rejected;
 *   - http: wait until the header block is complete ("\r\n\r\n"), then pick the backend by the
 *     Host header found in the payload (routers/http-host.js's job, simplified).
 *
 * One process, one thread (nbthread 1), no master (-db runs it in the foreground), pinned to the
 * proxy core like the other proxies. Logging on: one tcplog line per connection to stdout (a file),
 * like Switchyard's and the plain proxy's JSON line.
 */
import { spawnSync } from 'node:child_process';

export function haproxyVersion(): string | undefined {
  const r = spawnSync('haproxy', ['-v'], { encoding: 'utf8' });
  if (r.status !== 0 || typeof r.stdout !== 'string') return undefined;
  return /version (\S+)/i.exec(r.stdout)?.[1] ?? 'unknown';
}

/** A backend name HAProxy accepts, from a user or host name. */
const backendName = (prefix: string, name: string): string => `${prefix}_${name.replace(/[^A-Za-z0-9_]/g, '_')}`;

/** A string as the `hex` converter shows it. */
const hex = (s: string): string => Buffer.from(s, 'latin1').toString('hex').toUpperCase();

/** [\w.\-] (one byte) in hex: 0-9, A-Z, _, a-z, '.', '-' */
const word = '(?:3[0-9]|4[1-9A-F]|5[0-9A]|5F|6[1-9A-F]|7[0-9A]|2[DE])';

/** PCRE-escape a literal. */
const re = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');

export interface HaproxyConfig {
  /** git user -> 'host:port' */
  readonly gitUsers: Record<string, string>;
  readonly gitPort: number;
  /** HTTP host name -> 'host:port' */
  readonly httpHosts: Record<string, string>;
  readonly httpPort: number;
  /** most connections at once (the idle scenario needs two fds per connection) */
  readonly maxconn: number;
}

export function haproxyConfig(c: HaproxyConfig): string {
  const lines: string[] = [
    'global',
    `  maxconn ${c.maxconn}`,
    '  nbthread 1',
    '  log stdout format raw local0 info',
    '',
    'defaults',
    '  mode tcp',
    '  log global',
    '  option tcplog',
    '  option dontlognull',
    '  timeout connect 10s',
    '  timeout client 120s',
    '  timeout server 120s',
    `  maxconn ${c.maxconn}`,
    '',
    'frontend git',
    `  bind 127.0.0.1:${c.gitPort}`,
    '  tcp-request inspect-delay 10s',
    // routers/git.js: /^....git-upload-pack \/([\w.\-]+)\/[\w.\-]+\0host=[\w.\-:]+\0/. HAProxy's
    // regex match stops at the first NUL of a payload, and this request has two: the same regex
    // is matched on the payload's hex form (`hex` converter: two upper-case digits per byte).
    `  acl git_request req.payload(0,0),hex -m reg '^[0-9A-F]{8}${hex('git-upload-pack /')}${word}+2F${word}+00${hex('host=')}(?:${word.slice(3, -1)}|3A)+00'`,
    '  tcp-request content accept if git_request',
    // A request that can never match (or is still incomplete at the inspect-delay) is refused.
    '  tcp-request content reject if WAIT_END',
  ];
  for (const user of Object.keys(c.gitUsers)) {
    lines.push(`  acl ${backendName('user', user)} req.payload(4,0) -m beg 'git-upload-pack /${user}/'`);
  }
  for (const user of Object.keys(c.gitUsers)) {
    lines.push(`  use_backend ${backendName('git', user)} if git_request ${backendName('user', user)}`);
  }
  // Whatever no rule routed (unknown user; inspection ended by a full buffer) is refused.
  lines.push('  default_backend refuse', '');
  lines.push(
    'frontend http',
    `  bind 127.0.0.1:${c.httpPort}`,
    '  tcp-request inspect-delay 10s',
    "  acl http_headers req.payload(0,0) -m reg '\\r\\n\\r\\n'",
    '  tcp-request content accept if http_headers',
    '  tcp-request content reject if WAIT_END',
  );
  for (const name of Object.keys(c.httpHosts)) {
    lines.push(`  acl ${backendName('host', name)} req.payload(0,0) -m reg -i '\\r\\nhost:[ \\t]*${re(name)}(:[0-9]{1,5})?[ \\t]*\\r\\n'`);
    lines.push(`  use_backend ${backendName('http', name)} if ${backendName('host', name)}`);
  }
  lines.push('  default_backend refuse', '');
  const server = (name: string, target: string): void => {
    lines.push(`backend ${name}`, `  server s1 ${target}`, '');
  };
  for (const [user, target] of Object.entries(c.gitUsers)) server(backendName('git', user), target);
  for (const [name, target] of Object.entries(c.httpHosts)) server(backendName('http', name), target);
  lines.push('backend refuse', '  tcp-request content reject', '');
  return lines.join('\n');
}
