// Runs in a pooled Node sandbox before any job exists: Node is up, its startup paid. It
// waits for the job on fd 4, then becomes that job: environment, working directory and
// argv set as a fresh `node file.js` would have them, and the file run as the main
// module. fd 3 is the handler's result channel; it is closed unless a handler is called.
'use strict';
const fs = require('fs');
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
// A CommonJS main module, loaded synchronously as node's own entry point does: runMain()
// would go through the asynchronous ESM loader and cost milliseconds on both ends.
const Module = require('module');
Module._load(require('path').resolve(process.argv[1]), null, true);
