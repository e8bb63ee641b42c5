"""Paths (Faber's heading): hard links across mounts, device nodes, FIFOs, /proc magic
links, open_by_handle_at, and every host-side writer of workspace files against '..',
absolute paths, planted symlinks and a symlink swapped in and out while it writes.

Each attack runs for real inside a sandbox (or against a workspace a real sandbox has
booby-trapped) and must be stopped."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time

import pytest

from execbox import sessions as S
from execbox.jobs import Job, Status
from execbox.runtimes import InvalidJob
from execbox.sandbox import safepath

from .conftest import py_json, remove_scratch, scratch_dir, session_id

# ---- inside the sandbox ----------------------------------------------------------------------


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_hard_links_across_mounts_fail_and_cannot_modify_the_target(engine) -> None:
    python_real = os.path.realpath("/usr/bin/python3")
    before = _sha256(python_real)
    code = """
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
py = os.path.realpath("/usr/bin/python3")  # link() does not follow a symlink source
res = {}
def attempt(name, f):
    try:
        f(); res[name] = "linked"
    except OSError as e:
        res[name] = errno.errorcode[e.errno]
for src in (py, "/etc/passwd"):
    for dst in ("/workspace/l", "/tmp/l"):
        attempt(f"{src} -> {dst}", lambda: os.link(src, dst))
# the same inode through /proc's magic link, and through an fd (AT_EMPTY_PATH)
fd = os.open(py, os.O_RDONLY)
attempt("procfd -> /tmp/l", lambda: os.link(f"/proc/self/fd/{fd}", "/tmp/l", follow_symlinks=True))
rc = libc.linkat(fd, b"", -100, b"/workspace/l", 0x1000)  # AT_FDCWD, AT_EMPTY_PATH
res["fd -> /workspace/l"] = "linked" if rc == 0 else errno.errorcode[ctypes.get_errno()]
# on the target's own (read-only) mount
attempt("py -> /usr/bin/l", lambda: os.link(py, "/usr/bin/l"))
attempt("passwd -> /etc/l", lambda: os.link("/etc/passwd", "/etc/l"))
for target in (py, "/etc/passwd"):
    attempt(f"write {target}", lambda: os.open(target, os.O_WRONLY | os.O_APPEND))
res["left"] = [p for p in ("/workspace/l", "/tmp/l") if os.path.lexists(p)]
print(json.dumps(res))
"""
    res = py_json(engine, code)
    left = res.pop("left")
    assert left == []
    for name, result in res.items():
        if name.startswith("write "):
            # not ours (EACCES) and read-only (EROFS), whichever the kernel checks first
            assert result in ("EACCES", "EROFS"), (name, result)
        elif name.endswith(("/usr/bin/l", "/etc/l")):
            assert result == "EROFS", (name, result)
        elif name == "fd -> /workspace/l":
            # EXDEV across mounts; ENOENT where AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH
            assert result in ("EXDEV", "ENOENT"), (name, result)
        else:
            assert result == "EXDEV", (name, result)
    assert _sha256(python_real) == before


def test_device_nodes_cannot_be_created_or_used(engine) -> None:
    code = """
import errno, json, os, stat
res = {}
nodes = {"null": (stat.S_IFCHR, 1, 3), "mem": (stat.S_IFCHR, 1, 1),
         "sda": (stat.S_IFBLK, 8, 0), "loop0": (stat.S_IFBLK, 7, 0)}
for d in ("/tmp", "/workspace", "/dev"):
    for name, (kind, major, minor) in nodes.items():
        try:
            os.mknod(f"{d}/x{name}", kind | 0o666, os.makedev(major, minor))
            res[f"{d}/{name}"] = "created"
        except OSError as e:
            res[f"{d}/{name}"] = errno.errorcode[e.errno]
flags = {d: os.statvfs(d).f_flag for d in ("/tmp", "/workspace")}
print(json.dumps({"res": res, "nodev": {d: bool(f & os.ST_NODEV) for d, f in flags.items()}}))
"""
    res = py_json(engine, code)
    for path, result in res["res"].items():
        if path.startswith("/dev/"):
            assert result in ("EPERM", "EROFS"), (path, result)  # read-only, and no CAP_MKNOD
        else:
            assert result == "EPERM", (path, result)
    # and a node that got there anyway would not open: the writable mounts are nodev
    assert res["nodev"] == {"/tmp": True, "/workspace": True}


def test_proc_magic_links_lead_nowhere_outside(engine) -> None:
    scratch = scratch_dir()
    try:
        with open(os.path.join(scratch, "marker"), "w") as f:
            f.write("host")
        host_root = os.stat("/")
        code = f"""
