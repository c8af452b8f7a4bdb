/**
 * Errors that point at the router's code, the pure part: where a router's stack says an error
 * came from (only its own frames), the code frame, the hints.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { codeFrame, hintFor, routerFrames, scriptName } from '../src/authoring/diagnostics.js';

describe('diagnostics', () => {
  it("keeps the router's own frames, naming its top level and anonymous functions", () => {
    const stack = [
      'TypeError: boom',
      '    at lookup (acme.js:2:14)',
      '    at eval (acme.js:7:3)',
      '    at Object.route (switchyard:prelude:212:40)',
    ].join('\n');
    assert.deepEqual(routerFrames(stack, 'acme.js'), { line: 2, column: 14, stack: ['at lookup (acme.js:2:14)', 'at <anonymous> (acme.js:7:3)'] });
    const load = ['ReferenceError: x is not defined', '    at eval (acme.js:1:1)', '    at eval (<anonymous>)', '    at Object.load (switchyard:prelude:1:1)'].join('\n');
    assert.deepEqual(routerFrames(load, 'acme.js'), { line: 1, column: 1, stack: ['at <top level> (acme.js:1:1)'] });
    assert.equal(routerFrames('Error: x\n    at other.js:1:1', 'acme.js'), undefined);
    // A file name is made safe for a sourceURL comment and a pattern.
    assert.equal(scriptName('my router\n(1).js'), 'my_router__1_.js');
    assert.deepEqual(routerFrames('E\n    at f (a.b:3:4)', 'a.b')?.line, 3);
    assert.equal(routerFrames('E\n    at f (aXb:3:4)', 'a.b'), undefined);
  });

  it('a code frame: two lines either side, the column marked, a long line shown around it', () => {
    const source = 'one\ntwo\nthree\nfour\nfive\nsix\n';
    assert.equal(codeFrame(source, 3, 2), ['  1 | one', '  2 | two', '> 3 | three', '    |  ^', '  4 | four', '  5 | five'].join('\n'));
    assert.equal(codeFrame('a\n', 2, 1), ['  1 | a', '> 2 |', '    | ^'].join('\n'));
    assert.equal(codeFrame('\tx = ;', 1, 6), ['> 1 | \tx = ;', '    | \t    ^'].join('\n'));
    const long = `${'x'.repeat(300)}BAD${'y'.repeat(300)}`;
    const frame = codeFrame(long, 1, 301)!;
    const [text, caret] = frame.split('\n');
    assert.ok(text!.length < 140, text);
    assert.equal(text![caret!.indexOf('^')], 'B');
    assert.equal(codeFrame('x', 5, 1), undefined);
  });

  it('hints: module syntax, TypeScript, Node globals; none for an ordinary mistake', () => {
    assert.match(hintFor('ERR_ROUTER_SYNTAX', "Unexpected token 'export'", 'export function f() {}')!, /not ES modules/);
    assert.match(hintFor('ERR_ROUTER_SYNTAX', 'Cannot use import statement outside a module', "import x from 'y';")!, /not ES modules/);
    for (const line of ['function f(a: string) {', 'type Route = { host: string };', 'const x = y as const;', 'enum Kind { A }', 'let n: number = 1;', 'declare const table: any;']) {
      assert.match(hintFor('ERR_ROUTER_SYNTAX', 'Unexpected token', line) ?? '', /TypeScript/, line);
    }
    assert.equal(hintFor('ERR_ROUTER_SYNTAX', "Unexpected token ';'", 'const x = ;'), undefined);
    assert.equal(hintFor('ERR_ROUTER_SYNTAX', "Unexpected token ':'", "const o = { a: 1, b: };"), undefined);
    assert.match(hintFor('ERR_ROUTER_THROW', 'router threw while loading: ReferenceError: require is not defined', undefined)!, /no require/);
    assert.match(hintFor('ERR_ROUTER_THROW', 'router threw: ReferenceError: setTimeout is not defined', undefined)!, /no timers/);
  });
});
