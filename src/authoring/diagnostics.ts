/**
 * What a router's author is told when the router fails: where in its own source (line and
 * column), a short code frame around that place, the router's own stack frames (none of
 * Switchyard's), and a hint for the mistakes a newcomer makes (an ES module, TypeScript, Node's
 * require). The same view is what the admin API's 422, the dry run and the command line show.
 *
 * Everything here is pure text work on the host side: the stack text comes out of the isolate as
 * a string (see prelude.ts) and is treated as hostile, bounded input.
 */
import { RouterError, RouterLoadError, type SourceLocation } from '../errors.js';

/** A failure as the router's author sees it: the same fields in the API, the dry run and the CLI. */
export interface FailureView {
  readonly error: string;
  readonly code: string;
  readonly line?: number;
  readonly column?: number;
  /** A few lines of source around `line`, the place marked with `^`. */
  readonly frame?: string;
  /** The router's own stack frames, as `at fn (acme.js:4:10)`. */
  readonly stack?: readonly string[];
  readonly hint?: string;
}

/** Stack text kept from the sandbox, and frames kept from it. */
const maxStackChars = 4000;
const maxFrames = 10;
/** Lines of context before and after the line of the error, and how wide a shown line may be. */
const contextLines = 2;
const frameWidth = 120;

/** A file name as it may appear in stack traces and a sourceURL comment: no spaces, no line breaks. */
export function scriptName(name: string): string {
  const safe = name.replace(/[^\w.\-]/g, '_').slice(0, 100);
  return safe === '' ? 'router.js' : safe;
}

/**
 * The frames of `stack` that are in `filename` (the router's own), innermost first, and where
 * the innermost one is. V8 writes a frame as `at fn (file:line:col)` or `at file:line:col`, and
 * names both the script's top level (run by the prelude's eval, whose own frame follows it) and
 * an anonymous function in it `eval`: shown as `<top level>` and `<anonymous>`. Frames of the
 * prelude, of eval itself, or of anything else are dropped.
 */
export function routerFrames(stack: string, filename: string): SourceLocation | undefined {
  const file = escapeRegExp(filename);
  const framed = new RegExp(`^\\s*at (.{1,200}?) \\(${file}:(\\d+):(\\d+)\\)$`);
  const bare = new RegExp(`^\\s*at ${file}:(\\d+):(\\d+)$`);
  const frames: string[] = [];
  let first: { line: number; column: number } | undefined;
  const lines = stack.slice(0, maxStackChars).split('\n');
  for (const [i, text] of lines.entries()) {
    let fn: string | undefined;
    let line: number;
    let column: number;
    const f = framed.exec(text);
    const b = f === null ? bare.exec(text) : null;
    if (f !== null) {
      const name = f[1] !== 'eval' ? f[1] : /^\s*at eval \(<anonymous>\)$/.test(lines[i + 1] ?? '') ? '<top level>' : '<anonymous>';
      [fn, line, column] = [name, Number(f[2]), Number(f[3])];
    }
    else if (b !== null) [line, column] = [Number(b[1]), Number(b[2])];
    else continue;
    first ??= { line, column };
    if (frames.length < maxFrames) frames.push(fn === undefined ? `at ${filename}:${line}:${column}` : `at ${fn} (${filename}:${line}:${column})`);
  }
  return first === undefined ? undefined : { ...first, stack: frames };
}

/**
 * A short code frame: `contextLines` lines either side of `line`, numbered, the line marked
 * with `>` and the column with `^`. A long line is shown as a window around the column.
 */
export function codeFrame(source: string, line: number, column: number): string | undefined {
  const lines = source.split(/\r\n|\r|\n/);
  // The empty "line" after a final line break is no line of the file.
  if (lines.length > line && lines.at(-1) === '') lines.pop();
  if (line < 1 || line > lines.length) return undefined;
  const from = Math.max(1, line - contextLines);
  const to = Math.min(lines.length, line + contextLines);
  const width = String(to).length;
  // One window for every shown line, so that they stay aligned: around the column on a long line.
  const start = column - 1 > frameWidth - 20 ? column - 1 - (frameWidth - 40) : 0;
  const out: string[] = [];
  for (let n = from; n <= to; n++) {
    const text = lines[n - 1]!;
    const shown = (start > 0 ? '…' : '') + text.slice(start, start + frameWidth) + (text.length > start + frameWidth ? '…' : '');
    out.push(`${n === line ? '>' : ' '} ${String(n).padStart(width)} | ${shown}`.trimEnd());
    if (n === line) {
      // Tabs before the column stay tabs, so that the caret lines up in a terminal.
      const before = text.slice(start, Math.max(start, column - 1)).replace(/[^\t]/g, ' ');
      out.push(`  ${' '.repeat(width)} | ${start > 0 ? ' ' : ''}${before}^`);
    }
  }
  return out.join('\n');
}