import json, os
scratch = {scratch!r}
dirfd = os.open("/workspace", os.O_RDONLY | os.O_DIRECTORY)
paths = ["/proc/self/root", "/proc/1/root", "/proc/thread-self/root", "/proc/self/cwd/..",
         f"/proc/self/fd/{{dirfd}}/..", f"/dev/fd/{{dirfd}}/..", "/proc/1/cwd/../.."]
me = os.stat("/")
res = {{}}
for p in paths:
    st = os.stat(p)
    res[p] = {{"ident": [st.st_dev, st.st_ino], "same_as_root": (st.st_dev, st.st_ino) ==
              (me.st_dev, me.st_ino), "marker": os.path.exists(p + scratch + "/marker"),
              "listing": sorted(os.listdir(p)) == sorted(os.listdir("/"))}}
print(json.dumps({{"res": res, "pid": os.getpid()}}))
"""
        out = py_json(engine, code)
        assert out["pid"] == 1  # so /proc/1 is the sandbox's own code here
        for p, r in out["res"].items():
            assert r["same_as_root"] and r["listing"], (p, r)
            assert r["marker"] is False, p
            assert r["ident"] != [host_root.st_dev, host_root.st_ino], p
        # where pid 1 is the sandbox's init (not dumpable), its links are closed entirely
        job = Job(
            runtime="bash",
            code=f"for l in root cwd exe fd; do ls /proc/1/$l/ >/dev/null 2>&1; echo $?; done; "
            f"test -e /proc/1/root{scratch}/marker; echo $?",
        )
        out = engine.run(job)
        assert out.stdout.split() == [b"2", b"2", b"2", b"2", b"1"], out.stderr
        assert out.stderr == b""
    finally:
        remove_scratch(scratch)


def test_open_by_handle_cannot_reach_host_inodes(engine) -> None:
    # the "shocker" escape: a forged handle (the root inode of the host's filesystems)
    code = """
import ctypes, json, os, struct
libc = ctypes.CDLL(None, use_errno=True)
res = {}
mount_fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
for ino in (2, 128):  # ext4's and xfs's root inode
    handle = ctypes.create_string_buffer(struct.pack("IiQ", 8, 1, ino))  # FILEID_INO32_GEN
    rc = libc.syscall(304, mount_fd, handle, os.O_RDONLY)  # open_by_handle_at
    res[f"open {ino}"] = [rc, ctypes.get_errno()]
buf = ctypes.create_string_buffer(struct.pack("Ii", 128, 0) + bytes(128))
mnt = ctypes.c_int()
rc = libc.syscall(303, -100, b"/etc/passwd", buf, ctypes.byref(mnt), 0)  # name_to_handle_at
res["name_to_handle"] = [rc, ctypes.get_errno()]
print(json.dumps(res))
"""
    res = py_json(engine, code)
    assert res == {
        "open 2": [-1, errno.EPERM],
        "open 128": [-1, errno.EPERM],
        "name_to_handle": [-1, errno.EPERM],
    }


# ---- files the API writes for the code -------------------------------------------------------


def test_job_files_with_escaping_names_are_refused(engine) -> None:
    scratch = scratch_dir()
    try:
        names = ["../x", "/etc/x", f"{scratch}/x", "a/../../x", "./../x", "a/b/../c", ".."]
        for name in names:
            with pytest.raises(InvalidJob, match="files: "):
                engine.run(Job(runtime="python", code="print(1)", files={name: b"PWNED"}))
        assert os.listdir(scratch) == []
        # a plain relative name lands in the working directory, and nowhere else
        out = engine.run(
            Job(runtime="bash", code="cat a/c; echo; find /workspace -type f", files={"a/c": b"ok"})
        )
        assert out.stdout == b"ok\n/workspace/a/c\n", out.stderr
    finally:
        remove_scratch(scratch)


def _plant(engine, s: str, outside: str, ws: str) -> None:  # type: ignore[no-untyped-def]
    """The session's own code booby-traps its workspace with links to a host directory."""
    rel = os.path.relpath(outside, ws)
    code = f"""
import os
os.symlink({outside!r}, "abs")             # absolute: the host's directory, seen from the host
os.symlink({rel!r}, "rel")                 # relative: climbs out of the workspace on the host
os.symlink({outside + "/secret"!r}, "file")  # a file link
os.makedirs("deep/er")
os.symlink("../../rel", "deep/er/up")     # a link in the middle of a path
os.symlink("loop", "loop")
"""
    out = engine.run(Job(runtime="python", code=code, session=s))
    assert out.status is Status.SUCCESS, out.stderr


