/**
 * The router API's TypeScript declarations (types/router.d.ts, the package's "types"): the
 * example routers in routers/ type-check against them with `// @ts-check` and `tsc --noEmit
 * --allowJs` (strict, an ECMAScript-only lib: a router has no DOM and no Node), a router that
 * returns what is no decision does not, and `switchyard router types` prints them.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { runCli, runCommand } from './helpers.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const declarations = join(root, 'types', 'router.d.ts');
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');

/** Type-checks `files` as routers: resolves tsc's exit code and output. */
async function typeCheck(files: readonly string[]): Promise<{ code: number | null; out: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'switchyard-types-'));
  const config = join(dir, 'tsconfig.json');
  writeFileSync(
    config,
    JSON.stringify({
      compilerOptions: { noEmit: true, allowJs: true, checkJs: true, strict: true, target: 'ES2022', lib: ['ES2023'], types: [] },
      files: [declarations, ...files],
    }),
  );
  const r = await runCommand(process.execPath, [tsc, '-p', config], { timeoutMs: 120_000 });
  return { code: r.code, out: r.stdout + r.stderr };
}

describe('router type declarations', () => {
  it('every example router is checked (// @ts-check) and type-checks against them', async () => {
    const routers = readdirSync(join(root, 'routers')).filter((f) => f.endsWith('.js'));
    assert.ok(routers.length >= 5);
    for (const f of routers) assert.match(readFileSync(join(root, 'routers', f), 'utf8'), /^\/\/ @ts-check\n/, f);
    const r = await typeCheck(routers.map((f) => join(root, 'routers', f)));
    assert.equal(r.code, 0, r.out);
  });

  it('a router that returns no decision, or calls an API that is not there, does not', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'switchyard-types-'));
    const bad = join(dir, 'bad.js');
    writeFileSync(
      bad,
      [
        '// @ts-check',
        "proxy((data) => data.length > 3 ? { remote: 5432 } : { noop: 'yes' });",
        "proxyAccept((conn) => ({ close: conn.remotePort }));",
        "proxy(() => ({ remote: 'a:1', noop: true }));",
        "setTimeout(() => {}, 1);",
        "console.log(table.anything, conn.tenant);",
        '',
      ].join('\n'),
    );
    const r = await typeCheck([bad]);
    assert.equal(r.code, 2, r.out);
    for (const line of [2, 3, 4, 5, 6]) assert.match(r.out, new RegExp(`bad\\.js\\(${line},`), `an error on line ${line}:\n${r.out}`);
  });

  it('the package points at them, and `switchyard router types` prints them', async () => {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { types: string; files: string[] };
    assert.equal(join(root, pkg.types), declarations);
    assert.ok(pkg.files.includes('types'));
    const r = await runCli(['router', 'types']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, readFileSync(declarations, 'utf8'));
  });
});
