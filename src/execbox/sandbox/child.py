"""What a freshly cloned sandbox does, in order, before and after its job arrives.

The order matters: mounts need the capabilities of the new user namespace, so they come
first; the capabilities and the uid go next; seccomp last, because the filter refuses the
calls the earlier steps make. Only then is the sandbox ready for untrusted input, which it
reads from its own pipe: code never passes through the zygote.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import os
import re
import resource
import select
import shlex
import signal
import types
from dataclasses import dataclass, field, replace

from execbox.runtimes import python_inproc
from execbox.sandbox import landlock, libc, mounts, seal
from execbox.sandbox.libc import PR_SET_DUMPABLE

# fd layout inside the sandbox while it waits: 0-2 the code's stdio, 3 the job pipe,
# 4 the ready/status pipe to the zygote, 5 the result pipe to the engine. Only 0-2
# survive into the code, and the result pipe too when a handler is called (as fd 3).
JOB_FD = 3
READY_FD = 4
RESULT_FD = 5
CODE_DIR = "/tmp/.execbox"
EXIT_SETUP_FAILED = 125
EXIT_EXEC_FAILED = 127

RLIMITS = {
    "cpu": resource.RLIMIT_CPU,
    "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "stack": resource.RLIMIT_STACK,
    "core": resource.RLIMIT_CORE,
}


@dataclass(frozen=True)
class ChildSpec:
    root: str
    seccomp_bpf: bytes
    tmp_bytes: int
    work_bytes: int
    cap_last_cap: int  # the kernel's, read by the zygote (libc.cap_last_cap)
    workspace: str | None = None  # a session's workspace on the host, bound at /workspace
    landlock_abi: int = 0
    runtime: str = ""
    prestart: list[str] | None = None  # an interpreter to start while waiting in the pool
    hostname: str = "sandbox"
    seal: seal.Seal | None = field(default=None, compare=False, repr=False)  # make_seal's
    # a Python sandbox's __main__, std streams and all, made once by the cloner
    # (python_inproc.prebuild); None: each sandbox makes its own
    main: types.ModuleType | None = field(default=None, compare=False, repr=False)


def _arrange_fds(fds: tuple[int, ...]) -> None:
    # Move to high numbers first so no dup2 clobbers a source that is still needed.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in fds]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=target < 3)
    # close_range(2) without a first ctypes call (its faults). Where close_range fails,
    # Python closes one fd at a time: bounded by the fd limit, not by 2**31
    os.closerange(len(fds), resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def make_seal(spec: ChildSpec) -> seal.Seal:
    """The seal every sandbox of this spec makes (seal.c), its arguments built once, by the
    zygote. In order: a cgroup namespace (after the cgroup attach, so our cgroup is its
    root) and a process group of its own; the private /tmp, working directory and /proc,
    and the pivot into the read-only root; the hostname; no core dumps; every capability
    and the uid dropped (mounts need the new user namespace's capabilities, so they come
    first); Landlock; seccomp last, because its filter refuses the calls the earlier steps
    make."""
    root = spec.root.encode()
    rules, keep = landlock.ruleset(
        spec.landlock_abi,
        read_only=["/"],
        writable=["/tmp", mounts.WORKDIR, "/proc"],
        devices=[f"/dev/{d}" for d in mounts.DEVICES],
    )
    args = seal.SealSpec(
        root=root,
        tmp_target=os.path.join(root, b"tmp"),
        tmp_options=f"size={spec.tmp_bytes},mode=1777".encode(),
        work_target=os.path.join(root, mounts.WORKDIR.lstrip("/").encode()),
        work_options=(
            f"size={spec.work_bytes},mode=0755,uid={mounts.SANDBOX_UID},gid={mounts.SANDBOX_GID}"
        ).encode(),
        proc_target=os.path.join(root, b"proc"),
        workdir=mounts.WORKDIR.encode(),
        hostname=spec.hostname.encode(),
        cap_last_cap=spec.cap_last_cap,
        uid=mounts.SANDBOX_UID,
        gid=mounts.SANDBOX_GID,
        landlock=rules,
        bpf=spec.seccomp_bpf,
        bpf_len=len(spec.seccomp_bpf) // 8,
    )
    return seal.Seal(args, [*keep, spec.seccomp_bpf])


def setup(spec: ChildSpec) -> None:
    """Turn this freshly cloned process into a sealed sandbox (see make_seal). Raises
    OSError naming the step that failed. (Its cgroup was joined before, and its loopback
    is brought up by the zygote.)"""
    if spec.seal is None:
        raise RuntimeError("the zygote built no seal for this spec")
    spec.seal(spec.workspace)


def _read_all(fd: int) -> bytes:
    """Everything written to the pipe `fd` until its writer closed it."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_job() -> dict:
    data = _read_all(JOB_FD)
    os.close(JOB_FD)
    if not data:
        raise SystemExit(EXIT_SETUP_FAILED)  # the engine let go of us without a job
    return json.loads(data)


