#!/usr/bin/env bash
# The native data path under AddressSanitizer and UndefinedBehaviorSanitizer: builds the addon
# (src/native/relay.c + splice-relay.c) with -fsanitize=address,undefined into build-asan/, then
# runs test/native-relay.test.ts against that build, with libasan preloaded into Node (which is
# not built with it). Any sanitizer report fails the run. Leak detection is off: Node itself
# does not free everything at exit. Needs gcc, Node's headers (as node-gyp does: next to node,
# in $npm_config_nodedir, or node-gyp's cache) and the built TypeScript: npm run test:asan.
set -euo pipefail
cd "$(dirname "$0")/.."

out=build-asan
libasan=$(gcc -print-file-name=libasan.so)
[ -f "$libasan" ] || { echo "asan: libasan.so not found (gcc -print-file-name=libasan.so)" >&2; exit 1; }
include=$(node -p "require('node:path').join(process.execPath, '../../include/node')")
[ -f "$include/node_api.h" ] || include="${npm_config_nodedir:-}/include/node"
[ -f "$include/node_api.h" ] || include="$HOME/.cache/node-gyp/$(node -p process.versions.node)/include/node"
[ -f "$include/node_api.h" ] || { echo "asan: node_api.h not found; set npm_config_nodedir" >&2; exit 1; }

mkdir -p "$out"
gcc -shared -fPIC -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -Wall -Wextra -Werror -I"$include" -DNODE_GYP_MODULE_NAME=splice_relay \
  -o "$out/splice_relay.node" src/native/relay.c src/native/splice-relay.c

test -f dist/test/native-relay.test.js || { echo "asan: run npm run build first" >&2; exit 1; }
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
# The reports go to files (one per process: the test spawns switchyard and helper processes too).
export SWITCHYARD_ADDON="$PWD/$out/splice_relay.node"
export LD_PRELOAD="$libasan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$log/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$log/ubsan"
status=0
node --no-node-snapshot --test dist/test/native-relay.test.js || status=$?
unset LD_PRELOAD
if compgen -G "$log/*" >/dev/null; then
  cat "$log"/* >&2
  echo "asan: sanitizer reports above" >&2
  exit 1
fi
exit "$status"
