// Runs in a pooled Node sandbox before any job exists: Node is up, its startup paid. It
// waits for the job on fd 4, then becomes that job: environment, working directory and
// argv set as a fresh `node file.js` would have them, and the file run as the main
// module. fd 3 is the handler's result channel; it is closed unless a handler is called.
'use strict';
const fs = require('fs');
const path = require('path');
// A CommonJS main module, loaded synchronously as node's own entry point does: runMain()
// would go through the asynchronous ESM loader and cost milliseconds on both ends.
const Module = require('module');
// What almost every job touches first, built while the sandbox waits in its pool: the
// stdio streams, console's machinery, the CommonJS loader and what this prelude calls once
// the job is there. V8 compiles a function when it is first called: a first console.log
// and a first module load cost ~2.5 ms of a job that makes them. So they are made here,
// where nothing of them is seen: console writes to a sink, and the module loaded is an
// empty one in the read-only root, dropped from the cache after (what its load looked up
// beside it, no job can change).
void process.stdout;
void process.stderr;
// A first write through the real stdio streams costs ~2 ms of compiling, even after the
// console's warm-up on a sink: an empty write pays it here and puts nothing in the pipe (a
// pipe's null write succeeds without waking its reader).
process.stdout.write('');
process.stderr.write('');
try {
  const warm = process.argv[1]; // mounts.WARM_MODULE, given by the engine
  Module._load(warm, null, false);
  delete Module._cache[warm];
  const { Writable } = require('stream');
  const sink = new Writable({ write(chunk, encoding, done) { done(); } });
  const quiet = new console.Console(sink, sink);
  quiet.log(1 + 1);
  quiet.log('%s %d', 'x', 1, { a: [1] });
  quiet.error(new Error('warm'));
  JSON.parse(Buffer.concat([Buffer.from('{"a": [1]}')]).toString('utf8'));
  fs.closeSync(fs.openSync('/dev/null', 'r'));
  path.resolve('warm.js');
} catch {
  // only slower: outside a sandbox's root (a test runs this on the host) there is no module
}
// Once every 'exit' listener has run, leave at once: what a normal exit does after them is
// V8's own teardown, ~5 ms of cpu that no program can observe. process.emit is looked up
// at exit time, so this runs after the program's own listeners, with its final code. An
// uncaught exception is left to node's own path, which prints it after 'exit'.
let fatal = false;
process.on('uncaughtExceptionMonitor', () => { fatal = true; });
// fd 5: the pipe on which this process tells its init its exit code, with its stdio
// already closed, so that the run is answered before this process's own teardown (a
// few ms of unmapping V8's heap). Checked to be still that pipe, not a file of the code's.
const endPipe = fs.fstatSync(5);
function sayEnd(code) {
  try {
    const now = fs.fstatSync(5);
    if (now.ino !== endPipe.ino || now.dev !== endPipe.dev) return;
    fs.closeSync(1);
    fs.closeSync(2);
    fs.writeSync(5, `${(Number(code) | 0) & 0xff}\n`);
  } catch {
    // then the init learns of the end from the exit
  }
}
const emit = process.emit;
process.emit = function (event, ...args) {
  const result = emit.call(this, event, ...args);
  if (event === 'exit' && !fatal) {
    const code = process.exitCode ?? args[0] ?? 0;
    sayEnd(code);
    process.reallyExit(code);
  }
  return result;
};
// ready: the sandbox is counted as ready for a job only now
fs.writeSync(5, 'ready\n');
const chunks = [];
const buf = Buffer.alloc(65536);
for (;;) {
  let n;
  try {
    n = fs.readSync(4, buf, 0, buf.length, null);
  } catch (err) {
    if (err.code === 'EAGAIN') continue;
    throw err;
  }
  if (n === 0) break;
  chunks.push(Buffer.from(buf.subarray(0, n)));
}
fs.closeSync(4);
const job = JSON.parse(Buffer.concat(chunks).toString('utf8'));
if (!job.handler) fs.closeSync(3);
for (const key of Object.keys(process.env)) delete process.env[key];
Object.assign(process.env, job.env);
process.chdir(job.cwd);
process.argv = [process.execPath, ...job.argv.slice(1)];
Module._load(path.resolve(process.argv[1]), null, true);