def _apply_rlimits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        resource.setrlimit(RLIMITS[name], (value, value))


def _write_files(files: list[dict]) -> None:
    for item in files:
        path = item["path"]
        data = base64.b64decode(item["data"])
        # Paths were validated by the engine; here they can only land in our own tmpfs.
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        _write_file(path, data, item["mode"])


def _write_file(path: str, data: bytes, mode: int) -> None:
    """Without a file object: io's machinery would be a first call (copy-on-write faults)
    on the request's path of a node or bash sandbox."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def run_job(spec: ChildSpec) -> int:
    """Read the job from the engine and run it. Returns an exit status or never returns."""
    main = spec.main  # made by the cloner (None: python_inproc.run makes its own)
    if spec.runtime == "python":
        python_inproc.reseed()  # what prepare() does that must differ per sandbox
    try:
        warm = _prestart(spec.prestart, spec.runtime == "node") if spec.prestart else None
    except OSError as exc:
        os.write(READY_FD, f"Ecannot start {spec.prestart[0]}: {exc.strerror}\n".encode())
        return EXIT_SETUP_FAILED
    if warm is not None:
        _rehearse_hand_over()
    os.write(READY_FD, b"R\n")
    job = _read_job()
    _write_files(job.get("files", []))
    if job.get("programs"):
        os.makedirs(CODE_DIR, mode=0o700, exist_ok=True)
        for program in job["programs"]:
            _write_file(program["path"], program["text"].encode(), 0o666)
    os.chdir(job.get("cwd", mounts.WORKDIR))
    _apply_rlimits(job["rlimits"])
    handler = job.get("handler")
    # A session's next execution must not start until every process of this one is gone,
    # so a session sandbox reports only by exiting
    early = spec.workspace is None
    if job["mode"] == "python":
        _set_env(job["env"])  # the code runs in this process
        if handler is None:
            os.close(RESULT_FD)
        if not early:
            os.close(READY_FD)
            return python_inproc.run(job["code"], main, handler=handler, result_fd=RESULT_FD)
        channel = os.fstat(READY_FD)
        status = python_inproc.run(job["code"], main, handler=handler, result_fd=RESULT_FD)
        if os.getpid() == 1:  # not a child the code forked, which ends here too
            _report_done(status << 8, channel)
        return status
    if warm is not None and spec.runtime == "bash":
        if _can_source(job):
            return _run_warm_bash(warm, job, early)
        _discard(warm)  # a command, not a script: it is run as a program of its own
    elif warm is not None:
        return _run_warm(warm, job, early)
    if handler is not None:
        os.dup2(RESULT_FD, JOB_FD, inheritable=True)  # the wrapper writes its result to fd 3
    os.close(RESULT_FD)
    # the program gets job["env"] as its environment; this process's own is where
    # posix_spawnp looks the program up (a warm interpreter gets the job's environment in
    # its message, and this process's is never used: setting it cost ~0.2 ms there)
    os.environ.update(job["env"])
    return _init(job["argv"], job["env"], early)


def _set_env(env: dict[str, str]) -> None:
    """Make os.environ, and the process's environment block, the job's `env`, in its order.
    The zygote set the base environment every Python job's begins with: only what differs
    is set (each set is a putenv and first-run Python: ~45 copy-on-write faults for the
    whole base environment). A key set again keeps its place, in os.environ and in libc's
    block, and a new one goes last; so when what is set is not the job's leading keys in
    their order, it is emptied first."""
    have = list(os.environ)
    if list(env)[: len(have)] != have:
        os.environ.clear()
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _rehearse_hand_over() -> None:
    """Run once, while the sandbox waits in the pool, what handing a job to its warm
    interpreter runs: each first call in this process writes pages it shares with the
    zygote (a copy-on-write fault each), better paid before the request than during it."""
    os.makedirs(CODE_DIR, mode=0o700, exist_ok=True)  # where the job's programs go
    json.loads(json.dumps({"env": {"K": "v"}, "argv": ["a", "b"], "cwd": "/", "handler": False}))


def _report_done(wait_status: int, channel: os.stat_result | None = None) -> None:
    """Tell the zygote the program's end before this process's own teardown, which costs
    about a millisecond (unmapping its copy of the zygote's memory) that nobody needs to
    wait for. Called by the sandbox's pid 1. What the program left running is ended first,
    as pid 1's exit would end it (it may hold the stdio pipes, and the teardown runs in the
    idle class), and the stdio pipes are closed, so the engine sees their end now too; the
    zygote kills the sandbox as soon as it reads this.

    In a Python sandbox the code ran in this process and could have written to the channel
    itself: that only lets it end its own run with a status it chose, which it could do by
    exiting. `channel` makes sure the fd is still the zygote's pipe, not a file of the code's
    that took its number; the write never blocks (the code may have filled the pipe)."""
    with contextlib.suppress(OSError):
        os.kill(-1, signal.SIGKILL)  # from a namespace's init: all of it but itself
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            os.close(fd)
    try:
        if channel is not None:
            st = os.fstat(READY_FD)
            if (st.st_dev, st.st_ino) != (channel.st_dev, channel.st_ino):
                return
        os.set_blocking(READY_FD, False)
        os.write(READY_FD, b"D%d\n" % wait_status)
    except OSError:
        pass  # then the zygote learns of the end from the exit, as for a session


@dataclass
class Warm:
    """An interpreter started ahead of the job: its pid, the pipe the job goes down, and
    (node) the pipe on which it says its exit code before its own teardown, or -1."""

    pid: int
    job_w: int
    end_r: int = -1


def _prestart(argv: list[str], says_end: bool) -> Warm:
    """Start the interpreter before the job exists (Node takes ~30 ms to start). It gets
    the result channel as fd 3 and waits for the job on fd 4; node also gets fd 5 to say
    its exit code on; see node_prelude.js."""
    libc.prctl(PR_SET_DUMPABLE, 0)
    r, w = os.pipe2(os.O_CLOEXEC)
    actions = [(os.POSIX_SPAWN_DUP2, RESULT_FD, 3), (os.POSIX_SPAWN_DUP2, r, 4)]
    end_r = end_w = -1
    if says_end:
        end_r, end_w = os.pipe2(os.O_CLOEXEC)
        actions.append((os.POSIX_SPAWN_DUP2, end_w, 5))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"}
    pid = os.posix_spawn(
        argv[0], argv, env, file_actions=actions, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ)
    )
    os.close(r)
    if end_w >= 0:
        os.close(end_w)
        _await_ready(end_r)
    return Warm(pid, w, end_r)


def _await_ready(end_r: int) -> None:
    """Wait until the interpreter says it is ready for the job on its end pipe (node
    compiles what a job will call first, ~40 ms in all): the sandbox is ready, and counted
    so, only then. Nothing but this is written there before the job exists."""
    said = b""
    while not said.endswith(b"\n") and len(said) < 16:
        chunk = os.read(end_r, 16 - len(said))
        if not chunk:
            break
        said += chunk
    if said != b"ready\n":
        raise OSError(errno.EIO, "it ended before it was ready")


def _run_warm(warm: Warm, job: dict, early: bool) -> int:
    """Hand the job to the node started ahead of time (see node_prelude.js)."""
    msg = {k: job.get(k) for k in ("env", "argv", "cwd")}
    msg["handler"] = job.get("handler") is not None
    return _hand_over(warm, job, json.dumps(msg).encode(), early)


def _hand_over(warm: Warm, job: dict, message: bytes, early: bool) -> int:
    """Give the interpreter started ahead of time the job's limits, then its message on
    fd 4; wait for it as for any program."""
    for name, value in job["rlimits"].items():
        resource.prlimit(warm.pid, RLIMITS[name], (value, value))
    with contextlib.suppress(OSError):  # it may have died already: its status says why
        _write_all(warm.job_w, message)
    os.close(warm.job_w)
    os.close(RESULT_FD)
    if early and warm.end_r >= 0:
        code = _said_end(warm.pid, warm.end_r)
        if code is not None:
            _report_done(code << 8)  # ends it, in its teardown, and what it left running
            return code
    return _wait_for(warm.pid, early)


def _said_end(pid: int, end_r: int) -> int | None:
    """Wait until the interpreter says its exit code (it closed its stdio first), or ends
    without saying it (then None: its wait status tells). The interpreter runs the job's
    code, which could write here too: it would only end its own run with a code it chose,
    and only an exit code 0-255 is taken. Orphans are reaped meanwhile, as an init must."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(end_r, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    said = b""
    try:
        while True:
            for fd, _ in poller.poll(1000):
                if fd == pidfd:
                    return None
                chunk = os.read(end_r, 16)
                said += chunk
                if not chunk or len(said) > 8:
                    poller.unregister(end_r)  # closed or garbage: wait for the exit
                elif said.endswith(b"\n"):
                    text = said.strip()
                    if text.isdigit() and int(text) <= 255:
                        return int(text)
                    poller.unregister(end_r)
            _reap_orphans(pid)
    finally:
        os.close(pidfd)


