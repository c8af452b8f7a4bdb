/**
 * The service's privileges, on real processes: a probe started as root binds a port below 1024
 * and one above, then drops to an unprivileged user (test/fixtures/privileges-probe.ts). What it
 * is and holds is read from /proc, every thread of it; its old ports still accept; a new port
 * below 1024 is bound only when it kept CAP_NET_BIND_SERVICE. The sandbox workers it then starts
 * hold no capability, whatever it kept, and switch to the sandbox user only when it kept
 * CAP_SETUID and CAP_SETGID. The same probe started as systemd starts the unit (a user with
 * ambient capabilities and no_new_privs, through setpriv) ends the same way.
 *
 * Needs root (skipped otherwise): the probe runs as a system user the suite creates when absent,
 * `switchyard-test`, in a supplementary group `switchyard-test-x`.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { capabilities, capabilityNames, checkDrop, dropPrivileges, parseCapabilities, PrivilegeError } from '../src/node/privileges.js';
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
  ? 'needs root: the probe starts as root and drops'
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
  dropped?: Record<string, unknown>;
  again: Record<string, unknown>[];
  uid: number;
  gid: number;
  groups: number[];
  capabilities: ReturnType<typeof capabilities>;
  threads: Threads;
  newLow: number | string;
  worker?: { identity?: { uid: number; gid: number }; pid?: number; threads?: Threads; failed?: unknown };
  children?: { asIs: string; withoutAmbient: string; ambientAfter: string[] };
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

describe('dropPrivileges: refusals', () => {
  it('refuses an unknown user, root, and an unknown capability, changing nothing', () => {
    const before = readFileSync('/proc/self/status', 'latin1');
    const refused = (f: () => unknown, code: string, message: RegExp): void =>
      assert.throws(f, (err: unknown) => err instanceof PrivilegeError && err.code === code && message.test(err.message));
    refused(() => dropPrivileges({ user: 'no-such-user-switchyard' }), 'ERR_PRIVILEGES_USER', /no-such-user-switchyard: no such user/);
    refused(() => checkDrop({ user: 'no-such-user-switchyard' }), 'ERR_PRIVILEGES_USER', /no such user/);
    refused(() => dropPrivileges({ user: 'root' }), 'ERR_PRIVILEGES_USER', /is root/);
    refused(() => dropPrivileges({ user: 'nobody', keep: ['CAP_NOT_A_THING' as never] }), 'ERR_PRIVILEGES_CAPABILITY', /unknown capability "CAP_NOT_A_THING"/);
    assert.equal(readFileSync('/proc/self/status', 'latin1').replace(/^(?!Uid|Gid|Groups|Cap|NoNewPrivs).*$/gm, ''), before.replace(/^(?!Uid|Gid|Groups|Cap|NoNewPrivs).*$/gm, ''));
  });

  it('reads capability lists as --keep-capabilities takes them', () => {
    assert.deepEqual(parseCapabilities('net_bind_service, CAP_SETUID,cap_setgid,CAP_SETUID'), ['CAP_NET_BIND_SERVICE', 'CAP_SETUID', 'CAP_SETGID']);
    assert.deepEqual(parseCapabilities(''), []);
    assert.throws(() => parseCapabilities('CAP_NET_BIND_SERVICE,fly'), /unknown capability "fly"/);
  });

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

describe('dropPrivileges: a master started as root', { skip }, () => {
  it('becomes the user, keeps only CAP_NET_BIND_SERVICE, still binds below 1024 and accepts on its old ports', async (t) => {
    const { user, nobody } = await accounts();
    const probe = await startProbe({ drop: { user: testUser, keep: ['CAP_NET_BIND_SERVICE'] }, dropAgain: [testUser, 'nobody'], children: true });
    t.after(() => probe.stop());
    const r = probe.report;
    assert.equal(typeof r.low, 'number', `a port below ${unprivilegedStart} bound as root: ${r.low}`);
    assert.ok((r.low as number) < unprivilegedStart);
    assert.deepEqual(r.dropped, { user: testUser, uid: user.uid, gid: user.gid, groups: user.groups, keep: ['CAP_NET_BIND_SERVICE'], switched: true });
    assert.equal(r.uid, user.uid);
    assert.equal(r.gid, user.gid);
    assert.deepEqual([...r.groups].sort((a, b) => a - b), user.groups, 'its supplementary groups are the user\'s');
    assert.ok(user.groups.length >= 2, 'the test user has a supplementary group');
    for (const set of ['effective', 'permitted', 'inheritable', 'ambient', 'bounding'] as const) {
      assert.deepEqual(r.capabilities[set], ['CAP_NET_BIND_SERVICE'], set);
    }
    assert.equal(r.capabilities.noNewPrivs, true);
    const [main, ...others] = r.threads;
    assert.deepEqual([main!.Uid, main!.Gid], ids(user));
    for (const thread of others) {
      assert.deepEqual([thread.Uid, thread.Gid], ids(user), `thread ${thread.task}`);
      assert.equal(thread.CapEff, '0000000000000000', `thread ${thread.task}: a thread other than the main one keeps nothing`);
      assert.equal(thread.CapPrm, '0000000000000000', `thread ${thread.task}`);
      assert.equal(thread.NoNewPrivs, '1', `thread ${thread.task}: no_new_privs reaches every thread`);
    }
    assert.equal(typeof r.newLow, 'number', `a new port below ${unprivilegedStart} after the drop: ${r.newLow}`);
    assert.ok((r.newLow as number) < unprivilegedStart);
    // Called again: as the user already, it only narrows; as another user, it is refused.
    assert.equal(r.again[0]!.switched, false);
    assert.equal(r.again[1]!.error, 'ERR_PRIVILEGES_NOT_ROOT');
    assert.notEqual(user.uid, nobody.uid);
    // A program it starts holds the kept capability, unless started with the ambient set aside.
    assert.equal(r.children!.asIs, 'CapInh: 0000000000000400 CapPrm: 0000000000000400 CapEff: 0000000000000400 CapAmb: 0000000000000400');
    assert.equal(r.children!.withoutAmbient, 'CapInh: 0000000000000400 CapPrm: 0000000000000000 CapEff: 0000000000000000 CapAmb: 0000000000000000');
    assert.deepEqual(r.children!.ambientAfter, ['CAP_NET_BIND_SERVICE'], 'the ambient set is back');
    assert.equal(await probe.ask(r.low as number), user.uid, 'the old port below 1024 accepts');
    assert.equal(await probe.ask(r.high as number), user.uid, 'the old port above 1024 accepts');
  });

  it('keeping nothing, a new port below 1024 is refused with EACCES; the old ones accept', async (t) => {
    const { user } = await accounts();
    const probe = await startProbe({ drop: { user: testUser, keep: [] } });
    t.after(() => probe.stop());
    const r = probe.report;
    assert.equal(r.uid, user.uid);
    for (const set of ['effective', 'permitted', 'inheritable', 'ambient', 'bounding'] as const) assert.deepEqual(r.capabilities[set], [], set);
    assert.equal(r.newLow, 'EACCES');
    assert.equal(await probe.ask(r.low as number), user.uid);
    assert.equal(await probe.ask(r.high as number), user.uid);
  });

  it('keeping only CAP_NET_BIND_SERVICE, sandbox workers run as the service\'s user and hold no capability', async (t) => {
    const { user } = await accounts();
    const probe = await startProbe({ drop: { user: testUser, keep: ['CAP_NET_BIND_SERVICE'] }, worker: true });
    t.after(() => probe.stop());
    const w = probe.report.worker!;
    assert.equal(w.failed, undefined, JSON.stringify(w.failed));
    assert.equal(w.identity, undefined, 'no sandbox identity: the workers could not switch');
    for (const thread of w.threads!) assert.deepEqual([thread.Uid, thread.Gid], ids(user), `worker thread ${thread.task}`);
    assertNoCapabilities(w.threads!, 'worker');
  });

  it('keeping CAP_SETUID and CAP_SETGID, sandbox workers switch to the sandbox user and hold no capability', async (t) => {
    const { user, nobody } = await accounts();
    const probe = await startProbe({ drop: { user: testUser, keep: ['CAP_NET_BIND_SERVICE', 'CAP_SETUID', 'CAP_SETGID'] }, worker: true });
    t.after(() => probe.stop());
    const r = probe.report;
    assert.equal(r.uid, user.uid);
    assert.deepEqual(r.capabilities.ambient, ['CAP_SETGID', 'CAP_SETUID', 'CAP_NET_BIND_SERVICE']);
    const w = r.worker!;
    assert.equal(w.failed, undefined, JSON.stringify(w.failed));
    assert.deepEqual(w.identity, { uid: nobody.uid, gid: nobody.gid });
    for (const thread of w.threads!) {
      assert.deepEqual([thread.Uid, thread.Gid], ids(nobody), `worker thread ${thread.task}`);
      assert.equal(thread.Groups, '', `worker thread ${thread.task}: no supplementary group`);
    }
    assertNoCapabilities(w.threads!, 'worker');
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
    const probe = await startProbe({ worker: true, drop: { user: testUser, keep: ['CAP_NET_BIND_SERVICE'] } }, asTheUnit('+net_bind_service'));
    t.after(() => probe.stop());
    const r = probe.report;
    assert.equal(typeof r.low, 'number', `a port below ${unprivilegedStart}: ${r.low}`);
    assert.equal(r.uid, user.uid);
    assert.deepEqual(r.dropped, { user: testUser, uid: user.uid, gid: user.gid, groups: user.groups, keep: ['CAP_NET_BIND_SERVICE'], switched: false });
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

  it('asked to keep a capability it was not given, refuses and changes nothing', async (t) => {
    const probe = await startProbe({ drop: { user: testUser, keep: ['CAP_NET_BIND_SERVICE', 'CAP_SETUID'] } }, asTheUnit('+net_bind_service'));
    t.after(() => probe.stop());
    assert.equal(probe.report.dropped!.error, 'ERR_PRIVILEGES_CAPABILITY');
    assert.match(String(probe.report.dropped!.message), /cannot keep CAP_SETUID/);
    assert.deepEqual(probe.report.capabilities.ambient, ['CAP_NET_BIND_SERVICE']);
  });
});
