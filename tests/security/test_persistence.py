"""Persistence (Faber's heading): nothing one execution leaves in any place it can write,
or in System V or POSIX IPC, is there for the next execution of the same runtime (served
by the same warm pool), outside a session."""

from __future__ import annotations

import json
import secrets
import time

from .conftest import py_json

WRITABLE = ["/tmp", "/dev/shm", "/var/tmp", "/run/lock", "$HOME", "/workspace"]
READ_ONLY = ["/", "/etc", "/usr/local", "/var", "/run", "/dev", "/opt"]

COMMON = """
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.mq_open.restype = ctypes.c_int
token = {token!r}
key = int(token[:7], 16)
places = [os.path.expandvars(p) for p in {places!r}]
mq = f"/mq-{{token}}".encode()
def ipc():
    out = {{}}
    for name, get in (("shm", lambda f: libc.shmget(key, 4096, f)),
                      ("msg", lambda f: libc.msgget(key, f)),
                      ("sem", lambda f: libc.semget(key, 1, f))):
        out[name] = get(FLAGS)
        out[name] = "exists" if out[name] >= 0 else errno.errorcode[ctypes.get_errno()]
    # a POSIX queue is created, but Landlock refuses to open it: ask whether it exists
    if FLAGS:
        libc.mq_open(mq, os.O_CREAT | os.O_RDWR, 0o600, None)
        there = libc.mq_open(mq, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600, None) < 0 and (
            ctypes.get_errno() == errno.EEXIST)
        out["mq"] = "exists" if there else errno.errorcode[ctypes.get_errno()]
    else:
        out["mq"] = "exists" if libc.mq_unlink(mq) == 0 else errno.errorcode[ctypes.get_errno()]
    return out
"""

LEAVE = """
FLAGS = 0o1000 | 0o600  # IPC_CREAT
files = {}
for d in places:
    try:
        with open(os.path.join(d, "left-" + token), "w") as f:
            f.write(token)
        files[d] = "written"
    except OSError as e:
        files[d] = errno.errorcode[e.errno]
print(json.dumps({"home": os.environ["HOME"], "files": files, "ipc": ipc()}))
"""

LOOK = """
FLAGS = 0  # find what exists, create nothing
found = [d for d in places if os.path.lexists(os.path.join(d, "left-" + token))]
print(json.dumps({"found": found, "ipc": ipc()}))
"""


def test_nothing_survives_into_the_next_execution(engine) -> None:
    token = secrets.token_hex(8)
    places = WRITABLE + READ_ONLY
    common = COMMON.format(token=token, places=places)
    left = py_json(engine, common + LEAVE)
    home = left["home"]
    # which places took the marker, and which could not: asserted, not assumed
    assert left["files"] == {
        **{p.replace("$HOME", home): "written" for p in WRITABLE},
        **dict.fromkeys(READ_ONLY, "EROFS"),
    }, left["files"]
    assert left["ipc"] == {"shm": "exists", "msg": "exists", "sem": "exists", "mq": "exists"}

    # the look finds what is there: within one execution, it sees everything
    other = COMMON.format(token=secrets.token_hex(8), places=places)
    out = engine.py(other + LEAVE + LOOK)
    seen = json.loads(out.stdout.splitlines()[1])
    assert seen["found"] == [p.replace("$HOME", home) for p in WRITABLE]
    assert seen["ipc"] == left["ipc"]

    hits = []
    for i in range(4):  # more than the pool holds: pooled and freshly cloned sandboxes
        if i % 2 == 0:
            # a refill takes ~20 ms (a cgroup attach waits for an RCU grace period): after
            # a pause the pool has a ready sandbox; back to back it may not
            time.sleep(0.3)
        out = engine.py(common + LOOK)
        assert out.status.value == "success", out.stderr
        seen = json.loads(out.stdout)
        assert seen["found"] == [], seen
        assert seen["ipc"] == {"shm": "ENOENT", "msg": "ENOENT", "sem": "ENOENT", "mq": "ENOENT"}
        hits.append(out.pool_hit)
    assert any(hits), "the warm pool served none of the later executions"
