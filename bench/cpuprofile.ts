/**
 * Summarises a V8 .cpuprofile (node --cpu-prof): self time per function, highest first.
 *
 *   node dist/bench/cpuprofile.js FILE.cpuprofile [--top N]
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface HotFunction {
  selfPercent: number;
  selfMs: number;
  name: string;
  where: string;
}

export function summarise(file: string, top = 20): { totalMs: number; functions: HotFunction[] } {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map<number, ProfileNode>();
  for (const node of profile.nodes) byId.set(node.id, node);
  const self = new Map<string, { us: number; name: string; where: string }>();
  let total = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const node = byId.get(profile.samples[i]!);
    const dt = profile.timeDeltas[i + 1] ?? 0; // a sample's time is the gap to the next one
    if (node === undefined) continue;
    total += dt;
    const { functionName, url, lineNumber } = node.callFrame;
    const file = url.replace(/^file:\/\/.*?\/(node_modules|dist)\//, '$1/');
    const where = url === '' ? '' : `${file}:${lineNumber + 1}`;
    const key = `${functionName}@${where}`;
    const entry = self.get(key) ?? { us: 0, name: functionName === '' ? '(anonymous)' : functionName, where };
    entry.us += dt;
    self.set(key, entry);
  }
  const functions = [...self.values()]
    .sort((a, b) => b.us - a.us)
    .slice(0, top)
    .map((e) => ({ selfPercent: total > 0 ? (100 * e.us) / total : 0, selfMs: e.us / 1000, name: e.name, where: e.where }));
  return { totalMs: total / 1000, functions };
}

export function formatHot(functions: readonly HotFunction[]): string {
  return functions.map((f) => `${f.selfPercent.toFixed(1).padStart(6)}%  ${f.selfMs.toFixed(0).padStart(7)} ms  ${f.name}  ${f.where}`).join('\n');
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const file = process.argv[2];
  if (file === undefined) {
    process.stderr.write('usage: node dist/bench/cpuprofile.js FILE.cpuprofile [--top N]\n');
    process.exit(2);
  }
  const topAt = process.argv.indexOf('--top');
  const top = topAt > 0 ? Number(process.argv[topAt + 1]) : 25;
  const s = summarise(file, top);
  process.stdout.write(`total sampled: ${s.totalMs.toFixed(0)} ms\n${formatHot(s.functions)}\n`);
}
