/**
 * Imported first by the `switchyard` command, before any module that loads a native addon:
 * on a Node.js line that is too old or past its end of life, the command stops here and says
 * what to install instead of failing later inside isolated-vm or better-sqlite3.
 */
import { judgeRuntime } from './runtime.js';

const major = Number(process.versions.node.split('.')[0]);
const verdict = judgeRuntime(major, new Date().toISOString().slice(0, 10));
switch (verdict.kind) {
  case 'supported':
    break;
  case 'untested':
    process.stderr.write(`switchyard: Node.js ${major} is newer than the lines it was tested on; running anyway\n`);
    break;
  case 'refused':
    process.stderr.write(`switchyard: ${verdict.why}\n`);
    process.exit(1);
}
