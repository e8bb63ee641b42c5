"""Each attack is tried for real inside a sandbox and must be stopped."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time

import pytest

from execbox.jobs import Job, Status

from ..conftest import make_limits


def _py_json(engine, code: str, **limits: object) -> dict:
    out = engine.py(code, **limits)
    assert out.status is Status.SUCCESS, (out.status, out.stderr.decode())
    return json.loads(out.stdout)


# ---- host files and environment ------------------------------------------------------------


def test_cannot_read_host_secret_files(engine, tmp_path) -> None:
    token = secrets.token_hex(16)
    secret = tmp_path / "secret.txt"
    secret.write_text(token)
    host_tmp = f"/tmp/execbox-secret-{token[:8]}"
    with open(host_tmp, "w") as f:
        f.write(token)
    try:
        code = f"""
import json, os
res = {{}}
for p in [{str(secret)!r}, {host_tmp!r}, "/etc/shadow", "/root/.bashrc",
          "/proc/1/root/etc/shadow", "/proc/1/root{host_tmp}"]:
    try:
        res[p] = open(p).read()
    except OSError as e:
        res[p] = type(e).__name__
print(json.dumps(res))
"""
        res = _py_json(engine, code)
        assert all(v in ("FileNotFoundError", "PermissionError") for v in res.values()), res
        assert token not in json.dumps(res)
    finally:
        os.unlink(host_tmp)


def test_cannot_read_server_environment(engine, monkeypatch) -> None:
    token = secrets.token_hex(16)
    monkeypatch.setenv("EXECBOX_TEST_SECRET", token)  # the server process's environment
    code = """
import os, glob
found = [dict(os.environ)]
for p in glob.glob("/proc/*/environ"):
    try:
        found.append(open(p, "rb").read().decode(errors="replace"))
    except OSError:
        pass
print(repr(found))
"""
    out = engine.py(code)
    assert out.status is Status.SUCCESS, out.stderr
    assert token.encode() not in out.stdout
    assert b"EXECBOX_TEST_SECRET" not in out.stdout


# ---- processes -------------------------------------------------------------------------------


def test_sees_only_its_own_processes_and_cannot_signal_the_host(engine) -> None:
    host_pid = os.getpid()
    code = f"""
import os, json, signal
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
try:
    os.kill({host_pid}, signal.SIGKILL)
    killed = "sent"
except OSError as e:
    killed = type(e).__name__
print(json.dumps({{"pids": pids, "me": os.getpid(), "kill": killed}}))
"""
    res = _py_json(engine, code)
    assert res["me"] == 1
    assert res["pids"] == [1]
    assert res["kill"] == "ProcessLookupError"
    os.kill(host_pid, 0)  # still alive


def test_pid1_cannot_be_killed_from_inside(engine) -> None:
    out = engine.run(Job(runtime="bash", code="kill -9 1; echo still here"))
    assert out.stdout == b"still here\n"


# ---- network ---------------------------------------------------------------------------------


def test_cannot_reach_host_loopback_listener(engine) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            accepted.append(srv.accept())

    t = threading.Thread(target=accept)
    t.start()
    code = f"""
import socket, json
res = {{}}
for host in ["127.0.0.1", "8.8.8.8", "10.0.0.1"]:
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect((host, {port})); res[host] = "connected"
    except OSError as e:
        res[host] = type(e).__name__
try:
    socket.getaddrinfo("example.com", 80); res["dns"] = "resolved"
except OSError as e:
    res["dns"] = type(e).__name__
ifs = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
print(json.dumps({{"res": res, "ifs": ifs}}))
"""
    res = _py_json(engine, code)
    t.join()
    srv.close()
    assert accepted == []
    assert res["res"]["127.0.0.1"] == "ConnectionRefusedError"
    assert res["res"]["8.8.8.8"] in ("OSError", "TimeoutError")  # ENETUNREACH
    assert res["res"]["dns"] == "gaierror"
    assert res["ifs"] == ["lo"]


# ---- filesystem ------------------------------------------------------------------------------


def test_root_is_read_only_and_only_tmp_and_workdir_are_writable(engine) -> None:
    code = """
