/**
 * The service's capabilities, on real processes: a probe started as systemd starts the unit (a
 * user with ambient capabilities and no_new_privs, through setpriv) binds a port below 1024 and
 * starts a sandbox worker as the pool does (test/fixtures/privileges-probe.ts). Whatever the
 * service holds, the worker holds no capability, on any thread; it switches to the sandbox user
 * only when the service holds CAP_SETUID and CAP_SETGID. Read from /proc.
 *
 * Needs root (skipped otherwise) to start the probe as a system user the suite creates when
 * absent, `switchyard-test`, in a supplementary group `switchyard-test-x`.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { capabilities, capabilityNames } from '../src/node/capabilities.js';
import { readAll, dial, runCommand, within } from './helpers.js';

const probeScript = fileURLToPath(new URL('./fixtures/privileges-probe.js', import.meta.url));
const testUser = 'switchyard-test';
const testGroup = 'switchyard-test-x';
const isRoot = process.getuid?.() === 0;
/** Ports below this one need CAP_NET_BIND_SERVICE. */
const unprivilegedStart = Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'latin1').trim());
/** Where the probe looks for free privileged ports. */
const lowRange: [number, number] = [Math.max(1, unprivilegedStart - 400), unprivilegedStart];

const skip = !isRoot
  ? 'needs root: the probe runs as another user'
  : unprivilegedStart < 100
    ? `net.ipv4.ip_unprivileged_port_start is ${unprivilegedStart}: no port needs CAP_NET_BIND_SERVICE here`
    : false;

interface Account {
  uid: number;
  gid: number;
  groups: number[];
}

/** The test user (created when absent) and nobody, as `id` reports them. */
async function accounts(): Promise<{ user: Account; nobody: Account }> {
  await runCommand('groupadd', ['--system', '--force', testGroup]);
  if ((await runCommand('id', ['-u', testUser])).code !== 0) {
    const made = await runCommand('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', '--user-group', '--groups', testGroup, testUser]);
    // 9: made meanwhile by another run
    if (made.code !== 0 && made.code !== 9) throw new Error(`useradd ${testUser}: ${made.stderr}`);
  }
  const id = async (name: string): Promise<Account> => ({
    uid: Number((await runCommand('id', ['-u', name])).stdout),
    gid: Number((await runCommand('id', ['-g', name])).stdout),
    groups: (await runCommand('id', ['-G', name])).stdout.trim().split(/\s+/).map(Number).sort((a, b) => a - b),
  });
  return { user: await id(testUser), nobody: await id('nobody') };
}

type Threads = Record<string, string>[];
interface Report {
  low: number | string;
  high: number | string;
  uid: number;
  gid: number;
  groups: number[];
  capabilities: ReturnType<typeof capabilities>;
  threads: Threads;
  newLow: number | string;
  worker?: { identity?: { uid: number; gid: number }; pid?: number; threads?: Threads; failed?: unknown };
}

interface Probe {
  readonly report: Report;
  /** What answers a connection to `port`: the uid of the process that accepted it. */
  ask(port: number): Promise<number>;
  stop(): Promise<void>;
}

