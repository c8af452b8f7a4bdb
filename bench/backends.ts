/**
 * The backends of the benchmark, in one process:
 *   - two git-like servers: read the request pkt-line, answer a small ref advertisement, close
 *     (the connection-rate scenarios);
 *   - a sink: after the request line it answers "ACK", counts every byte until the client's FIN,
 *     then answers the count and closes (bulk up);
 *   - a source: the request names a byte count as the repository ("/bulkdown/1048576.git"); it
 *     streams that many bytes and closes (bulk down).
 *
 *   node dist/bench/backends.js      -> first stdout line: {"git":[p1,p2],"sink":p3,"source":p4}
 *
 * It exits with its parent (unless --standalone, for runs by hand) and after --max-lifetime-ms
 * (default 30 min) in any case.
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { exitWithParent, gitAnswer, host, numberArg, parseArgs, pktLength, sinkReady, type Backends } from './common.js';

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

function listen(server: Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port: 0, backlog: 1024 }, () => resolve((server.address() as AddressInfo).port));
  });
}

const [g1, g2, sink, source] = await Promise.all([gitServer(), gitServer(), sinkServer(), sourceServer()].map(listen));
const ports: Backends = { git: [g1!, g2!], sink: sink!, source: source! };
process.stdout.write(JSON.stringify(ports) + '\n');
process.on('SIGTERM', () => process.exit(0));
