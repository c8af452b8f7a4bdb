/**
 * The second wall: what code that escapes V8 in a sandbox worker gets. Each point is checked on
 * real processes through /proc: a probe confined as workers are is refused each forbidden call;
 * the service's shared workers and its check process run with no new privileges, the seccomp
 * filter on every thread, the sandbox user and no capabilities, a clean environment, only their
 * own descriptors and `/` as working directory; a process of the sandbox user cannot read the
 * data directory; the proxy itself is not dumpable. Parts that need root are skipped otherwise.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { sandboxIdentity } from '../src/sandbox/confine.js';
import { SandboxPool } from '../src/sandbox/pool.js';
import { WorkerProcess } from '../src/sandbox/worker-process.js';
import { AdminApi, CapturedLog, cliPath, eventually, freePortRange, ProcessLog, removeDir, runCommand, startCliServe, startTestHosting, writeRouterFile } from './helpers.js';

const isRoot = process.getuid?.() === 0;
const launcher = fileURLToPath(new URL('../../build/Release/sandbox-exec', import.meta.url));
const probeScript = fileURLToPath(new URL('./fixtures/confine-probe.js', import.meta.url));
const EPERM = 1;
const ENOSYS = 38;

/** The uid and gid of the sandbox user the service picks by default: nobody as root, else our own. */
async function expectedIdentity(): Promise<{ uid: number; gid: number }> {
  if (!isRoot) return { uid: process.getuid!(), gid: process.getgid!() };
  const uid = await runCommand('id', ['-u', 'nobody']);
  const gid = await runCommand('id', ['-g', 'nobody']);
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

interface ProbeReport {
  errnos: Record<string, number>;
  isolateResult: unknown;
  timerFired: boolean;
  landlockAbi: number;
}

/** Runs the probe under the workers' confinement; resolves with its report, or how it died. */
async function probe(calls: readonly string[]): Promise<{ report?: ProbeReport; signal: NodeJS.Signals | null; code: number | null; stderr: string }> {
  const identity = await expectedIdentity();
  const env: Record<string, string> = isRoot ? { SWITCHYARD_WORKER_IDENTITY: `${identity.uid}:${identity.gid}` } : {};
  const child = spawn(launcher, [process.execPath, '--no-node-snapshot', probeScript, ...calls], { stdio: ['ignore', 'ignore', 'pipe', 'pipe'], env, cwd: '/' });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  let text = '';
  (child.stdio[3] as Socket).setEncoding('utf8').on('data', (s: string) => (text += s));
  const [code, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null];
  return text === '' ? { signal, code, stderr } : { report: JSON.parse(text) as ProbeReport, signal, code, stderr };
}

function status(pid: number, task: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of readFileSync(`/proc/${pid}/task/${task}/status`, 'latin1').split('\n')) {
    const at = line.indexOf(':');
    if (at > 0) fields.set(line.slice(0, at), line.slice(at + 1).trim());
  }
  return fields;
}

/**
 * Whether a worker has finished confining itself: its own seccomp filter is in place, over the
 * one sandbox-exec installed before Node started.
 */
function confinedYet(pid: number): boolean {
  try {
    return status(pid, String(pid)).get('Seccomp_filters') === '2';
  } catch {
    return false;
  }
}