/** Starts the probe (under `wrapper`, when given: setpriv and its flags) and waits for its report. */
async function startProbe(request: Record<string, unknown>, wrapper: string[] = []): Promise<Probe> {
  const args = [process.execPath, '--no-node-snapshot', probeScript, JSON.stringify({ low: lowRange, ...request })];
  const child = spawn(wrapper[0] ?? args[0]!, [...wrapper.slice(1), ...(wrapper.length > 0 ? args : args.slice(1))], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const lines = createInterface({ input: child.stdout });
  const first = once(lines, 'line') as Promise<[string]>;
  const exited = once(child, 'exit').then(() => {
    throw new Error(`the probe exited before reporting: ${stderr}`);
  });
  const [line] = await within(Promise.race([first, exited]), 30_000, 'the probe reports');
  exited.catch(() => {});
  return {
    report: JSON.parse(line) as Report,
    async ask(port) {
      const socket = await dial(port);
      socket.end(); // half-closed: the probe answers and closes
      return (JSON.parse(await readAll(socket)) as { uid: number }).uid;
    },
    async stop() {
      child.stdin.end();
      if (child.exitCode === null) await once(child, 'exit');
    },
  };
}

/** Asserts that every thread of a report holds no capability but the bounding set, and has no_new_privs. */
function assertNoCapabilities(threads: Threads, what: string): void {
  assert.ok(threads.length > 1, `${what}: multithreaded`);
  for (const t of threads) {
    for (const set of ['CapEff', 'CapPrm', 'CapInh', 'CapAmb']) assert.equal(t[set], '0000000000000000', `${what} thread ${t.task}: ${set}`);
    assert.equal(t.NoNewPrivs, '1', `${what} thread ${t.task}: NoNewPrivs`);
  }
}

const ids = (a: { uid: number; gid: number }): string[] => [`${a.uid}\t${a.uid}\t${a.uid}\t${a.uid}`, `${a.gid}\t${a.gid}\t${a.gid}\t${a.gid}`];

describe('capabilities()', () => {
  it('capabilities() is what /proc/self/status says', () => {
    const status = readFileSync('/proc/self/status', 'latin1');
    const caps = capabilities();
    const sets = { effective: 'CapEff', permitted: 'CapPrm', inheritable: 'CapInh', ambient: 'CapAmb', bounding: 'CapBnd' } as const;
    for (const [set, field] of Object.entries(sets)) {
      const hex = new RegExp(`^${field}:\\s*([0-9a-f]+)$`, 'm').exec(status)![1]!;
      const rebuilt = caps[set as keyof typeof sets].reduce((mask, name) => mask | (1n << BigInt(capabilityNames.indexOf(name as never))), 0n);
      assert.equal(rebuilt, BigInt(`0x${hex}`), field);
    }
    assert.equal(capabilityNames[10], 'CAP_NET_BIND_SERVICE');
    assert.equal(capabilityNames[7], 'CAP_SETUID');
    assert.equal(caps.noNewPrivs, /^NoNewPrivs:\s*1$/m.test(status));
  });
});

describe('started as systemd starts the unit: a user with ambient CAP_NET_BIND_SERVICE and no_new_privs', { skip }, () => {
  /** setpriv does what User=, AmbientCapabilities=, CapabilityBoundingSet= and NoNewPrivileges=yes do. */
  const asTheUnit = (caps: string): string[] => [
    'setpriv', `--reuid=${testUser}`, `--regid=${testUser}`, '--init-groups',
    `--inh-caps=-all,${caps}`, `--ambient-caps=-all,${caps}`, `--bounding-set=-all,${caps}`, '--no-new-privs',
  ];

  it('binds below 1024, and its sandbox workers hold no capability', async (t) => {
    const { user } = await accounts();
    const probe = await startProbe({ worker: true }, asTheUnit('+net_bind_service'));
    t.after(() => probe.stop());
    const r = probe.report;
    assert.equal(typeof r.low, 'number', `a port below ${unprivilegedStart}: ${r.low}`);
    assert.equal(r.uid, user.uid);
    assert.deepEqual(r.capabilities.ambient, ['CAP_NET_BIND_SERVICE']);
    assert.equal(typeof r.newLow, 'number');
    assert.equal(r.worker!.identity, undefined);
    assertNoCapabilities(r.worker!.threads!, 'worker');
    assert.equal(await probe.ask(r.low as number), user.uid);
  });

  it('with CAP_SETUID and CAP_SETGID as ambient capabilities too, its sandbox workers switch to the sandbox user and hold none', async (t) => {
    const { user, nobody } = await accounts();
    const probe = await startProbe({ worker: true }, asTheUnit('+net_bind_service,+setuid,+setgid'));
    t.after(() => probe.stop());
    const r = probe.report;
    assert.equal(r.uid, user.uid);
    assert.deepEqual(r.capabilities.ambient, ['CAP_SETGID', 'CAP_SETUID', 'CAP_NET_BIND_SERVICE']);
    const w = r.worker!;
    assert.equal(w.failed, undefined, JSON.stringify(w.failed));
    assert.deepEqual(w.identity, { uid: nobody.uid, gid: nobody.gid });
    for (const thread of w.threads!) assert.deepEqual([thread.Uid, thread.Gid], ids(nobody), `worker thread ${thread.task}`);
    assertNoCapabilities(w.threads!, 'worker');
  });
});
