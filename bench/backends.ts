/**
 * The backends of the benchmark, in one process:
 *   - two git-like servers: read the request pkt-line, answer a small ref advertisement, close
 *     (the connection-rate scenarios);
 *   - a sink: after the request line it answers "ACK", counts every byte until the client's FIN,
 *     then answers the count and closes (bulk up);
 *   - a source: the request names a byte count as the repository ("/bulkdown/1048576.git"); it
 *     streams that many bytes and closes (bulk down);
 *   - an idle server: after the request line it answers "ACK" and holds the connection, silent,
 *     until the client closes it (idle routed connections);
 *   - two HTTP/1.1 keep-alive servers answering every request with the same small response
 *     (HTTP through the proxy, with wrk): node:http, and a raw net server that only counts the
 *     requests' header ends (much cheaper, so that the backend is not the bottleneck).
 *
 *   node dist/bench/backends.js      -> first stdout line: {"git":[p1,p2],"sink":p3,"source":p4,"idle":p5,"http":p6,"httpRaw":p7}
 *
 * bench/native/rate.c `server` has the same git-like servers, sink, source and raw HTTP server,
 * byte for byte, in C: run.ts uses those unless --node-load (keep the two in step).
 *
 * It exits with its parent (unless --standalone, for runs by hand) and after --max-lifetime-ms
 * (default 30 min) in any case.
 */
import { createServer as createHttpServer } from 'node:http';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { exitWithParent, gitAnswer, host, httpBody, numberArg, parseArgs, pktLength, rawHttpResponse, sinkReady, type Backends } from './common.js';

const args = parseArgs(process.argv.slice(2));
setTimeout(() => process.exit(0), numberArg(args, 'max-lifetime-ms', 30 * 60_000)).unref();
if (!args.has('standalone')) exitWithParent();

const ignore = (): void => undefined;

/** Calls `onRequest` once the first pkt-line is complete, with the line and anything after it. */
function onFirstLine(socket: Socket, onRequest: (line: Buffer, rest: Buffer) => void): void {
  let buf: Buffer | undefined;
  const onData = (chunk: Buffer): void => {
    buf = buf === undefined ? chunk : Buffer.concat([buf, chunk]);
    const n = pktLength(buf);
    if (n < 0 && buf.length < 65536) return;
    socket.off('data', onData);
    const len = n <= 0 ? buf.length : n;
    onRequest(buf.subarray(0, len), buf.subarray(len));
  };
  socket.on('data', onData);
  socket.on('error', ignore);
}

function gitServer(): Server {
  return createServer({ noDelay: true }, (socket) => {
    onFirstLine(socket, () => {
      socket.end(gitAnswer);
      socket.resume(); // discard the rest; the client's FIN closes the socket
    });
  });
}

function sinkServer(): Server {
  return createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
    onFirstLine(socket, (_line, rest) => {
      let count = rest.length;
      socket.on('data', (chunk: Buffer) => {
        count += chunk.length;
      });
      socket.on('end', () => socket.end(`${count}\n`));
      socket.write(sinkReady);
    });
  });
}

const chunk = Buffer.alloc(1 << 20, 'switchyard-bench-');

function sourceServer(): Server {
  return createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
    onFirstLine(socket, (line) => {
      const m = /\/(\d+)\.git\0/.exec(line.toString('latin1'));
      let left = m ? Number(m[1]) : 0;
      socket.resume();
      socket.on('end', () => undefined);
      const pump = (): void => {
        while (left > 0) {
          const n = Math.min(left, chunk.length);
          left -= n;
          const more = socket.write(n === chunk.length ? chunk : chunk.subarray(0, n));
          if (!more) {
            socket.once('drain', pump);
            return;
          }
        }
        socket.end();
      };
      pump();
    });
  });
}

function idleServer(): Server {
  return createServer({ noDelay: true }, (socket) => {
    onFirstLine(socket, () => {
      socket.write(sinkReady);
      socket.resume(); // discard anything more; the client's FIN closes the socket
    });
  });
}

/** node:http, keep-alive, the same 200 response to every request. */
function httpServer(): ReturnType<typeof createHttpServer> {
  const server = createHttpServer((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': String(httpBody.length) });
    res.end(httpBody);
  });
  server.keepAliveTimeout = 60_000;
  server.headersTimeout = 65_000;
  return server;
}

/**
 * A raw HTTP/1.1 responder: one fixed keep-alive response per "\r\n\r\n" seen (GET requests
 * have no body). Not a real HTTP server: a cheap backend for wrk.
 */
function rawHttpServer(): Server {
  return createServer({ noDelay: true }, (socket) => {
    let tail = ''; // the last 3 bytes of the previous chunk: a header end may straddle two chunks
    socket.on('data', (chunk: Buffer) => {
      const text = tail + chunk.toString('latin1');
      let n = 0;
      for (let i = text.indexOf('\r\n\r\n'); i >= 0; i = text.indexOf('\r\n\r\n', i + 4)) n++;
      tail = text.slice(-3);
      if (n === 1) socket.write(rawHttpResponse);
      else if (n > 1) socket.write(Buffer.concat(Array.from({ length: n }, () => rawHttpResponse)));
    });
    socket.on('error', ignore);
  });
}

function listen(server: Server | ReturnType<typeof createHttpServer>): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port: 0, backlog: 1024 }, () => resolve((server.address() as AddressInfo).port));
  });
}

const [g1, g2, sink, source, idle, http, httpRaw] = await Promise.all(
  [gitServer(), gitServer(), sinkServer(), sourceServer(), idleServer(), httpServer(), rawHttpServer()].map(listen),
);
const ports: Backends = { git: [g1!, g2!], sink: sink!, source: source!, idle: idle!, http: http!, httpRaw: httpRaw! };
process.stdout.write(JSON.stringify(ports) + '\n');
process.on('SIGTERM', () => process.exit(0));