def test_files_written_into_a_booby_trapped_session_stay_inside(engine) -> None:
    scratch = scratch_dir()
    s = session_id()
    try:
        outside = os.path.join(scratch, "outside")
        os.mkdir(outside)
        with open(os.path.join(outside, "secret"), "w") as f:
            f.write("SECRET")
        ws = engine.sessions.ensure(s)
        _plant(engine, s, outside, ws.path)

        # 1. the files API, on the host: refused at the name, and again below it
        for bad in ("../x", "/tmp/x", f"{outside}/x", "a/../../x", "a//b", "./x"):
            with pytest.raises(S.SessionError):
                S.write_file(ws, bad, b"PWNED")
        # below the name check, openat2 refuses a climb (RESOLVE_BENEATH), and the writer's
        # walk one component at a time meets an absolute path's empty first component
        below = {"../x": errno.EXDEV, "a/../../x": errno.EXDEV, f"{outside}/x": errno.ENOENT}
        for bad, want in below.items():
            with pytest.raises(OSError) as exc:
                safepath.write_beneath(ws.path, bad, b"PWNED", ws.uid, ws.uid)
            assert exc.value.errno == want, (bad, exc.value)
        for bad in ("../x", f"..{outside}/secret", f"{outside}/secret"):
            with pytest.raises(OSError) as exc:
                safepath.read_beneath(ws.path, bad, 1 << 20)
            assert exc.value.errno == errno.EXDEV, (bad, exc.value)
        for trap in ("abs/x", "rel/x", "file", "deep/er/up/x", "loop", "loop/x", "abs/new/x"):
            with pytest.raises(OSError) as exc:
                S.write_file(ws, trap, b"PWNED")
            assert exc.value.errno == errno.ELOOP, (trap, exc.value)  # no symlink is followed
        for trap in ("abs/secret", "rel/secret", "file", "deep/er/up/secret"):
            with pytest.raises(OSError) as exc:
                S.read_file(ws, trap, 1 << 20)
            assert exc.value.errno == errno.ELOOP, (trap, exc.value)
        for trap in ("abs/secret", "rel/secret", "deep/er/up/secret"):
            with pytest.raises(OSError) as exc:
                S.delete_file(ws, trap)
            assert exc.value.errno == errno.ELOOP, (trap, exc.value)

        # 2. a job's files, written by the sandbox itself into the same workspace
        for name in ("abs/a", "rel/b", "file", "deep/er/up/c"):
            job = Job(runtime="python", code="print('ran')", session=s, files={name: b"PWNED"})
            out = engine.run(job)
            # the write fails inside the sandbox, where the link leads nowhere: the code
            # never runs
            assert out.status is Status.FAILURE and out.stdout == b"", (name, out)

        # removing the file link removes the link, not what it points to
        S.delete_file(ws, "file")
        assert not os.path.lexists(os.path.join(ws.path, "file"))
        assert sorted(os.listdir(outside)) == ["secret"]
        with open(os.path.join(outside, "secret")) as f:
            assert f.read() == "SECRET"
    finally:
        engine.sessions.delete(s)
        remove_scratch(scratch)


