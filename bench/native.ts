/**
 * The native load side (bench/native/rate.c: the rate and bulk clients; the git-like, sink,
 * source and raw HTTP backends): compiled with `cc` at bench time, when there is one. The Node
 * generator (load.ts) and backends (backends.ts) are the fallback: on a 2-core machine they
 * saturate CPU 0 with no proxy at all (~7,900 connections/s, ~950 MB/s of bulk, wrk's raw HTTP
 * backend), which caps every proxy faster than that.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The C source, in the source tree (this file runs from dist/bench/). */
export const nativeSource = fileURLToPath(new URL('../../bench/native/rate.c', import.meta.url));

const built = new Map<string, string | undefined>();

/**
 * Compiles rate.c into `outDir`/rate unless a binary newer than the source is there already;
 * returns its path, or undefined (the reason logged to stderr, once) when there is no `cc` or
 * the compile fails.
 */
export function buildNative(outDir: string): string | undefined {
  if (built.has(outDir)) return built.get(outDir);
  const result = build(outDir);
  if (typeof result !== 'string') process.stderr.write(`bench: native load generator unavailable (${result.reason}); using the Node one\n`);
  const bin = typeof result === 'string' ? result : undefined;
  built.set(outDir, bin);
  return bin;
}

function build(outDir: string): string | { reason: string } {
  const bin = join(outDir, 'rate');
  if (!existsSync(nativeSource)) return { reason: `${nativeSource} is missing` };
  try {
    if (existsSync(bin) && statSync(bin).mtimeMs >= statSync(nativeSource).mtimeMs) return bin;
  } catch {
    // compile again
  }
  mkdirSync(outDir, { recursive: true });
  // Into a temporary name, then renamed: a concurrent run never sees a half-written binary.
  const tmp = `${bin}.${process.pid}.tmp`;
  const cc = spawnSync('cc', ['-O2', '-Wall', '-Wextra', '-o', tmp, nativeSource], { encoding: 'utf8', timeout: 60_000 });
  if (cc.error !== undefined) {
    rmSync(tmp, { force: true });
    return { reason: (cc.error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no cc on PATH' : `cc: ${cc.error.message}` };
  }
  if (cc.status !== 0) {
    rmSync(tmp, { force: true });
    return { reason: `cc failed (${cc.status ?? cc.signal}): ${cc.stderr.trim().slice(-1000)}` };
  }
  if (cc.stderr.trim() !== '') process.stderr.write(`bench: cc warnings for ${nativeSource}:\n${cc.stderr}`);
  renameSync(tmp, bin);
  return bin;
}