/** Children of `parent` that are sandbox workers (the check process included). */
function workerChildren(parent: number): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'latin1');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === parent && readFileSync(`/proc/${entry}/cmdline`, 'latin1').includes('sandbox/worker.js')) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** What a confined worker must look like in /proc; `secrets` must appear nowhere in its environment. */
function assertConfined(pid: number, proxyPid: number, identity: { uid: number; gid: number }, secrets: readonly string[]): void {
  const what = `worker ${pid}`;
  const tasks = readdirSync(`/proc/${pid}/task`);
  assert.ok(tasks.length > 1, `${what} is multithreaded`);
  for (const task of tasks) {
    const s = status(pid, task);
    assert.equal(s.get('NoNewPrivs'), '1', `${what} task ${task}: NoNewPrivs`);
    assert.equal(s.get('Seccomp'), '2', `${what} task ${task}: seccomp filter`);
    assert.equal(s.get('Seccomp_filters'), '2', `${what} task ${task}: sandbox-exec's filter and the worker's own`);
    assert.equal(s.get('Uid'), `${identity.uid}\t${identity.uid}\t${identity.uid}\t${identity.uid}`, `${what} task ${task}: uid`);
    assert.equal(s.get('Gid'), `${identity.gid}\t${identity.gid}\t${identity.gid}\t${identity.gid}`, `${what} task ${task}: gid`);
    assert.equal(s.get('CapEff'), '0000000000000000', `${what} task ${task}: effective capabilities`);
    assert.equal(s.get('CapPrm'), '0000000000000000', `${what} task ${task}: permitted capabilities`);
    if (isRoot) assert.equal(s.get('Groups'), '', `${what} task ${task}: supplementary groups`);
  }

  const environ = readFileSync(`/proc/${pid}/environ`, 'latin1');
  const names = environ.split('\0').filter((v) => v !== '').map((v) => v.slice(0, v.indexOf('=')));
  assert.deepEqual(names.filter((n) => n !== 'SWITCHYARD_WORKER_CONCURRENCY' && n !== 'SWITCHYARD_WORKER_IDENTITY'), [], `${what}: environment ${names.join(' ')}`);
  for (const secret of secrets) assert.ok(!environ.includes(secret), `${what}: a secret in its environment`);
  assert.ok(!readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes(secrets[0] ?? '\0\0'), `${what}: a secret on its command line`);

  assert.equal(readlinkSync(`/proc/${pid}/cwd`), '/', `${what}: working directory`);

  const fds = new Map(readdirSync(`/proc/${pid}/fd`).map((fd) => [Number(fd), readlinkSync(`/proc/${pid}/fd/${fd}`)]));
  const proxyOutputs = [1, 2].map((fd) => readlinkSync(`/proc/${proxyPid}/fd/${fd}`));
  assert.equal(fds.get(0), '/dev/null', `${what}: stdin`);
  assert.equal(fds.get(1), '/dev/null', `${what}: stdout`);
  assert.match(fds.get(3) ?? '', /^socket:/, `${what}: its channel on fd 3`);
  const sockets = [...fds].filter(([, link]) => link.startsWith('socket:')).map(([fd]) => fd);
  assert.deepEqual(sockets.sort(), [2, 3], `${what}: sockets are its channel and its stderr pair only`);
  const pipes = new Map<string, number>();
  for (const [fd, link] of fds) {
    assert.ok(!proxyOutputs.includes(link), `${what}: fd ${fd} is the service's stdout or stderr (${link})`);
    assert.ok(/^(socket|pipe):\[\d+\]$|^anon_inode:\[(eventpoll|eventfd)\]$|^\/dev\/null$/.test(link), `${what}: fd ${fd} is ${link}`);
    if (link.startsWith('pipe:')) pipes.set(link, (pipes.get(link) ?? 0) + 1);
  }
  for (const [pipe, ends] of pipes) assert.equal(ends, 2, `${what}: ${pipe} is libuv's own (both ends in the worker)`);

  const limits = readFileSync(`/proc/${pid}/limits`, 'latin1');
  assert.match(limits, /^Max core file size\s+0\s+0\s/m, `${what}: no core dumps`);
  assert.match(limits, /^Max open files\s+64\s+64\s/m, `${what}: a small descriptor limit`);
}

const forbidden = [
  'socket-inet', 'socket-unix', 'socketpair', 'connect', 'bind', 'listen', 'accept', 'accept4',
  'clone-process', 'clone-thread-newns', 'fork', 'vfork',
  'open-read', 'open-write', 'open-create', 'open-legacy', 'openat2', 'chdir',
  'kill-parent', 'kill-init', 'kill-group', 'tgkill-parent', 'tkill-parent', 'pidfd_open',
  'mount', 'umount2', 'unshare', 'setns', 'bpf', 'perf_event_open', 'keyctl', 'add_key', 'request_key',
  'userfaultfd', 'pivot_root', 'chroot', 'init_module', 'finit_module', 'delete_module', 'reboot',
  'kexec_load', 'io_uring_setup', 'setuid-root', 'ioctl-tiocsti', 'fcntl-setown', 'newfstatat',
];