def _bounded(fn, timeout: float = 3.0):  # type: ignore[no-untyped-def]
    """Call fn in a thread; (finished, result or exception)."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # the exception is the result
            box.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return (not t.is_alive()), (box[0] if box else None), t


def test_fifos_planted_in_a_session_block_no_host_writer(engine) -> None:
    """A FIFO in the workdir is the code's own: a fresh sandbox's workdir is a private
    tmpfs nothing outside can open. A session workspace lives on the host, though, and the
    files API opens paths in it: opening a FIFO for writing waits for a reader, which would
    hold an API thread (and the session's lock) forever."""
    s = session_id()
    try:
        ws = engine.sessions.ensure(s)
        code = """
import errno, os, stat
os.mkfifo("pipe"); os.mkdir("dir"); os.mkfifo("dir/pipe")
try:
    os.mknod("dev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    print("created")
except OSError as e:
    print(errno.errorcode[e.errno])
"""
        out = engine.run(Job(runtime="python", code=code, session=s))
        assert out.status is Status.SUCCESS and out.stdout == b"EPERM\n", out
        assert out.artifacts == []  # FIFOs are no artifacts, and listing them did not block
        calls = {
            "write pipe": (lambda: S.write_file(ws, "pipe", b"x"), errno.ENXIO),
            "write dir/pipe": (lambda: S.write_file(ws, "dir/pipe", b"x"), errno.ENXIO),
            "write pipe/x": (lambda: S.write_file(ws, "pipe/x", b"x"), errno.ENOTDIR),
            "read pipe": (lambda: S.read_file(ws, "pipe", 1 << 20), errno.EISDIR),
            "read dir/pipe": (lambda: S.read_file(ws, "dir/pipe", 1 << 20), errno.EISDIR),
        }
        blocked = []
        for name, (fn, want) in calls.items():
            done, res, thread = _bounded(fn)
            if not done:
                blocked.append(name)
                for fifo in ("pipe", "dir/pipe"):  # let the stuck thread go
                    fd = os.open(os.path.join(ws.path, fifo), os.O_RDONLY | os.O_NONBLOCK)
                    thread.join(2)
                    os.close(fd)
                continue
            assert isinstance(res, OSError) and res.errno == want, (name, res)
        assert blocked == [], f"host writers blocked on a planted FIFO: {blocked}"
        assert S.list_files(ws.path) == []
    finally:
        engine.sessions.delete(s)


def test_symlink_swap_race_never_reaches_outside(engine) -> None:
    """The session's code swaps, as fast as it can and atomically (RENAME_EXCHANGE), real
    directories and a real file of its workspace with symlinks to a host directory, while
    host threads write, read and delete through the session files API in those very paths.

    The upload route holds the session's lock, so today no execution of the session runs
    during an upload; this proves the writer itself cannot be raced, should that change."""
    scratch = scratch_dir()
    s = session_id()
    try:
        outside = os.path.join(scratch, "outside")
        os.mkdir(outside)
        secret = os.path.join(outside, "secret")
        with open(secret, "w") as f:
            f.write("SECRET")
        ws = engine.sessions.ensure(s)
        rel = os.path.relpath(outside, ws.path)
        code = f"""
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
os.mkdir("d"); open("d/secret", "w").write("decoy"); os.symlink({outside!r}, "d.alt")
os.mkdir("e"); os.symlink({rel!r}, "e.alt")
open("victim", "w").write("v"); os.symlink({secret!r}, "victim.alt")
open("started", "w").close()
n, deadline = 0, time.monotonic() + 5
while not os.path.exists("stop") and time.monotonic() < deadline:
    for name in (b"d", b"e", b"victim"):
        if libc.renameat2(-100, name, -100, name + b".alt", 2) != 0:  # RENAME_EXCHANGE
            raise OSError(ctypes.get_errno(), "renameat2")
    n += 1
print(n)
"""
        done: list = []
        runner = threading.Thread(
            target=lambda: done.append(engine.run(Job(runtime="python", code=code, session=s)))
        )
        runner.start()
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(ws.path, "started")):
            assert runner.is_alive() and time.monotonic() < deadline, done
            time.sleep(0.01)

        results: dict[str, list[object]] = {"ok": [], "err": [], "read": []}
        lock = threading.Lock()

        def hammer(tid: int) -> None:
            stop = time.monotonic() + 1.2
            i = 0
            while time.monotonic() < stop:
                i += 1
                # few names, rewritten over and over: the workspace's inodes are few
                a, b = f"d/w{tid}-{i % 8}", f"e/t{tid}/w{i % 8}"
                ops = [
                    ("write", lambda a=a: S.write_file(ws, a, b"PWNED")),
                    ("write", lambda b=b: S.write_file(ws, b, b"PWNED")),
                    ("write", lambda: S.write_file(ws, "victim", b"PWNED")),
                    ("read", lambda: S.read_file(ws, "d/secret", 1 << 16)),
                    ("read", lambda: S.read_file(ws, "victim", 1 << 16)),
                    ("delete", lambda: S.delete_file(ws, "e/secret")),
                ]
                for kind, op in ops:
                    try:
                        value = op()
                    except OSError as exc:
                        with lock:
                            results["err"].append((kind, exc.errno))
                        continue
                    with lock:
                        results["ok"].append(kind)
                        if kind == "read":
                            results["read"].append(value)

        threads = [threading.Thread(target=hammer, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        S.write_file(ws, "stop", b"")
        runner.join(15)
        out = done[0]
        assert out.status is Status.SUCCESS, out
        swaps = int(out.stdout)

        # nothing outside was written, read, or removed
        assert sorted(os.listdir(outside)) == ["secret"]
        with open(secret) as f:
            assert f.read() == "SECRET"
        assert b"SECRET" not in results["read"], "a read followed a swapped-in symlink"
        # the race really ran: many swaps, and the writers saw both the real directories
        # (writes landed) and the symlinks (refused)
        errs = {e for _, e in results["err"]}
        assert swaps >= 100, swaps
        assert results["ok"].count("write") > 0, results["err"][:20]
        assert ("write", errno.ELOOP) in results["err"]
        # what a refusal may be: a symlink met (ELOOP), a rename during a RESOLVE_BENEATH
        # lookup (EAGAIN, EXDEV), a file the other side removed or had not made (ENOENT)
        assert errs <= {errno.ELOOP, errno.EAGAIN, errno.EXDEV, errno.ENOENT}, errs
        landed = [
            os.path.join(dp, n)
            for dp, _, names in os.walk(ws.path)
            for n in names
            if n.startswith("w")
        ]
        assert landed, "no write landed inside the workspace"
    finally:
        engine.sessions.delete(s)
        remove_scratch(scratch)
