import { decisionLimits, scriptLimits } from '../config.js';

/**
 * The trusted code that runs first in every tenant context, before the tenant's script.
 *
 * It captures the intrinsics it needs while they are still pristine, registers the router API
 * (`proxy`, `proxyAccept`, `proxyConnectError`, `proxyInactivityError`, `console`, `table`) and
 * hands the host five entry points. Each entry point calls tenant code and then unwraps what it
 * returned into JSON text *inside the call*, so every getter, Proxy trap or toJSON the tenant
 * planted runs under the call's time limit. The host receives one string and never a tenant
 * object; a thrown value never leaves the isolate either.
 *
 * Envelope, built by concatenation of JSON-encoded primitives only:
 *   {"d": <decision as plain JSON, or null>, "l": [[stream, line], ...], "x": dropped}
 *   {"e": "throw"|"invalid"|"noproxy", "m": message, "k": stack text, "l": ..., "x": ...}
 *
 * The script is run by an indirect eval with a sourceURL comment naming its file, so that the
 * stack of what it throws names the file with lines and columns of the script as uploaded; the
 * host keeps only those frames (authoring/diagnostics.ts).
 */
export const preludeSource = `(function () {
  'use strict';
  const G = globalThis;
  const apply = Reflect.apply;
  const ownKeys = Reflect.ownKeys;
  const getOwn = Reflect.getOwnPropertyDescriptor;
  const getProto = Reflect.getPrototypeOf;
  const define = Reflect.defineProperty;
  const hasOwn = Object.hasOwn;
  const freeze = Object.freeze;
  const isArray = Array.isArray;
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  const indirectEval = eval;
  const slice = String.prototype.slice;
  const isFinite = Number.isFinite;
  const ObjectProto = Object.prototype;
  const ArrayProto = Array.prototype;
  const MAX_STRING = ${decisionLimits.maxStringChars};
  const MAX_REMOTE = ${decisionLimits.maxRemoteChars};
  const MAX_REMOTES = ${decisionLimits.maxRemotes};
  const MAX_KEYS = 16;
  const MAX_LOG_LINES = ${scriptLimits.maxLogLinesPerCall};
  const MAX_LOG_CHARS = ${scriptLimits.maxLogLineChars};
  const MAX_STACK = 4000;
  const INVALID = freeze({});
  // Proxies cannot be told apart from plain objects by their behaviour, but V8 refuses to
  // capture a stack trace onto one, with a message learnt here from a known Proxy.
  const captureStackTrace = Error.captureStackTrace;
  const proxyMessage = (() => { try { captureStackTrace(new Proxy({}, {})); } catch (e) { return e.message; } return undefined; })();
  function isProxy(o) {
    try { captureStackTrace(o); return false; } catch (e) { return proxyMessage !== undefined && e.message === proxyMessage; }
  }
  let invalidReason = '';

  // Memory the heap limit does not count, and shared memory, are not part of the router API.
  delete G.WebAssembly;
  delete G.SharedArrayBuffer;
  delete G.Atomics;
  // V8 calls this hook whenever a stack is formatted, possibly from the host side: lock it.
  define(Error, 'prepareStackTrace', { value: undefined, writable: false, enumerable: false, configurable: false });

  let routeFn, acceptFn, connectErrorFn, inactivityErrorFn;
  function api(name, set) {
    define(G, name, {
      value: freeze(function (fn) {
        if (typeof fn !== 'function') throw new TypeError(name + '() expects a function');
        set(fn);
      }),
      writable: true, enumerable: false, configurable: true,
    });
  }
  api('proxy', (fn) => { routeFn = fn; });
  api('proxyAccept', (fn) => { acceptFn = fn; });
  api('proxyConnectError', (fn) => { connectErrorFn = fn; });
  api('proxyInactivityError', (fn) => { inactivityErrorFn = fn; });

  // console: lines are kept here and travel back with the next result.
  let logs = '', logCount = 0, logDropped = 0;
  function cut(s, n) { return s.length > n ? apply(slice, s, [0, n]) : s; }
  function show(v) {
    const t = typeof v;
    if (t === 'string') return v;
    if (t === 'number' || t === 'boolean' || t === 'bigint' || v === null || v === undefined) return '' + v;
    if (t === 'symbol' || t === 'function') return '[' + t + ']';
    try { const s = stringify(v); return typeof s === 'string' ? s : '[object]'; } catch { return '[object]'; }
  }
  function writer(stream) {
    return freeze(function (...args) {
      if (logCount >= MAX_LOG_LINES) { logDropped++; return; }
      let line = '';
      for (let i = 0; i < args.length; i++) {
        line += (i === 0 ? '' : ' ') + show(args[i]);
        if (line.length > MAX_LOG_CHARS) break;
      }
      logs += (logCount === 0 ? '' : ',') + '[' + stringify(stream) + ',' + stringify(cut(line, MAX_LOG_CHARS)) + ']';
      logCount++;
    });
  }
  const log = writer('log'), error = writer('error');
  define(G, 'console', {
    value: freeze({ log, info: log, debug: log, warn: error, error }),
    writable: true, enumerable: false, configurable: true,
  });
  define(G, 'table', { value: freeze({}), writable: false, enumerable: false, configurable: true });

  function takeLogs() {
    if (logCount === 0 && logDropped === 0) return '';
    const s = ',"l":[' + logs + '],"x":' + logDropped;
    logs = ''; logCount = 0; logDropped = 0;
    return s;
  }
  function ok(json) { return '{"d":' + json + takeLogs() + '}'; }
  function fail(kind, message, stack) {
    return '{"e":' + stringify(kind) + ',"m":' + stringify(message) + (typeof stack === 'string' ? ',"k":' + stringify(stack) : '') + takeLogs() + '}';
  }
  function thrown(e) { return fail('throw', describeError(e), stackOf(e)); }
  function invalid(reason) { invalidReason = reason; return INVALID; }

  function ownValue(o, key, depth) {
    for (let i = 0; i < depth && o !== null && typeof o === 'object'; i++) {
      const d = getOwn(o, key);
      if (d !== undefined) return hasOwn(d, 'value') ? d.value : undefined;
      o = getProto(o);
    }
    return undefined;
  }
  function describeError(e) {
    try {
      if (typeof e === 'string') return cut(e, 500);
      if (typeof e !== 'object' || e === null) return 'a thrown ' + (e === null ? 'null' : typeof e);
      const name = ownValue(e, 'name', 4), message = ownValue(e, 'message', 1);
      return cut((typeof name === 'string' ? name : 'Error') + (typeof message === 'string' ? ': ' + message : ''), 500);
    } catch {
      return 'an unreadable thrown value';
    }
  }

  // V8 keeps an error's stack behind an own accessor, one getter for every error, which formats
  // the stack on its first read. The header it formats reads the error's "name" and "message":
  // the getter is called only when both are strings or absent, found as data properties along the
  // prototype chain, so that formatting runs no tenant getter or toString (as describeError).
  const stackGetter = (getOwn(new Error(), 'stack') || {}).get;
  function plainField(e, key) {
    let o = e;
    for (let i = 0; i < 8 && o !== null && typeof o === 'object'; i++) {
      const d = getOwn(o, key);
      if (d !== undefined) return hasOwn(d, 'value') && (d.value === undefined || typeof d.value === 'string');
      o = getProto(o);
    }
    return o === null;
  }

  // The stack text of a thrown Error, or undefined.
  function stackOf(e) {
    try {
      if (typeof e !== 'object' || e === null) return undefined;
      const d = getOwn(e, 'stack');
      if (d === undefined) return undefined;
      let v;
      if (hasOwn(d, 'value')) v = d.value;
      else if (d.get === stackGetter && stackGetter !== undefined && plainField(e, 'name') && plainField(e, 'message')) v = apply(stackGetter, e, []);
      return typeof v === 'string' ? cut(v, MAX_STACK) : undefined;
    } catch {
      return undefined;
    }
  }

  // Unwraps a returned value into JSON text: a plain object (or null prototype) with own
  // enumerable data properties, whose values are strings, finite numbers, booleans, null or
  // an array of strings. Anything else is INVALID with a reason.
  function scalar(v, key) {
    switch (typeof v) {
      case 'string':
        if (v.length > (key === 'remote' ? MAX_REMOTE : MAX_STRING)) throw invalid(key + ' is longer than ' + (key === 'remote' ? MAX_REMOTE : MAX_STRING) + ' characters');
        return stringify(v);
      case 'number':
        if (!isFinite(v)) throw invalid(key + ' must be a finite number, got ' + v);
        return stringify(v);
      case 'boolean':
        return v ? 'true' : 'false';
      case 'object':
        if (v === null) return 'null';
        if (isArray(v) && !isProxy(v) && getProto(v) === ArrayProto) return list(v, key);
        throw invalid(key + ' must be a plain value, got an object');
      default:
        throw invalid(key + ' must be a plain value, got ' + typeof v);
    }
  }
  function list(a, key) {
    const n = getOwn(a, 'length').value;
    if (n > MAX_REMOTES) throw invalid(key + ' has more than ' + MAX_REMOTES + ' entries');
    let out = '[';
    for (let i = 0; i < n; i++) {
      const d = getOwn(a, '' + i);
      if (d === undefined || !hasOwn(d, 'value')) throw invalid(key + '[' + i + '] is missing or an accessor');
      const v = d.value;
      if (typeof v !== 'string') throw invalid(key + '[' + i + '] must be a string, got ' + (v === null ? 'null' : typeof v));
      out += (i === 0 ? '' : ',') + scalar(v, key);
    }
    return out + ']';
  }
  function decision(v) {
    if (typeof v !== 'object' || v === null) throw invalid('decision must be an object, got ' + (v === null ? 'null' : typeof v));
    if (isProxy(v)) throw invalid('decision must be a plain object, not a Proxy');
    const proto = getProto(v);
    if (proto !== ObjectProto && proto !== null) throw invalid('decision must be a plain object, not an array, class instance, Promise or boxed value');
    const keys = ownKeys(v);
    if (keys.length > MAX_KEYS) throw invalid('decision has more than ' + MAX_KEYS + ' keys');
    let out = '{', first = true;
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i];
      if (typeof k !== 'string') throw invalid('decision has a symbol key');
      const d = getOwn(v, k);
      if (d === undefined) throw invalid('decision key ' + stringify(k) + ' vanished while being read');
      if (!d.enumerable) continue;
      if (!hasOwn(d, 'value')) throw invalid('decision key ' + stringify(k) + ' is a getter or setter');
      if (d.value === undefined) throw invalid('decision key ' + stringify(k) + ' is undefined');
      out += (first ? '' : ',') + stringify(k) + ':' + scalar(d.value, k);
      first = false;
    }
    return out + '}';
  }
  function settle(result, allowNothing) {
    try {
      if (result === undefined && allowNothing) return ok('null');
      return ok(decision(result));
    } catch (e) {
      return e === INVALID ? fail('invalid', invalidReason) : thrown(e);
    }
  }
  function conn(tenant, remoteAddress, remotePort, localAddress, localPort) {
    return freeze({ tenant, remoteAddress, remotePort, localAddress, localPort });
  }

  function deepFreeze(root) {
    const stack = [root];
    while (stack.length > 0) {
      const o = stack.pop();
      freeze(o);
      const keys = ownKeys(o);
      for (let i = 0; i < keys.length; i++) {
        const v = o[keys[i]];
        if (typeof v === 'object' && v !== null) stack[stack.length] = v;
      }
    }
    return root;
  }

  G.__switchyard = freeze({
    setTable(json) {
      define(G, 'table', { value: deepFreeze(parse(json)) });
    },
    load(source, filename) {
      try { indirectEval(source + '\\n//# sourceURL=' + filename); } catch (e) { return thrown(e); }
      if (routeFn === undefined) return fail('noproxy', 'the script never calls proxy()');
      return ok('[' + (acceptFn !== undefined) + ',' + (connectErrorFn !== undefined) + ',' + (inactivityErrorFn !== undefined) + ']');
    },
    route(data, tenant, ra, rp, la, lp) {
      let result;
      try { result = routeFn(data, conn(tenant, ra, rp, la, lp)); } catch (e) { return thrown(e); }
      return settle(result, false);
    },
    accept(tenant, ra, rp, la, lp) {
      if (acceptFn === undefined) return ok('null');
      let result;
      try { result = acceptFn(conn(tenant, ra, rp, la, lp)); } catch (e) { return thrown(e); }
      return settle(result, true);
    },
    hook(which, remote) {
      const fn = which === 'connect' ? connectErrorFn : inactivityErrorFn;
      if (fn === undefined) return ok('null');
      try { fn(remote); } catch (e) { return thrown(e); }
      return ok('null');
    },
  });
})();
`;
