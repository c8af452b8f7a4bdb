/** Parsers of command-line values shared by the commands: each throws commander's InvalidArgumentError. */
import { InvalidArgumentError } from 'commander';
import { parseAllowRule, type AllowRule } from '../routing/policy.js';

/** An integer from `min` to `max`. */
export function integer(min: number, max: number) {
  return (text: string): number => {
    if (!/^\d+$/.test(text)) throw new InvalidArgumentError(`expected an integer from ${min} to ${max}`);
    const n = Number(text);
    if (n < min || n > max) throw new InvalidArgumentError(`expected an integer from ${min} to ${max}`);
    return n;
  };
}

/** An `--allow` rule, added to those given before (the flag repeats). */
export function allowRule(text: string, previous: AllowRule[] = []): AllowRule[] {
  const rule = parseAllowRule(text);
  if (typeof rule === 'string') throw new InvalidArgumentError(rule);
  return [...previous, rule];
}
