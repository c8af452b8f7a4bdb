/**
 * Parses a JSON request body with a bound on nesting. Deep nesting is refused before
 * JSON.parse runs, so no later recursive walk (JSON.stringify, a validator, a structured
 * clone) can overflow the stack: a 5,000-deep body is a 400, not a RangeError and a 500.
 */

export const jsonBodyDefaults = { maxDepth: 64 } as const;

export type JsonBody = { readonly ok: true; readonly value: unknown } | { readonly ok: false; readonly reason: string };

/** `maxDepth`: arrays and objects inside one another; `{}` and `[]` are 1 deep, a scalar 0. */
export function parseJsonBody(text: string, options: { readonly maxDepth?: number } = {}): JsonBody {
  const maxDepth = options.maxDepth ?? jsonBodyDefaults.maxDepth;
  const depth = nestingDepth(text, maxDepth);
  if (depth.over) return { ok: false, reason: `JSON nested deeper than ${maxDepth} levels (at character ${depth.at + 1})` };
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch (err) {
    return { ok: false, reason: `not valid JSON: ${(err as Error).message}` };
  }
}

/**
 * The deepest nesting of `[` and `{` outside strings, in one pass without recursion; stops
 * at the first bracket past `limit`. Exact for valid JSON; on invalid text it may say
 * anything, and JSON.parse then rejects the text.
 */
export function nestingDepth(text: string, limit = Number.POSITIVE_INFINITY): { readonly max: number; readonly over: boolean; readonly at: number } {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: the next character is escaped
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x5b || c === 0x7b) {
      depth++;
      if (depth > max) max = depth;
      if (depth > limit) return { max, over: true, at: i };
    } else if (c === 0x5d || c === 0x7d) {
      depth--;
    }
  }
  return { max, over: false, at: -1 };
}
