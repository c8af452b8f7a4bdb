/**
 * The systemd unit in deploy/: `systemd-analyze verify` loads it (as it is, and with the
 * root-then-drop drop-in) without a warning, `systemd-analyze security` rates its exposure low,
 * and its command lines use options `switchyard serve` has. systemd is not booted: both tools
 * read the files offline. Skipped, saying so, where systemd-analyze is not installed (.ci/run
 * installs Debian's systemd package for it).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { keepCapabilitiesOption, parseCapabilities, userOption } from '../src/node/privileges.js';
import { cliPath, removeDir, runCommand } from './helpers.js';

const deploy = new URL('../../deploy/', import.meta.url);
const unit = readFileSync(new URL('switchyard.service', deploy), 'utf8');
const rootThenDrop = readFileSync(new URL('root-then-drop.conf', deploy), 'utf8');

function analyzer(): string | undefined {
  try {
    return execFileSync('sh', ['-c', 'command -v systemd-analyze'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}
const systemdAnalyze = analyzer();
const skip = systemdAnalyze === undefined ? 'systemd-analyze is not installed (Debian: apt-get install systemd; .ci/run does)' : false;

/**
 * The unit (and drop-ins) in a directory of their own, as systemd-analyze finds them. verify
 * checks that each command's executable exists: /usr/bin/node is where the unit expects Node,
 * which this machine may have elsewhere, so the copy names the running one.
 */
function unitDir(dropIns: Record<string, string> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'switchyard-unit-'));
  after(() => removeDir(dir));
  const here = (text: string): string => text.replaceAll('/usr/bin/node ', `${process.execPath} `);
  writeFileSync(join(dir, 'switchyard.service'), here(unit));
  if (Object.keys(dropIns).length > 0) mkdirSync(join(dir, 'switchyard.service.d'));
  for (const [name, text] of Object.entries(dropIns)) writeFileSync(join(dir, 'switchyard.service.d', name), here(text));
  return join(dir, 'switchyard.service');
}

/** `KEY=value` settings of a unit file's [Service] section, in order, continuation lines joined. */
function settings(text: string): [string, string][] {
  const out: [string, string][] = [];
  let section = '';
  for (const line of text.replace(/\\\n/g, ' ').split('\n')) {
    if (/^\[.*\]$/.test(line)) section = line;
    const m = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (m !== null && section === '[Service]') out.push([m[1]!, m[2]!]);
  }
  return out;
}

describe('deploy/switchyard.service', () => {
  it('loads without a warning, as it is and with the root-then-drop drop-in', { skip }, async () => {
    for (const path of [unitDir(), unitDir({ 'root-then-drop.conf': rootThenDrop })]) {
      const r = await runCommand(systemdAnalyze!, ['verify', '--man=no', path]);
      assert.equal(r.code, 0, `${path}: ${r.stderr}`);
      assert.equal(r.stdout + r.stderr, '', `systemd-analyze verify warns about ${path}`);
    }
  });

  it('has a low exposure in systemd-analyze security, as it is and started as root', { skip }, async () => {
    const exposure = async (path: string): Promise<number> => {
      const r = await runCommand(systemdAnalyze!, ['security', '--offline=true', '--no-pager', path]);
      const m = /Overall exposure level for switchyard\.service: (\d+\.\d)/.exec(r.stdout + r.stderr);
      assert.ok(m !== null, r.stdout + r.stderr);
      return Number(m[1]);
    };
    // 10 is a service with no sandboxing at all; systemd calls below 4 "OK" (2.1 and 2.8 with systemd 252).
    assert.ok((await exposure(unitDir())) <= 3, 'the unit as it is');
    assert.ok((await exposure(unitDir({ 'root-then-drop.conf': rootThenDrop }))) <= 3.5, 'started as root');
  });

  it('runs the Node process itself, notifies, reloads on HUP, and drains on TERM', () => {
    const s = new Map(settings(unit));
    assert.equal(s.get('Type'), 'notify');
    assert.equal(s.get('NotifyAccess'), 'all');
    assert.match(s.get('ExecStart') ?? '', /^\/usr\/bin\/node --no-node-snapshot \/opt\/switchyard\/dist\/src\/cli\.js serve /);
    assert.equal(s.get('ExecReload'), '/bin/kill -HUP $MAINPID');
    assert.equal(s.get('KillMode'), 'mixed');
    assert.equal(s.get('KillSignal'), 'SIGTERM');
    assert.ok(Number.parseInt(s.get('TimeoutStopSec') ?? '', 10) > 10, 'longer than the 10 s grace period');
    assert.equal(s.get('User'), 'switchyard');
    assert.equal(s.get('AmbientCapabilities'), 'CAP_NET_BIND_SERVICE');
    assert.equal(s.get('NoNewPrivileges'), 'yes');
    assert.equal(s.get('MemoryDenyWriteExecute'), 'no', 'V8 compiles code at run time');
    assert.match(s.get('RestrictAddressFamilies') ?? '', /AF_NETLINK/, 'os.networkInterfaces() needs netlink');
  });

  it('passes only options that `switchyard serve` has', async () => {
    const help = await runCommand(process.execPath, ['--no-node-snapshot', cliPath, 'serve', '--help']);
    assert.equal(help.code, 0, help.stderr);
    // --user and --keep-capabilities are defined in src/node/privileges.ts for serve to add.
    const known = new Set([...help.stdout.matchAll(/--[a-z][a-z-]*/g)].map((m) => m[0]));
    for (const option of [userOption(), keepCapabilitiesOption()]) known.add(option.long!);
    for (const text of [unit, rootThenDrop]) {
      for (const [key, value] of settings(text)) {
        if (key !== 'ExecStart' || value === '') continue;
        const args = value.split(/\s+/).slice(value.split(/\s+/).indexOf('serve') + 1);
        for (const arg of args.filter((a) => a.startsWith('--'))) assert.ok(known.has(arg), `${arg} is not an option of switchyard serve`);
        const keep = args.indexOf('--keep-capabilities');
        if (keep >= 0) assert.deepEqual(parseCapabilities(args[keep + 1]!), ['CAP_NET_BIND_SERVICE']);
      }
    }
  });
});
