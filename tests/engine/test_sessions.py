"""Sessions: persistent workspaces, isolation between sessions, serialisation, quota,
expiry, file access that cannot be tricked by symlinks, and artifacts."""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from execbox import sessions as S
from execbox.jobs import Job, Status


def sid() -> str:
    return "s-" + secrets.token_hex(6)


def in_session(session: str, code: str, runtime: str = "python") -> Job:
    return Job(runtime=runtime, code=code, session=session)


def test_files_persist_across_executions_of_a_session(engine) -> None:
    s = sid()
    out = engine.run(
        in_session(s, "import os; open('notes.txt', 'w').write('kept'); print(os.getcwd())")
    )
    assert out.status is Status.SUCCESS, out.stderr
    assert out.stdout == b"/workspace\n"
    out = engine.run(in_session(s, "cat notes.txt; echo; id -u", runtime="bash"))
    assert out.stdout == b"kept\n1000\n"
    # a run without the session sees a fresh, empty workspace
    assert engine.py("import os; print(os.listdir('.'))").stdout == b"[]\n"


def test_sessions_do_not_see_each_other(engine) -> None:
    a, b = sid(), sid()
    engine.run(in_session(a, "open('secret', 'w').write('a-only')"))
    out = engine.run(in_session(b, "import os; print(os.listdir('.'))"))
    assert out.stdout == b"[]\n"
    code = f"import os; print([p for p in ['/workspace/../{a}', '/{a}'] if os.path.exists(p)])"
    assert engine.run(in_session(b, code)).stdout == b"[]\n"
    # different outside uids: a file of one session is not writable as the other
    ua = engine.sessions.get(a).uid
    ub = engine.sessions.get(b).uid
    assert ua != ub


def test_executions_of_one_session_are_serialised(engine) -> None:
    s = sid()
    code = "import time, os\nt = time.time()\ntime.sleep(0.4)\nprint(t, time.time())"
    outs = engine.many([in_session(s, code) for _ in range(3)])
    spans = sorted(tuple(map(float, o.stdout.split())) for o in outs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.01, spans  # never overlapping


def test_quota_is_enforced_by_the_filesystem(engine) -> None:
    s = sid()  # the test engine gives sessions an 8 MiB workspace
    code = (
        "import errno\ntry:\n    open('big', 'wb').write(b'x' * (20 << 20))\n    print('wrote')\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])"
    )
    out = engine.run(in_session(s, code))
    assert out.stdout == b"ENOSPC\n", out.stderr
    info = engine.sessions.info(engine.sessions.get(s))
    assert info["quota_bytes"] == 8 << 20 and info["size_bytes"] <= 8 << 20


def test_idle_sessions_expire(engine) -> None:
    s = sid()
    engine.run(in_session(s, "open('f', 'w').write('x')"))
    ws = engine.sessions.get(s)
    assert engine.sessions.gc(now=time.time()) == [] or s not in engine.sessions.gc()
    gone = engine.sessions.gc(now=time.time() + 3601)
    assert s in gone
    assert engine.sessions.get(s) is None
    assert not os.path.exists(ws.path)


def test_artifacts_list_created_and_changed_files(engine) -> None:
    s = sid()
    engine.run(in_session(s, "open('same.txt', 'w').write('1'); open('edit.txt', 'w').write('1')"))
    out = engine.run(
        in_session(
            s,
            "import os\nos.makedirs('out', exist_ok=True)\n"
            "open('out/r.json', 'w').write('{}')\nopen('edit.txt', 'w').write('22')",
        )
    )
    arts = {a["path"]: a for a in out.artifacts}
    assert set(arts) == {"out/r.json", "edit.txt"}
    assert arts["out/r.json"]["mime_type"] == "application/json"
    assert arts["out/r.json"]["sha256"] == hashlib.sha256(b"{}").hexdigest()
    assert arts["edit.txt"]["size"] == 2 and arts["edit.txt"]["created"] is False


def test_file_routes_helpers_refuse_symlink_tricks(engine) -> None:
    s = sid()
    # the sandbox plants symlinks to host paths in its workspace
    engine.run(
        in_session(s, "import os\nos.symlink('/etc/passwd', 'pw')\nos.symlink('/etc', 'etc')")
    )
    ws = engine.sessions.get(s)
    with pytest.raises(OSError):
        S.read_file(ws, "pw", 1 << 20)
    with pytest.raises(OSError):
        S.write_file(ws, "etc/evil", b"x")
    assert not os.path.exists("/etc/evil")
    for bad in ("../x", "/etc/passwd", "a/../../x", ""):
        with pytest.raises(S.SessionError):
            S.resolve_rel(bad)
    S.write_file(ws, "up/loaded.txt", b"hello")
    out = engine.run(in_session(s, "print(open('up/loaded.txt').read())"))
    assert out.stdout == b"hello\n"
    assert S.read_file(ws, "up/loaded.txt", 100) == b"hello"
    S.delete_file(ws, "up/loaded.txt")
    assert "up/loaded.txt" not in {f["path"] for f in S.list_files(ws.path)}


def test_session_ids_are_validated(engine) -> None:
    for bad in ("../x", "", "a/b", ".hidden", "x" * 200):
        with pytest.raises(S.SessionError):
            S.check_id(bad)


def test_new_sessions_made_at_once_all_get_their_workspace(engine) -> None:
    # each new session's image is loop-mounted in a worker thread: two `mount -o loop` at
    # once could pick the same loop device, and one failed "already mounted"; and a second
    # first request for one session (an upload beside a run) must not make its image again
    ids = [sid() for _ in range(6)]
    jobs = [in_session(s, "import os; print(os.listdir('.'))") for s in ids for _ in range(2)]
    with ThreadPoolExecutor(4) as pool:
        uploads = [pool.submit(engine.sessions.ensure, s) for s in ids]
        outs = engine.many(jobs)
        for u in uploads:
            u.result(timeout=30)
    assert [o.status for o in outs] == [Status.SUCCESS] * 12, [(o.status, o.error) for o in outs]
    assert all(o.stdout == b"[]\n" for o in outs), [o.stdout for o in outs]
