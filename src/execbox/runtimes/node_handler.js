// execbox's Node handler wrapper: loads the user's code as a CommonJS module, calls its
// exported handler(event) (sync, async or returning a Promise), and writes the result as
// JSON to fd 3, never to stdout, so printing cannot forge it.
'use strict';
const fs = require('fs');
const path = require('path');

const USER = process.argv[2];
const EVENT = process.argv[3];

function send(msg) {
  try {
    fs.writeSync(3, JSON.stringify(msg));
    fs.closeSync(3);
  } catch (_) { /* the engine went away */ }
}

function failure(err) {
  const e = err instanceof Error ? err : new Error(String(err));
  return { ok: false, error: { type: e.name || 'Error', message: e.message, traceback: e.stack || '' } };
}

let mod;
try {
  process.chdir(process.cwd());
  mod = require(path.resolve(USER));
} catch (err) {
  console.error(err && err.stack ? err.stack : String(err));
  send(failure(err));
  process.exit(1);
}
const handler = mod && typeof mod.handler === 'function' ? mod.handler
  : (typeof mod === 'function' ? null : null);
if (!handler) {
  send({ ok: true, value: null, no_handler: true });
} else {
  const event = JSON.parse(fs.readFileSync(EVENT, 'utf8'));
  Promise.resolve()
    .then(() => handler(event))
    .then((value) => {
      let text;
      try {
        text = JSON.stringify(value === undefined ? null : value);
        if (text === undefined) throw new TypeError('value is not JSON');
      } catch (err) {
        const msg = "the handler's return value cannot be serialized to JSON: " + err.message;
        console.error(msg);
        send({ ok: false, error: { type: 'TypeError', message: msg, traceback: '' } });
        process.exitCode = 1;
        return;
      }
      send({ ok: true, value: JSON.parse(text) });
    }, (err) => {
      console.error(err && err.stack ? err.stack : String(err));
      send(failure(err));
      process.exitCode = 1;
    });
}
