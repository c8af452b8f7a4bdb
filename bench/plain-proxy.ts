/**
 * The comparison: a plain Node.js routing proxy (net + pipe), no sandbox. It buffers the first
 * bytes, routes them with the same git rule as routers/git.js as a plain function, connects,
 * replays the buffer and pipes both ways (half-close forwarded). One JSON log line per finished
 * connection on stdout, like Switchyard, so both pay for logging.
 *
 *   node dist/bench/plain-proxy.js [--host 127.0.0.1] [--port 0] [--rule git|http] name=host:port ...
 *
 * --rule git (the default): names are git users, the rule is routers/git.js's. --rule http: names
 * are HTTP host names, the rule is routers/http-host.js's (route by the first request's Host).
 *
 * The first stdout line is {"msg":"listening","port":N}.
 */
import { connect, createServer, type Socket } from 'node:net';

const users: Record<string, string> = {};
let host = '127.0.0.1';
let port = 0;
let rule = 'git';
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]!;
  if (a === '--host') host = argv[++i] ?? host;
  else if (a === '--port') port = Number(argv[++i]);
  else if (a === '--rule') rule = argv[++i] ?? rule;
  else if (a.includes('=')) users[a.slice(0, a.indexOf('='))] = a.slice(a.indexOf('=') + 1);
}

type Decision = { remote: string } | { noop: true } | { close: string };
const gitRequest = /^....git-upload-pack \/([\w.\-]+)\/[\w.\-]+\0host=[\w.\-:]+\0/;

/** routers/git.js, as a plain function. */
export function route(data: string): Decision {
  const m = gitRequest.exec(data);
  if (!m) return { noop: true };
  if (!Object.hasOwn(users, m[1]!)) return { close: '0015ERR unknown user\n' };
  return { remote: users[m[1]!]! };
}

function respond(status: string, body: string): { close: string } {
  return { close: `HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}` };
}

/** routers/http-host.js, as a plain function (its `hosts` table is `users`). */
export function routeHttp(data: string): Decision {
  if (!/^[A-Z]{1,20}( |$)/.test(data)) return respond('400 Bad Request', 'bad request\n');
  const end = data.indexOf('\r\n\r\n');
  if (end < 0) return data.length > 16384 ? respond('431 Request Header Fields Too Large', 'headers too large\n') : { noop: true };
  const lines = data.slice(0, end).split('\r\n');
  if (!/^[A-Z]{1,20} [\x21-\x7e]+ HTTP\/1\.[01]$/.test(lines[0]!)) return respond('400 Bad Request', 'bad request line\n');
  let hostHeader: string | undefined;
  for (let i = 1; i < lines.length; i++) {
    const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$/.exec(lines[i]!);
    if (!m) return respond('400 Bad Request', 'bad header line\n');
    if (m[1]!.toLowerCase() !== 'host') continue;
    if (hostHeader !== undefined) return respond('400 Bad Request', 'more than one Host header\n');
    hostHeader = m[2]!;
  }
  if (hostHeader === undefined) return respond('400 Bad Request', 'no Host header\n');
  const h = /^([a-z0-9.-]+)(?::\d{1,5})?$/i.exec(hostHeader);
  if (!h) return respond('400 Bad Request', 'bad Host header\n');
  const name = h[1]!.toLowerCase();
  if (!Object.hasOwn(users, name)) return respond('421 Misdirected Request', `no site for host ${name}\n`);
  return { remote: users[name]! };
}

const decide = rule === 'http' ? routeHttp : route;

const log = (fields: object): void => {
  process.stdout.write(JSON.stringify({ level: 30, time: Date.now(), pid: process.pid, ...fields }) + '\n');
};

const server = createServer({ allowHalfOpen: true, noDelay: true }, (client: Socket) => {
  const started = Date.now();
  const peer = `${client.remoteAddress}:${client.remotePort}`;
  let buffer = '';
  let backend: string | undefined;
  let upstream: Socket | undefined;
  let open = 1;
  const closed = (): void => {
    if (--open > 0) {
      if (client.destroyed) upstream?.destroy(); // the client is gone: the relay cannot go on
      return;
    }
    log({ msg: 'connection closed', client: peer, backend, bytesIn: client.bytesRead, bytesOut: client.bytesWritten, durationMs: Date.now() - started });
  };
  client.on('close', closed).on('error', () => upstream?.destroy());
  const onData = (chunk: Buffer): void => {
    buffer += chunk.toString('latin1');
    const d = buffer.length > 65536 ? { close: '' } : decide(buffer);
    if ('noop' in d) return;
    client.off('data', onData);
    if ('close' in d) return void client.end(d.close, 'latin1');
    backend = d.remote;
    const sep = d.remote.lastIndexOf(':');
    upstream = connect({ host: d.remote.slice(0, sep), port: Number(d.remote.slice(sep + 1)), allowHalfOpen: true, noDelay: true });
    open++;
    upstream.on('close', closed).on('error', () => client.destroy());
    upstream.write(buffer, 'latin1');
    buffer = '';
    client.pipe(upstream);
    upstream.pipe(client);
  };
  client.on('data', onData);
});
server.listen({ host, port, backlog: 1024 }, () => {
  const address = server.address();
  log({ msg: 'listening', port: typeof address === 'object' && address !== null ? address.port : port });
});
process.on('SIGTERM', () => process.exit(0));