/** Module syntax: routers are classic scripts. */
const moduleHint =
  'routers are classic scripts, not ES modules: there is no import or export. Call proxy(fn) to register the router; proxy, proxyAccept, table and console are globals.';
const typeScriptHint =
  'this looks like TypeScript: routers run as plain JavaScript. Compile it first (tsc, or any tool that strips types) and push the .js; for type checking, add // @ts-check and the router API declarations (types/router.d.ts, see the README).';
const requireHint = 'routers have no modules and no I/O: there is no require, module or exports. Call proxy(fn) to register the router.';
const timerHint = 'routers have no timers and no I/O: a router answers each call with a decision, and is called again when more data arrives.';

/** A TypeScript-only construct at the start of a line, or in the middle of it. */
const typeScriptLine =
  /^\s*(?:export\s+)?(?:declare\s|interface\s+\w|type\s+\w+\s*(?:<[^>]*>)?\s*=|enum\s+\w|namespace\s+\w|abstract\s+class\b)|\bas\s+(?:const|string|number|boolean|any|unknown)\b|(?:\w|\))\s*\??:\s*(?:string|number|boolean|any|unknown|void|never|object|Record\b|Array\b|readonly\b|[A-Z]\w*(?:<|\[|\s*[,)=;{]))|\bfunction\s*\w*\s*<\w/;

/** A hint for a failure whose message or source line suggests a common mistake, or undefined. */
export function hintFor(code: string, message: string, sourceLine: string | undefined): string | undefined {
  const line = sourceLine ?? '';
  if (code === 'ERR_ROUTER_SYNTAX') {
    if (/\bimport statement outside a module\b|'import\.meta' outside a module|Unexpected token 'export'/.test(message) || /^\s*(?:export|import)\b/.test(line)) return moduleHint;
    if (typeScriptLine.test(line)) return typeScriptHint;
    return undefined;
  }
  if (/\b(?:require|module|exports) is not defined\b/.test(message)) return requireHint;
  if (/\b(?:setTimeout|setInterval|setImmediate|fetch|process|Buffer|queueMicrotask) is not defined\b/.test(message)) return timerHint;
  return undefined;
}

/**
 * The view of a failed load or call: the error's message and code, where in `source` it happened
 * (a syntax error's position, or the innermost frame of the router's own stack), the code frame
 * there, the router's stack frames and a hint. `source` is the script that failed (undefined
 * when it is not at hand: no frame then).
 */
export function failureView(err: RouterLoadError | RouterError, source: string | undefined): FailureView {
  const at = err instanceof RouterLoadError ? (err.line === undefined ? undefined : { line: err.line, column: err.column ?? 1, stack: err.frames ?? [] }) : err.where;
  const sourceLine = at === undefined || source === undefined ? undefined : source.split(/\r\n|\r|\n/, at.line)[at.line - 1];
  const hint = hintFor(err.code, err.message, sourceLine);
  const frame = at === undefined || source === undefined ? undefined : codeFrame(source, at.line, at.column);
  return {
    // A call's message names the place too, for the log: here it has fields of its own.
    error: err instanceof RouterError && at !== undefined ? err.message.replace(/ \(at [^()]*:\d+:\d+\)$/, '') : err.message,
    code: err.code,
    ...(at === undefined ? {} : { line: at.line, column: at.column }),
    ...(frame === undefined ? {} : { frame }),
    ...(at === undefined || at.stack.length === 0 ? {} : { stack: at.stack }),
    ...(hint === undefined ? {} : { hint }),
  };
}

/** A failure view as a person reads it in a terminal: `file:line:col: message (code)`, the frame, the stack, the hint. */
export function formatFailure(view: FailureView, file: string): string {
  const at = view.line === undefined ? '' : `:${view.line}:${view.column}`;
  const parts = [`${file}${at}: ${view.error} (${view.code})`];
  if (view.frame !== undefined) parts.push('', view.frame);
  if (view.stack !== undefined && view.stack.length > 0) parts.push('', ...view.stack.map((f) => `    ${f}`));
  if (view.hint !== undefined) parts.push('', `hint: ${view.hint}`);
  return `${parts.join('\n')}\n`;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
