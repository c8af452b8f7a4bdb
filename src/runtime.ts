/**
 * The runtime Switchyard runs on, and the lines of Node.js it accepts. Router isolation rests
 * on V8, so a Node.js line whose V8 no longer gets security fixes is refused at start.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

/**
 * Node.js lines and the day their upstream support ends (nodejs.org's release schedule).
 * Odd lines are listed too, so that one is refused once it is over rather than taken for a
 * line too new to know. Add a line here when it is tested.
 */
export const nodeLines: readonly { readonly major: number; readonly endOfLife: string }[] = [
  { major: 20, endOfLife: '2026-04-30' },
  { major: 22, endOfLife: '2027-04-30' },
  { major: 23, endOfLife: '2025-06-01' },
  { major: 24, endOfLife: '2028-04-30' },
  { major: 25, endOfLife: '2026-06-01' },
  { major: 26, endOfLife: '2029-04-30' },
];

/** The oldest line Switchyard runs on at all: isolated-vm 7 is built for 24 and newer. */
export const minimumMajor = 24;

export type RuntimeVerdict =
  | { readonly kind: 'supported'; readonly endOfLife: string }
  | { readonly kind: 'untested' }
  | { readonly kind: 'refused'; readonly why: string };

/** Whether Node.js `major` may run Switchyard on `today` (YYYY-MM-DD). */
export function judgeRuntime(major: number, today: string): RuntimeVerdict {
  const supported = nodeLines.filter((l) => l.major >= minimumMajor && l.endOfLife > today).map((l) => l.major);
  const hint = `install a supported line (${supported.join(' or ')}), e.g. \`npm install node@${supported[0] ?? minimumMajor}\` in a folder of its own and put its bin/ first on PATH`;
  const line = nodeLines.find((l) => l.major === major);
  if (major < minimumMajor) return { kind: 'refused', why: `Node.js ${major} is not supported (isolated-vm 7 needs ${minimumMajor} or newer): ${hint}` };
  if (line === undefined) return major > Math.max(...nodeLines.map((l) => l.major)) ? { kind: 'untested' } : { kind: 'refused', why: `Node.js ${major} is not a supported line: ${hint}` };
  if (line.endOfLife <= today) {
    return { kind: 'refused', why: `Node.js ${major} reached its end of life on ${line.endOfLife} and its V8 gets no more security fixes: ${hint}` };
  }
  return { kind: 'supported', endOfLife: line.endOfLife };
}

/** What the service runs on, for the start-up log line and `switchyard_build_info`. */
export interface RuntimeInfo {
  readonly version: string;
  readonly node: string;
  readonly v8: string;
  readonly isolatedVm: string;
}

function packageVersion(url: URL): string {
  try {
    return (JSON.parse(readFileSync(url, 'utf8')) as { version?: unknown }).version as string;
  } catch {
    return 'unknown';
  }
}

let info: RuntimeInfo | undefined;

export function runtimeInfo(): RuntimeInfo {
  if (info !== undefined) return info;
  const require = createRequire(import.meta.url);
  let isolatedVm = 'unknown';
  try {
    isolatedVm = packageVersion(new URL(`file://${require.resolve('isolated-vm/package.json')}`));
  } catch {
    // not resolvable: reported as unknown
  }
  info = Object.freeze({
    version: packageVersion(new URL('../../package.json', import.meta.url)),
    node: process.versions.node,
    v8: process.versions.v8,
    isolatedVm,
  });
  return info;
}