def _reap_orphans(keep: int) -> None:
    """Reap the zombies of orphans this init inherited, but not `keep` (its status is
    read by the caller)."""
    while True:
        try:
            zombie = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if zombie is None or zombie.si_pid == keep:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(zombie.si_pid, 0)


SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TOP_RETURN = re.compile(r"\breturn\b")
BASH_JOB = f"{CODE_DIR}/job.sh"


def _can_source(job: dict) -> bool:
    """Whether a warm bash can run this job exactly as a fresh `bash main.sh` would: a
    script, whose environment bash can hold as variables (a name such as A-B lives only in
    a real environment block), that does not say `return`. Any other starts bash afresh."""
    if not job.get("source") or not all(SHELL_NAME.fullmatch(k) for k in job["env"]):
        return False
    # a sourced script may `return` at its top level, a script run by bash may not
    return not any(TOP_RETURN.search(p["text"]) for p in job.get("programs", []))


def _run_warm_bash(warm: Warm, job: dict, early: bool) -> int:
    """Give the job to the bash started ahead of time: its prelude sources job.sh, which
    sets the job's environment, directory and arguments, then runs the script in place."""
    q = shlex.quote
    # what a fresh `bash main.sh` has: the job's environment (not the pool's PATH and
    # HOME), bash's own PWD and SHLVL, no OLDPWD
    lines = ["unset -v PATH HOME"]
    lines += [f"export {k}={q(v)}" for k, v in job["env"].items()]
    lines.append(f"cd -- {q(job.get('cwd', mounts.WORKDIR))} || exit 126")
    lines.append("unset -v OLDPWD")
    lines.append(" ".join(["set --", *(q(a) for a in job["argv"][2:])]))
    lines.append(f"BASH_ARGV0={q(job['source'])}")
    lines.append(f". {q(job['source'])}")
    _write_file(BASH_JOB, ("\n".join(lines) + "\n").encode(), 0o666)
    return _hand_over(warm, job, b"go\n", early)


