/**
 * routers/git.js (the contract's example) with real `git clone` through the proxy to two real
 * `git daemon`s. Each daemon runs in inetd mode, one process per connection accepted by a
 * Node server on port 0; the router's hardcoded 127.0.0.1:9418/9419 are replaced by those ports.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { routerSource, runCommand, startProxy, type TestProxy } from './helpers.js';

/** git without the user's or system's configuration. */
const gitEnv: NodeJS.ProcessEnv = {
  PATH: process.env.PATH,
  HOME: tmpdir(),
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_CONFIG_GLOBAL: '/dev/null',
  GIT_TERMINAL_PROMPT: '0',
  GIT_AUTHOR_NAME: 'Switchyard Test',
  GIT_AUTHOR_EMAIL: 'test@example.invalid',
  GIT_COMMITTER_NAME: 'Switchyard Test',
  GIT_COMMITTER_EMAIL: 'test@example.invalid',
};

async function git(args: string[], cwd?: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return runCommand('git', args, cwd === undefined ? { env: gitEnv } : { env: gitEnv, cwd });
}

async function mustGit(args: string[], cwd?: string): Promise<void> {
  const r = await git(args, cwd);
  assert.equal(r.code, 0, `git ${args.join(' ')}: ${r.stderr}`);
}

/** Makes `<base>/<user>/repo.git`, a bare repository with one commit of README = `content`. */
async function makeRepo(root: string, base: string, user: string, content: string): Promise<void> {
  const work = join(root, `work-${user}`);
  await mustGit(['init', '-q', '-b', 'main', work]);
  writeFileSync(join(work, 'README'), content);
  await mustGit(['add', 'README'], work);
  await mustGit(['commit', '-q', '-m', `${user}'s first commit`], work);
  await mustGit(['clone', '-q', '--bare', work, join(base, user, 'repo.git')]);
}

interface Daemon {
  readonly port: number;
  readonly server: Server;
  readonly children: Set<ChildProcess>;
  /** Connections the daemon has served. */
  served: number;
}

/**
 * A real git daemon behind a Node TCP server: every accepted socket becomes the stdin and stdout
 * of `git daemon --inetd`. The server pauses sockets on accept, so no byte is read here.
 */
async function startDaemon(base: string): Promise<Daemon> {
  const children = new Set<ChildProcess>();
  const server = createServer({ pauseOnConnect: true });
  const daemon: Daemon = { port: 0, server, children, served: 0 };
  server.on('connection', (socket) => {
    socket.on('error', () => undefined);
    const child = spawn('git', ['daemon', '--inetd', '--export-all', `--base-path=${base}`, base], {
      stdio: [socket, socket, 'ignore'],
      env: gitEnv,
    });
    daemon.served++;
    children.add(child);
    child.on('exit', () => children.delete(child));
    child.on('error', () => children.delete(child));
    socket.destroy(); // the child has its own copy of the descriptor; closing ours sends no FIN
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return Object.assign(daemon, { port: (server.address() as AddressInfo).port });
}

async function stopDaemon(d: Daemon): Promise<void> {
  d.server.close();
  for (const child of d.children) {
    const exited = once(child, 'exit');
    child.kill();
    await exited;
  }
}

describe('routers/git.js', () => {
  let root: string;
  let mojombo: Daemon;
  let defunkt: Daemon;
  let proxy: TestProxy;

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'switchyard-git-'));
    await makeRepo(root, join(root, 'a'), 'mojombo', 'grit, by mojombo\n');
    await makeRepo(root, join(root, 'b'), 'defunkt', 'resque, by defunkt\n');
    mojombo = await startDaemon(join(root, 'a'));
    defunkt = await startDaemon(join(root, 'b'));
    proxy = await startProxy(
      routerSource('git.js', {
        '127.0.0.1:9418': `127.0.0.1:${mojombo.port}`,
        '127.0.0.1:9419': `127.0.0.1:${defunkt.port}`,
      }),
      { tenant: 'git' },
    );
  });
  after(async () => {
    await proxy.close();
    await stopDaemon(mojombo);
    await stopDaemon(defunkt);
    rmSync(root, { recursive: true, force: true });
  });

  it('clones each user from their own git daemon', async () => {
    const a = join(root, 'clone-mojombo');
    const ra = await git(['clone', `git://127.0.0.1:${proxy.port}/mojombo/repo.git`, a]);
    assert.equal(ra.code, 0, ra.stderr);
    assert.equal(readFileSync(join(a, 'README'), 'utf8'), 'grit, by mojombo\n');

    const b = join(root, 'clone-defunkt');
    const rb = await git(['clone', `git://127.0.0.1:${proxy.port}/defunkt/repo.git`, b]);
    assert.equal(rb.code, 0, rb.stderr);
    assert.equal(readFileSync(join(b, 'README'), 'utf8'), 'resque, by defunkt\n');
    const log = await git(['log', '--format=%s'], b);
    assert.equal(log.stdout, "defunkt's first commit\n");

    assert.equal(mojombo.served, 1);
    assert.equal(defunkt.served, 1);
    const closed = await proxy.log.waitFor((r) => r.msg === 'connection closed' && r.backend === `127.0.0.1:${defunkt.port}`);
    assert.equal(closed.decision, 'remote');
    assert.ok((closed.bytesOut as number) > 0);
  });

  it('makes git clone fail with "unknown user" for anyone else', async () => {
    const c = await git(['clone', `git://127.0.0.1:${proxy.port}/pjhyett/repo.git`, join(root, 'clone-pjhyett')]);
    assert.notEqual(c.code, 0);
    assert.match(c.stderr, /remote error: unknown user/);
    assert.equal(mojombo.served + defunkt.served, 2, 'no daemon saw the unknown user');
  });
});