import json, os
res = {}
for p in ["/x", "/usr/x", "/etc/passwd", "/bin/sh", "/dev/x", "/proc/x", "/tmp/ok",
          "/workspace/ok", "/var/tmp/ok"]:
    try:
        with open(p, "a") as f:
            f.write("x")
        res[p] = "written"
    except OSError as e:
        res[p] = type(e).__name__
mounts = [l.split() for l in open("/proc/self/mountinfo")]
opts = {m[4]: m[5] for m in mounts}
print(json.dumps({"res": res, "opts": opts, "cwd": os.getcwd()}))
"""
    res = _py_json(engine, code)
    written = {p for p, v in res["res"].items() if v == "written"}
    assert written == {"/tmp/ok", "/workspace/ok", "/var/tmp/ok"}, res["res"]
    opts = res["opts"]
    assert res["cwd"] == "/workspace"
    assert opts["/"].startswith("ro"), opts
    assert opts["/usr"].startswith("ro"), opts
    for mnt, o in opts.items():
        assert "nosuid" in o, (mnt, o)
        if mnt not in ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"):
            assert "nodev" in o, (mnt, o)
    assert "/sys" not in opts and not any(m.startswith("/sys/") for m in opts)


def test_tmp_is_capped(engine) -> None:
    code = """
import errno
try:
    with open("/tmp/fill", "wb") as f:
        for _ in range(1024):
            f.write(b"x" * (1 << 20))
    print("filled")
except OSError as e:
    print(errno.errorcode[e.errno])
"""
    out = engine.py(code, memory_bytes=512 << 20, file_size_bytes=1 << 30)
    assert out.stdout == b"ENOSPC\n", out.stderr


def test_nothing_persists_between_executions(engine) -> None:
    token = secrets.token_hex(8)
    code = f"""
import os
for d in ["/tmp", "/dev/shm", "/var/tmp", "/workspace"]:
    with open(os.path.join(d, "left-{token}"), "w") as f:
        f.write("x")
print("written")
"""
    assert engine.py(code).stdout == b"written\n"
    look = f"""
import os
print([d for d in ["/tmp", "/dev/shm", "/var/tmp", "/workspace"]
       if os.path.exists(os.path.join(d, "left-{token}"))])
"""
    for _ in range(3):  # more than the pool size, so both fresh and pooled sandboxes look
        assert engine.py(look).stdout == b"[]\n"


# ---- identity and syscalls -------------------------------------------------------------------


def test_identity_no_capabilities_no_new_privs_seccomp(engine) -> None:
    code = """
import json, os
status = dict(l.split(":", 1) for l in open("/proc/self/status"))
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "caps": {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
    "nnp": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
    "uid_map": open("/proc/self/uid_map").read().split(),
}))
"""
    res = _py_json(engine, code)
    assert (res["uid"], res["gid"], res["groups"]) == (1000, 1000, [])
    assert set(res["caps"].values()) == {"0000000000000000"}, res["caps"]
    assert res["nnp"] == "1" and res["seccomp"] == "2"
    inside, outside, count = res["uid_map"]
    assert (inside, count) == ("1000", "1") and int(outside) >= 100000


DENIED = {
    "mount": "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)",
    "unshare": "libc.unshare(0x10000000)",
    "ptrace": "libc.ptrace(16, 1, None, None)",  # PTRACE_ATTACH to pid 1
    "keyctl": "libc.syscall(250, 0, 0, 0, 0, 0)",
    "io_uring_setup": "libc.syscall(425, 8, ctypes.create_string_buffer(120))",
    "bpf": "libc.syscall(321, 0, None, 0)",
    "perf_event_open": "libc.syscall(298, None, 0, -1, -1, 0)",
    "userfaultfd": "libc.syscall(323, 0)",
    "setns": "libc.syscall(308, 0, 0)",
    "chroot": "libc.chroot(b'/tmp')",
    "clone_newuser": "libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)",
    "socket_packet": "libc.socket(17, 3, 0)",  # AF_PACKET
    "socket_netlink": "libc.socket(16, 3, 0)",  # AF_NETLINK
}


@pytest.mark.parametrize("name", sorted(DENIED))
def test_dangerous_syscalls_are_refused(engine, name: str) -> None:
    code = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
rc = {DENIED[name]}
print(rc, ctypes.get_errno())
"""
    out = engine.py(code)
    assert out.status is Status.SUCCESS, out.stderr
    rc, err = out.stdout.split()
    assert int(rc) == -1, out.stdout
    assert int(err) in (1, 13, 38, 97), out.stdout  # EPERM, EACCES, ENOSYS, EAFNOSUPPORT


