/**
 * Diagnostic target (`npm run bench -- --diagnose`): Switchyard's own socket core (TenantListener,
 * Connection, relay, decision validation) with routers/git.js's rule as a plain JS function behind
 * the Router interface instead of an isolate. Set against the real Switchyard it separates the
 * cost of the sandbox call from the cost of the connection core; `--log` separates logging.
 *
 *   node dist/bench/core-proxy.js [--log async|sync|off] [--port 0] user=host:port ...
 *
 *   async: the service's own logger (src/log.ts: pino's default stdout destination)
 *   sync:  the same pino logger on a synchronous destination (one write(2) per line, no thread pool)
 *   off:   level "warn": no per-connection line
 *
 * The first stdout line is {"msg":"listening","port":N}.
 */
import { pino } from 'pino';
import { defaultLimits } from '../src/config.js';
import { TenantListener } from '../src/listener.js';
import { createLogger } from '../src/log.js';
import { validateDecision, type Decision } from '../src/routing/decision.js';
import type { Router } from '../src/sandbox/router.js';
import { exitWithParent, parseArgs } from './common.js';

const argv = process.argv.slice(2);
const args = parseArgs(argv);
const users: Record<string, string> = {};
for (const a of argv) if (!a.startsWith('--') && a.includes('=')) users[a.slice(0, a.indexOf('='))] = a.slice(a.indexOf('=') + 1);
const mode = args.get('log') ?? 'async';
exitWithParent();

const rule = /^....git-upload-pack \/([\w.\-]+)\/[\w.\-]+\0host=[\w.\-:]+\0/;
function route(data: string): Decision {
  const m = rule.exec(data);
  if (!m) return validateDecision({ noop: true });
  if (!Object.hasOwn(users, m[1]!)) return validateDecision({ close: '0015ERR unknown user\n' });
  return validateDecision({ remote: users[m[1]!] });
}

const hooks = { accept: false, connectError: false, inactivityError: false };
// Checked against Router by assignment below, not as a literal, so that a member the interface
// does not have (yet) is no error.
const impl = {
  hooks,
  warm: () => Promise.resolve(hooks),
  accept: () => Promise.resolve(undefined),
  route: (data: string) => Promise.resolve(route(data)),
  connectError: () => Promise.resolve(),
  inactivityError: () => Promise.resolve(),
  dispose: () => undefined,
};
const router: Router = impl;

const log =
  mode === 'sync'
    ? pino({ level: 'info', base: { pid: process.pid } }, pino.destination({ dest: 1, sync: true }))
    : createLogger(mode === 'off' ? 'warn' : 'info');
const listener = new TenantListener({ tenant: 'git', router, limits: defaultLimits, log });
const address = await listener.listen(Number(args.get('port') ?? 0), args.get('host') ?? '127.0.0.1');
process.stdout.write(JSON.stringify({ msg: 'listening', port: address.port, log: mode }) + '\n');
process.on('SIGTERM', () => process.exit(0));