def _discard(warm: Warm) -> None:
    os.close(warm.job_w)
    with contextlib.suppress(ProcessLookupError):
        os.kill(warm.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(warm.pid, 0)


def _init(argv: list[str], env: dict[str, str], early: bool) -> int:
    """Stay pid 1 and run the program as pid 2, so it gets ordinary signal semantics (the
    kernel drops non-fatal signals to a namespace's init, SIGXFSZ and kill $$ among them),
    and orphans are reaped. The program's real wait status goes to the zygote on the ready
    pipe, which the program cannot reach: it is close-on-exec, and this process is made
    non-dumpable so /proc/1/fd stays closed to the program."""
    libc.prctl(PR_SET_DUMPABLE, 0)
    try:
        # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across
        # exec: the program gets the default actions it expects.
        pid = os.posix_spawnp(argv[0], argv, env, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
        with contextlib.suppress(OSError):
            os.close(JOB_FD)  # the result pipe, if the program was handed one
    except OSError as exc:
        os.write(2, f"execbox: cannot run {argv[0]}: {exc.strerror}\n".encode())
        return EXIT_EXEC_FAILED
    return _wait_for(pid, early)


def _wait_for(pid: int, early: bool) -> int:
    """Reap everything until `pid` ends; report its real wait status to the zygote: at
    once (after ending what it left running, as this init's exit would) or, in a session,
    to be taken when this init has exited."""
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return EXIT_SETUP_FAILED
        if done == pid:
            break
    if early:
        _report_done(status)
    else:
        os.write(READY_FD, b"S%d\n" % status)
    return os.waitstatus_to_exitcode(status) & 0xFF


def _own_spec(base: ChildSpec, sync_fd: int) -> ChildSpec | None:
    """Wait for the zygote's go: "G" once it has written our uid map (and brought up our
    loopback), then a session's workspace, if any, then the end of the pipe. None if the
    zygote let go of us instead."""
    data = _read_all(sync_fd)
    if data[:1] != b"G":
        return None
    return replace(base, workspace=data[1:].decode()) if len(data) > 1 else base


def _join_cgroup(procs_fds: tuple[int, ...]) -> None:
    """Join our cgroup ourselves, by the cgroup.procs files the zygote opened (we are still
    host root, before the uid drop): an attach waits for an RCU grace period, up to ~13 ms
    on these hosts, which must not stall the zygote."""
    for fd in procs_fds:
        os.write(fd, b"0")
        os.close(fd)


def main(base: ChildSpec, sync_fd: int, fds: tuple[int, ...], cgroup_fds: tuple[int, ...]) -> None:
    """Entry point of the cloned child; never returns."""
    status = EXIT_SETUP_FAILED
    try:
        spec = _own_spec(base, sync_fd)
        if spec is None:
            os._exit(EXIT_SETUP_FAILED)
        _join_cgroup(cgroup_fds)
        _arrange_fds(fds)  # closes sync_fd and everything else of the cloner's
        try:
            setup(spec)
        except BaseException as exc:
            os.write(
                READY_FD,
                f"E{type(exc).__name__}: {exc}".encode()[:4000].replace(b"\n", b" ") + b"\n",
            )
            os._exit(EXIT_SETUP_FAILED)
        status = run_job(spec)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else EXIT_SETUP_FAILED
    except BaseException as exc:
        # before the code ran (its files could not be written, say): the code's stderr is
        # where the caller looks, and this is the sandbox's own failure, not the code's
        with contextlib.suppress(OSError):
            os.write(2, f"execbox: the job could not start: {type(exc).__name__}: {exc}\n".encode())
        status = EXIT_SETUP_FAILED
    os._exit(status)