def test_setuid_and_hostname_cannot_be_regained(engine) -> None:
    code = """
import json, os, socket
res = {}
for name, f in [("setuid0", lambda: os.setuid(0)), ("setgroups", lambda: os.setgroups([0])),
                ("sethostname", lambda: socket.sethostname("evil"))]:
    try:
        f(); res[name] = "allowed"
    except OSError as e:
        res[name] = e.errno
print(json.dumps(res))
"""
    res = _py_json(engine, code)
    # EINVAL for uid 0: it does not even exist in the sandbox's user namespace
    assert res["setuid0"] in (1, 22) and res["setgroups"] == 1 and res["sethostname"] == 1


def test_only_stdio_fds_reach_the_code(engine) -> None:
    for job in (
        Job(
            runtime="python",
            code="import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))",
        ),
        Job(runtime="bash", code="ls /proc/self/fd | sort -n | tr '\\n' ' '"),
    ):
        out = engine.run(job)
        # python's listdir holds one fd open while it reads; ls does too
        fds = [
            int(x)
            for x in out.stdout.replace(b"[", b"").replace(b"]", b"").replace(b",", b" ").split()
        ]
        if job.runtime == "bash":
            assert fds[:3] == [0, 1, 2] and len(fds) <= 4, (job.runtime, fds)
            # bash keeps the script open on fd 255 only while reading it
            assert set(fds) - {0, 1, 2} <= {3, 255}
        else:
            # Python code runs in the sandbox's own process, so it also sees fd 4, the pipe
            # on which that process reports the end of the run to the zygote after the code
            # (test_end_channel.py shows what the code can do with it: end its own run)
            assert fds == [0, 1, 2, 3, 4], fds


def test_the_python_code_s_one_extra_fd_is_a_write_only_pipe(engine) -> None:
    code = (
        "import os\n"
        "flags = int(open('/proc/self/fdinfo/4').read().split('flags:')[1].split()[0], 8)\n"
        "print(os.readlink('/proc/self/fd/4').startswith('pipe:'), flags & os.O_ACCMODE)"
    )
    out = engine.run(Job(runtime="python", code=code))
    assert out.stdout.split() == [b"True", str(os.O_WRONLY).encode()], out


# ---- resources -------------------------------------------------------------------------------


def _sandbox_processes(engine) -> int:
    """Processes running as any of this engine's sandbox uids, wherever they are: what a
    leak would grow (host-wide counts also see whatever else runs on the machine)."""
    ranges = [(z.launch.uid_base, z.launch.uid_base + z.launch.uid_count)
              for z in engine.engine.zygotes.values()]  # fmt: skip
    n = 0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                uid = os.stat(f"/proc/{p}").st_uid
            except FileNotFoundError:
                continue
            n += any(lo <= uid < hi for lo, hi in ranges)
    return n


def test_fork_bomb_is_contained_and_leaves_nothing(engine) -> None:
    before = _sandbox_processes(engine)
    out = engine.run(
        Job(
            runtime="bash",
            code="bomb() { bomb | bomb & }; bomb; sleep 30",
            limits=make_limits(wall_time_s=2, pids=32),
        )
    )
    assert out.status is Status.TIMEOUT, (out.status, out.stderr[-200:])
    assert "processes" in out.exceeded  # pids.max refused forks: the bomb hit the wall
    assert b"fork: retry" in out.stderr or b"Resource temporarily unavailable" in out.stderr
    deadline = time.monotonic() + 5
    while _sandbox_processes(engine) > before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sandbox_processes(engine) <= before + 2  # +2: pool refills may be in flight


