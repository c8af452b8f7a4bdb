/**
 * The runtime: which Node.js lines run Switchyard (a dated table; an end-of-life line is
 * refused with what to install instead), and where the running versions are reported.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { describe, it } from 'node:test';
import { judgeRuntime, nodeLines } from '../src/runtime.js';
import { cliPath, startCliProxy } from './helpers.js';

const isolatedVmVersion = (JSON.parse(readFileSync(createRequire(import.meta.url).resolve('isolated-vm/package.json'), 'utf8')) as { version: string }).version;

describe('supported Node.js lines', () => {
  it('runs on 24 and 26 until their end of life, and refuses them after', () => {
    assert.deepEqual(judgeRuntime(24, '2026-12-04'), { kind: 'supported', endOfLife: '2028-04-30' });
    assert.deepEqual(judgeRuntime(26, '2026-12-04'), { kind: 'supported', endOfLife: '2029-04-30' });
    const over = judgeRuntime(24, '2028-04-30');
    assert.equal(over.kind, 'refused');
    assert.match(over.kind === 'refused' ? over.why : '', /Node\.js 24 reached its end of life on 2028-04-30.*install a supported line \(26\)/);
  });

  it('refuses lines older than 24, and an odd line once it is over, saying what to install', () => {
    for (const major of [18, 20, 22]) {
      const v = judgeRuntime(major, '2026-12-04');
      assert.equal(v.kind, 'refused', `Node.js ${major}`);
      assert.match(v.kind === 'refused' ? v.why : '', /isolated-vm 7 needs 24 or newer\): install a supported line \(24 or 26\), e\.g\. `npm install node@24`/);
    }
    const odd = judgeRuntime(25, '2026-12-04');
    assert.match(odd.kind === 'refused' ? odd.why : '', /Node\.js 25 reached its end of life on 2026-06-01/);
  });

  it('runs a line newer than the table, as untested', () => {
    const newest = Math.max(...nodeLines.map((l) => l.major));
    assert.deepEqual(judgeRuntime(newest + 1, '2026-12-04'), { kind: 'untested' });
  });

  it('the running Node.js is a supported line (the one this suite runs on)', () => {
    const major = Number(process.versions.node.split('.')[0]);
    assert.equal(judgeRuntime(major, new Date().toISOString().slice(0, 10)).kind, 'supported', `Node.js ${process.versions.node}`);
  });
});

describe('an unsupported Node.js running the command', () => {
  // The machines these tests run on carry an older system Node.js beside the one under test.
  const old = ['/usr/bin/node', '/usr/local/bin/node'].find((p) => {
    const r = spawnSync(p, ['-p', 'process.versions.node.split(".")[0]'], { encoding: 'utf8' });
    return r.status === 0 && Number(r.stdout) < 24;
  });

  it('exits 1 before loading any native addon, naming the line and what to install', { skip: old === undefined ? 'no Node.js older than 24 on this machine' : false }, () => {
    const r = spawnSync(old!, ['--no-node-snapshot', cliPath, 'serve', '--data', '/nonexistent/switchyard-data'], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /^switchyard: Node\.js \d+ is not supported \(isolated-vm 7 needs 24 or newer\): install a supported line/m);
    assert.doesNotMatch(r.stderr, /NODE_MODULE_VERSION|ERR_DLOPEN_FAILED|at /, 'no stack trace, no addon error');
  });
});

describe('the runtime in the start-up log line', () => {
  it('names Switchyard, Node.js, V8 and isolated-vm', async () => {
    const proc = await startCliProxy('proxy(() => ({ close: true }));');
    try {
      const line = await proc.log.waitFor((r) => r.msg === 'listening');
      assert.deepEqual(line.runtime, { version: '0.1.0', node: process.versions.node, v8: process.versions.v8, isolatedVm: isolatedVmVersion });
    } finally {
      proc.child.kill('SIGKILL');
      await proc.exited;
    }
  });
});