describe('the second wall', () => {
  it('a process confined as workers are is refused each forbidden call; what a worker needs still works', async () => {
    const allowed = ['getpid', 'thread', 'kill-self', 'fstat', 'fcntl-getfl', 'ioctl-fionbio'];
    const { report, code, signal, stderr } = await probe([...allowed, 'clone3', ...forbidden]);
    assert.ok(report !== undefined, `the probe reported (exit ${code ?? signal}): ${stderr}`);
    for (const name of allowed) assert.equal(report.errnos[name], 0, `${name} works (a thread starts and is joined; a signal to itself; its own descriptors)`);
    assert.equal(report.errnos.clone3, ENOSYS, 'clone3 is ENOSYS, so glibc uses clone');
    for (const name of forbidden) assert.equal(report.errnos[name], EPERM, `${name}: errno ${report.errnos[name]}`);
    assert.equal(report.isolateResult, '7,14,21', 'an isolate runs code on its threads');
    assert.equal(report.timerFired, true, 'timers fire');
    assert.ok(report.landlockAbi >= 1, 'Landlock is applied where the kernel has it');
  });

  it('calls only an escape would make kill the process', async () => {
    for (const name of ['execve', 'execveat', 'ptrace', 'process_vm_readv', 'process_vm_writev', 'x32']) {
      const { report, signal, stderr } = await probe([name]);
      assert.equal(report, undefined, `${name}: the probe survived (${JSON.stringify(report)})`);
      assert.equal(signal, 'SIGSYS', `${name}: killed by seccomp (${stderr})`);
    }
  });

  it('a confined worker whose channel closes exits 0 (Node can still check its stdio on the way out)', async () => {
    const lines: string[] = [];
    const proc = new WorkerProcess('exit-check', { concurrency: 1, identity: sandboxIdentity(), onResponse: () => undefined, onDiagnostic: (_, line) => lines.push(line) });
    await eventually(() => confinedYet(proc.child.pid!), 'the worker confined');
    (proc.child.stdio[3] as Socket).end();
    await proc.exited;
    assert.deepEqual([proc.child.exitCode, proc.child.signalCode, lines], [0, null, []]);
  });

  it('a profiled worker (benchmarks) still writes its CPU profile, and is confined otherwise', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'switchyard-wall-prof-'));
    process.env.SWITCHYARD_WORKER_CPU_PROF = dir;
    const pool = new SandboxPool({ log: new CapturedLog().logger, workers: 1 });
    try {
      const pid = pool.workers[0]!.pid!;
      await eventually(() => confinedYet(pid), 'the profiled worker confined');
      const s = status(pid, String(pid));
      assert.deepEqual([s.get('NoNewPrivs'), s.get('Seccomp')], ['1', '2']);
      assert.equal(s.get('Uid')?.split('\t')[0], String(process.getuid!()), 'it keeps the service user, to write into its directory');
    } finally {
      await pool.close();
      delete process.env.SWITCHYARD_WORKER_CPU_PROF;
    }
    assert.equal(readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).length, 1, 'one profile written');
    removeDir(dir);
  });

  it('the service: workers and the check process are confined, with no secret, descriptor or directory of the service', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'switchyard-wall-'));
    const identity = await expectedIdentity();
    const token = `sy_op_${'s3cr3t'.repeat(8)}`;
    const secret = 'made-up-secret-value-7f3a9c';
    const [lo, hi] = await freePortRange(4);
    const service = await startCliServe(
      ['--data', join(dir, 'data'), '--admin', '127.0.0.1:0', '--ports', `${lo}-${hi}`, '--bind', '127.0.0.1', '--sandbox-workers', '1'],
      { SWITCHYARD_ADMIN_TOKEN: token, OPERATOR_SECRET: secret, NODE_OPTIONS: '--max-old-space-size=200' },
    );
    try {
      const api = new AdminApi(service.adminPort, token);
      let worker = 0;
      await eventually(() => (worker = workerChildren(service.pid)[0] ?? 0) !== 0 && confinedYet(worker), 'the shared worker confined');
      assertConfined(worker, service.pid, identity, [token, secret]);

      // The check process, caught while the router's top level spins.
      await api.createTenant('spin');
      const pushed = api.call('PUT', '/v1/tenants/spin/router', {
        body: "const end = Date.now() + 700; while (Date.now() < end) {} console.log('loaded'); proxy(() => ({ close: 'bye' }));",
      });
      let check = 0;
      await eventually(() => (check = workerChildren(service.pid).find((p) => p !== worker) ?? 0) !== 0 && confinedYet(check), 'the check process confined', 5000, 5);
      assertConfined(check, service.pid, identity, [token, secret]);
      assert.equal((await pushed).status, 200);

      // Router console lines travel over the channel, into the service's log with the tenant.
      const dry = await api.call('POST', '/v1/tenants/spin/route', { body: { data: 'x' } });
      assert.equal(dry.status, 200);
      await service.log.waitFor((r) => r.msg === 'loaded' && r.tenant === 'spin');

      // Node's own diagnostics (here: the inspector, asked for by SIGUSR1, cannot listen) reach the log, not stderr.
      process.kill(worker, 'SIGUSR1');
      const said = await service.log.waitFor((r) => r.msg === 'sandbox worker stderr' && r.worker === 'worker-1');
      assert.equal(said.workerPid, worker);
      assert.ok(!service.stderr().includes(String(said.line)), 'the line is not on the service stderr');
    } finally {
      service.child.kill('SIGTERM');
      await service.exited;
      removeDir(dir);
    }
  });

  it('a process of the sandbox user cannot read the data directory', { skip: !isRoot && 'needs root' }, async () => {
    const parent = mkdtempSync(join(tmpdir(), 'switchyard-wall-'));
    chmodSync(parent, 0o755);
    const control = join(parent, 'readable');
    writeFileSync(control, 'anyone\n', { mode: 0o644 });
    const hosting = await startTestHosting({ dataDir: join(parent, 'data') });
    try {
      const asNobody = (file: string) => runCommand('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', 'cat', file]);
      assert.equal((await asNobody(control)).code, 0, 'the control file is readable as nobody');
      for (const file of ['admin-token', 'switchyard.db']) {
        const r = await asNobody(join(hosting.dataDir, file));
        assert.notEqual(r.code, 0, `${file} read as nobody`);
        assert.match(r.stderr, /Permission denied/);
      }
    } finally {
      await hosting.close();
      removeDir(parent);
    }
  });

  it('the proxy is not dumpable: a root process of the same capabilities cannot read its environment', { skip: !isRoot && 'needs root' }, async () => {
    // Reading another process's environ takes the same uid, a dumpable target, and permitted
    // capabilities that include the target's (or CAP_SYS_PTRACE). Every process here runs with
    // the same few capabilities (the proxy needs setuid and setgid for its workers, and kill to
    // stop them), so dumpability alone decides.
    const caps = ['--bounding-set=-all,+setuid,+setgid,+kill', '--inh-caps=-all'];
    const readEnviron = (pid: number) => runCommand('setpriv', [...caps, 'cat', `/proc/${pid}/environ`]);
    const started: ChildProcess[] = [];
    const start = async (args: string[], ready: string): Promise<number> => {
      const child = spawn('setpriv', [...caps, process.execPath, '--no-node-snapshot', cliPath, ...args], { stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, CONTROL: 'visible' } });
      started.push(child);
      const log = new ProcessLog();
      child.stdout!.setEncoding('utf8').on('data', (s: string) => log.push(s));
      await log.waitFor((r) => r.msg === ready);
      return child.pid!;
    };
    const dir = mkdtempSync(join(tmpdir(), 'switchyard-wall-'));
    try {
      const control = spawn('setpriv', [...caps, process.execPath, '-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore', env: { CONTROL: 'visible' } });
      started.push(control);
      await eventually(() => readFileSync(`/proc/${control.pid}/cmdline`, 'latin1').includes('setInterval'), 'the control process started');
      const ok = await readEnviron(control.pid!);
      assert.equal(ok.code, 0, `the control process's environment is readable: ${ok.stderr}`);
      assert.ok(ok.stdout.includes('CONTROL=visible'));
      const [lo, hi] = await freePortRange(2);
      const single = await start(['-c', writeRouterFile("proxy(() => ({ close: 'x' }));"), '-h', '127.0.0.1', '-p', '0'], 'listening');
      const serve = await start(['serve', '--data', join(dir, 'data'), '--admin', '127.0.0.1:0', '--ports', `${lo}-${hi}`, '--bind', '127.0.0.1', '--sandbox-workers', '1'], 'serving');
      for (const [mode, pid] of [['single-router', single], ['serve', serve]] as const) {
        const r = await readEnviron(pid);
        assert.notEqual(r.code, 0, `${mode}: the proxy's environment was read`);
        assert.match(r.stderr, /Permission denied/);
      }
    } finally {
      for (const child of started) child.kill('SIGTERM');
      await Promise.all(started.map((c) => (c.exitCode !== null || c.signalCode !== null ? undefined : once(c, 'exit'))));
      removeDir(dir);
    }
  });

  it('an unknown sandbox user, or root: the service refuses to start', { skip: !isRoot && 'needs root' }, async () => {
    const single = await runCommand(process.execPath, ['--no-node-snapshot', cliPath, '-c', '/dev/null', '--sandbox-user', 'no-such-user-xyz']);
    assert.equal(single.code, 1);
    assert.match(single.stderr, /sandbox user "no-such-user-xyz" does not exist/);
    const dir = mkdtempSync(join(tmpdir(), 'switchyard-wall-'));
    try {
      const serve = await runCommand(process.execPath, ['--no-node-snapshot', cliPath, 'serve', '--data', join(dir, 'data'), '--admin', '127.0.0.1:0', '--sandbox-user', 'root']);
      assert.equal(serve.code, 1);
      assert.match(serve.stderr, /sandbox user "root" is root/);
      assert.deepEqual(readdirSync(dir), [], 'refused before the data directory was made');
    } finally {
      removeDir(dir);
    }
  });
});