def test_memory_bomb_is_killed_and_reported(engine) -> None:
    out = engine.py(
        "x = []\nwhile True:\n    x.append(bytearray(16 << 20))",
        memory_bytes=128 << 20,
    )
    assert out.status is Status.MEMORY_LIMIT, (out.status, out.stderr[-300:])
    assert out.signal == 9
    assert out.usage.memory_peak_bytes is not None
    assert out.usage.memory_peak_bytes >= 100 << 20


def test_infinite_loop_is_killed_at_the_wall_limit(engine) -> None:
    t0 = time.monotonic()
    out = engine.py("while True: pass", wall_time_s=1, cpu_time_s=10)
    elapsed = time.monotonic() - t0
    assert out.status is Status.TIMEOUT
    assert 1.0 <= elapsed < 3.0


def test_timeout_kills_the_whole_tree(engine) -> None:
    before = _sandbox_processes(engine)
    out = engine.run(
        Job(
            runtime="bash",
            code="(sleep 100 &); (setsid sleep 100 &); sleep 100",
            limits=make_limits(wall_time_s=1),
        )
    )
    assert out.status is Status.TIMEOUT
    time.sleep(0.3)
    assert _sandbox_processes(engine) <= before + 2


# ---- two sandboxes at once -------------------------------------------------------------------


def test_concurrent_sandboxes_cannot_see_signal_or_connect_to_each_other(engine) -> None:
    server = """
import json, os, socket, time
s = socket.socket(); s.bind(("127.0.0.1", 47001)); s.listen()
u = socket.socket(socket.AF_UNIX); u.bind("\\0execbox-test-abstract"); u.listen()
open("/tmp/marker-a", "w").write("a")
print(json.dumps({"uid_map": open("/proc/self/uid_map").read().split()}), flush=True)
time.sleep(2)
"""
    client = """
import json, os, socket, time, signal
time.sleep(0.5)
res = {"pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
for name, fam, addr in [("tcp", socket.AF_INET, ("127.0.0.1", 47001)),
                        ("abstract", socket.AF_UNIX, "\\0execbox-test-abstract")]:
    c = socket.socket(fam)
    try:
        c.connect(addr); res[name] = "connected"
    except OSError as e:
        res[name] = type(e).__name__
res["marker"] = os.path.exists("/tmp/marker-a")
res["uid_map"] = open("/proc/self/uid_map").read().split()
print(json.dumps(res))
"""
    a, b = engine.many(
        [
            Job(runtime="python", code=server, limits=make_limits(wall_time_s=10)),
            Job(runtime="python", code=client, limits=make_limits(wall_time_s=10)),
        ]
    )
    assert a.status is Status.SUCCESS, a.stderr
    assert b.status is Status.SUCCESS, b.stderr
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert rb["pids"] == [1]
    assert rb["tcp"] == "ConnectionRefusedError"
    assert rb["abstract"] == "ConnectionRefusedError"
    assert rb["marker"] is False
    assert ra["uid_map"][1] != rb["uid_map"][1]  # a unique outside uid each


def test_unlisted_syscalls_get_enosys(engine) -> None:
    # vserver (236) and an out-of-table number: neither is on the allow-list
    code = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
res = []
for nr in (236, 1000):
    rc = libc.syscall(nr, 0, 0, 0)
    res.append((rc, ctypes.get_errno()))
print(res)
"""
    assert engine.py(code).stdout == b"[(-1, 38), (-1, 38)]\n"


def test_32bit_syscall_abi_kills_the_process(engine) -> None:
    # int 0x80 with eax=20 (getpid in the i386 table) from a page of machine code
    code = """
import ctypes, mmap
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]))  # mov eax,20; int 0x80; ret
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
print("calling", flush=True)
print(ctypes.CFUNCTYPE(ctypes.c_int)(addr)())
"""
    out = engine.py(code)
    assert out.stdout == b"calling\n"
    assert out.signal == 31  # SIGSYS: seccomp's bad-arch action
