"""The zygote: one process per runtime that clones sandboxes ahead of demand.

It is started by a fresh exec with a clean environment (it holds no secrets: a sandbox is
a copy of its memory), builds the read-only root and the seccomp filter once, pre-imports
its runtime, and keeps a pool of ready sandboxes. For each `take` it hands the engine one
sandbox's pipes and pidfd over its socket; the engine writes the job straight into the
sandbox. When a sandbox exits, the zygote reaps it, reads its cgroup, removes everything
it made, and reports the exit status. The clones are made by its cloner (cloner.py).

Single-threaded on purpose: a fork copies only the calling thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import json
import os
import resource
import select
import selectors
import signal
import socket
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from execbox.sandbox import child, kernfiles, landlock, libc, mounts, protocol
from execbox.sandbox.cgroups import Cgroup, CgroupDriver, CgroupLimits
from execbox.sandbox.cloner import Cloner, ClonerGone, Reply
from execbox.sandbox.netns import NetnsPool
from execbox.sandbox.seccomp import build_filter

POLL_S = 0.05
CHANNEL_CAP = 512  # a sandbox's messages are short; more is code writing to the channel
# Sampling a sandbox costs ~a dozen syscalls. With hundreds running, sampling them all every
# tick kept the zygote too busy to clone; a tick samples in turn for at most this long,
# newest sandboxes first, so under load each is sampled less often but cloning goes on.
POLL_BUDGET_S = 0.005
# A sandbox that starts an interpreter ahead of time (node: ~70 ms of cpu) does so at this
# nice value, so the start gives way to jobs running now; the zygote puts it back to 0
# when it is offered (node has said it is ready) or taken, before the engine gets it. Only
# where the zygote may lower a nice (CAP_SYS_NICE); on cgroup v2 with the cpu controller
# per sandbox, the nice orders only the sandbox's own processes.
WARMUP_NICE = 10
CLONE_FLAGS = (
    libc.CLONE_NEWNS
    | libc.CLONE_NEWPID
    | libc.CLONE_NEWNET
    | libc.CLONE_NEWIPC
    | libc.CLONE_NEWUTS
    | libc.CLONE_NEWUSER
)


@dataclass
class ZygoteConfig:
    runtime: str
    sock_fd: int
    root: str
    ro_paths: list[str]
    uid_base: int
    uid_count: int
    cgroup_prefix: str
    pool_size: int
    preload: list[str]
    tmp_bytes: int
    work_bytes: int
    default_memory_bytes: int
    default_pids: int
    prestart: list[str] | None = None
    name: str = ""  # its pool's name (ZygoteLaunch.name): what `ps` and the bench tell it by
    env: dict[str, str] | None = None  # its sandboxes' starting environment (ZygoteLaunch)


@dataclass
class Sandbox:
    sid: str
    pid: int
    pidfd: int
    uid: int
    cgroup: Cgroup
    ready_fd: int
    engine_fds: list[int]  # job, stdin, stdout, stderr, result (the ends the engine keeps)
    created: float
    ready: bool = False
    taken: bool = False
    setup_error: str | None = None
    ready_at: float = 0.0
    spawn_ms: float = 0.0
    limits: CgroupLimits | None = None
    cpu_limit_ns: int | None = None  # the whole sandbox's cpu budget, enforced by polling
    cpu_killed: bool = False
    pids_peak: int = 0
    program_status: int | None = None
    reported: bool = False  # its end went to the engine (before its exit, when it said so)
    channel: bytes = b""
    fds_peak: int = 0
    fds_hit: bool = False
    sampled_cpu_ns: int | None = None  # its cpu usage at its last sampling
    nofile: int | None = None
    session: dict[str, Any] | None = None
    sync_w: int = -1  # while it is being cloned: its go, once its pid is known
    handover: dict[str, Any] | None = None  # a take's reply, waiting for its pid
    kill_pending: bool = False  # killed while being cloned
    netns: int = -1  # an fd of its network namespace, once known


@dataclass
class Zygote:
    cfg: ZygoteConfig
    sock: socket.socket
    cgroups: CgroupDriver
    spec: child.ChildSpec  # what the cloner's sandboxes start from
    netns: NetnsPool  # untouched network namespaces, for the next clones
    cloner: Cloner | None = None  # started by serve(); None while one cannot be forked
    warmup_nice: bool = False  # prestart runs at WARMUP_NICE: the zygote can undo a nice
    # Ready sandboxes are offered to the engine (their pipes and pidfd sent ahead), which
    # claims one without waiting for an answer: the take's round trip, two hops between
    # processes, leaves the request's path. Only where "ready" means idle until the job
    # (see offers_ready), so that nothing the sandbox does after its counters are reset at
    # "ready" is billed to the job.
    offer_ready: bool = False
    sel: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)
    free_uids: deque[int] = field(default_factory=deque)
    live: dict[str, Sandbox] = field(default_factory=dict)
    pool: deque[str] = field(default_factory=deque)  # not yet taken nor offered, oldest first
    offered: dict[str, Sandbox] = field(default_factory=dict)  # the engine's to claim
    running: dict[str, Sandbox] = field(default_factory=dict)  # taken and not yet reaped
    cloning: deque[Sandbox] = field(default_factory=deque)  # asked of the cloner, in order
    sample_order: deque[str] = field(default_factory=deque)  # of running, next first
    backlog: deque[dict[str, Any]] = field(default_factory=deque)  # takes read, not yet served
    seq: int = 0
    # the preloads that could not be imported, and why: told in the hello, so that health
    # shows a heavy zygote without its numpy (its jobs would import nothing faster)
    preload_failed: dict[str, str] = field(default_factory=dict)
    strays: bool = False  # children of a dead cloner's lost replies may wait to be reaped
    engine_gone: bool = False

    # ---- creating sandboxes -------------------------------------------------------------

    def spawn(self, session: dict[str, Any] | None = None) -> Sandbox:
        """Have a sandbox cloned: a pooled one, or one for a session (its uid and
        workspace). It is live at once; its pid comes with the cloner's reply (finish),
        while this loop goes on: the cloner's ~1.2 ms per clone and this loop's own work
        for the next sandbox overlap, on the two cores."""
        if session is not None:
            uid = int(session["uid"])
        elif not self.free_uids:
            raise RuntimeError("no free sandbox uid: too many live sandboxes")
        else:
            uid = self.free_uids.popleft()
        self.seq += 1
        sid = f"{self.cfg.runtime}-{os.getpid()}-{self.seq}"
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(6)]
        (job_r, job_w), (res_r, res_w), (in_r, in_w), (out_r, out_w) = pipes[:4]
        (err_r, err_w), (sync_r, sync_w) = pipes[4:]
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        created = time.monotonic()
        cg: Cgroup | None = None
        netns = -1
        try:
            # created before the clone so the child can join it by itself: an attach waits
            # for an RCU grace period (up to ~13 ms here), which must not stall this loop
            cg = self.cgroups.create(sid)
            limits = CgroupLimits(self.cfg.default_memory_bytes, self.cfg.default_pids)
            cg.set_limits(limits)
            cg.keep_open()
            procs: list[int] = []
            try:
                for path in cg.procs_files():
                    procs.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
                netns = self.netns.take()
                self._request((in_r, out_w, err_w, job_r, ready_w, res_w, sync_r, *procs), netns)
            finally:
                for fd in procs:
                    os.close(fd)
        except (OSError, ClonerGone):
            if netns >= 0:
                os.close(netns)
            for fd in (*(fd for pair in pipes for fd in pair), ready_r, ready_w):
                os.close(fd)
            if cg is not None:
                cg.destroy()
            self._release_uid(uid, session)
            raise
        for fd in (job_r, res_w, in_r, out_w, err_w, sync_r, ready_w):
            os.close(fd)  # the request carries them
        box = Sandbox(sid, 0, -1, uid, cg, ready_r, [job_w, in_w, out_r, err_r, res_r], created)
        box.sync_w = sync_w
        box.netns = netns
        box.limits = limits
        box.session = session
        self.live[sid] = box
        if session is None:
            self.pool.append(sid)
        self.cloning.append(box)
        return box

    def _request(self, fds: tuple[int, ...], netns: int) -> None:
        if self.cloner is None:
            self._start_cloner()  # it could not be started before: a new try
        if self.cloner is None:
            raise ClonerGone("no cloner: the zygote cannot fork one (see the log)")
        try:
            self.cloner.request(fds, netns)
        except ClonerGone as exc:
            self.on_cloned()  # what it answered before it died, then a new one
            if self.cloner is None:
                raise ClonerGone(f"{exc}; no new one could be started") from exc
            self.cloner.request(fds, netns)  # a second death in a row fails this spawn

    def _start_cloner(self) -> None:
        try:
            self.cloner = Cloner.start(self.spec, CLONE_FLAGS, self.netns.pristine)
        except OSError as exc:
            self.report({"op": "log", "level": "error", "msg": f"cannot fork a cloner: {exc}"})
            return
        self.sel.register(self.cloner.sock, selectors.EVENT_READ, ("cloner", ""))
        self.sel.register(self.cloner.pidfd, selectors.EVENT_READ, ("cloner", ""))

    def on_cloned(self) -> None:
        """The cloner's replies: each finishes the oldest sandbox asked for. If it died,
        what it did not answer may or may not have been cloned: those sandboxes are given
        up (a clone that was made ends when its go pipe closes, and is reaped as a stray),
        their takes are taken again, once, and a new cloner takes over."""
        assert self.cloner is not None
        # dead first, then its replies: all it sent before it died are there to read
        dead = protocol.wait(self.cloner.pidfd, select.POLLIN, 0)
        replies, gone = self.cloner.replies()
        gone = gone or dead
        for reply in replies:
            self.finish(self.cloning.popleft(), reply)
        if not gone:
            return
        self.report({"op": "log", "level": "error", "msg": "the cloner died; starting a new one"})
        self.sel.unregister(self.cloner.sock)
        self.sel.unregister(self.cloner.pidfd)
        self.cloner.stop()
        self.cloner = None
        lost = list(self.cloning)
        self.cloning.clear()
        self.strays = True
        retakes = []
        for box in lost:  # all out of the pool first: a retake must not pick one of them
            os.close(box.sync_w)
            box.sync_w = -1
            handover, box.handover = box.handover, None
            self._abandon(box, "the cloner died while starting this sandbox")
            if handover is not None:
                retakes.append(handover)
        self._start_cloner()
        for handover in retakes:
            msg = handover["msg"]
            if self.cloner is None or msg.get("retaken"):
                why = "the cloner died while starting this sandbox"
                self.report({"op": "error", "req": msg["req"], "error": why})
            else:
                self.take({**msg, "retaken": True})

    def finish(self, box: Sandbox, reply: Reply) -> None:
        """Its pid is known: map its uid, bring up the loopback of a new network namespace
        (the kept one it was offered, if it was not used, goes), give it the go."""
        pid = reply.pid
        if reply.fresh and box.netns >= 0:
            os.close(box.netns)
            box.netns = -1
        try:
            if pid < 0:
                raise OSError(-pid, f"clone: {os.strerror(-pid)}")
            box.pid = pid
            box.pidfd = os.pidfd_open(pid)
            kernfiles.write(f"/proc/{pid}/uid_map", f"{mounts.SANDBOX_UID} {box.uid} 1\n")
            kernfiles.write(f"/proc/{pid}/gid_map", f"{mounts.SANDBOX_GID} {box.uid} 1\n")
            if box.netns < 0:
                box.netns = self.netns.adopt(pid)
            if self.warmup_nice and not box.taken:  # before the go: all it starts inherits it
                os.setpriority(os.PRIO_PROCESS, pid, WARMUP_NICE)
            os.write(box.sync_w, b"G" + (box.session["dir"].encode() if box.session else b""))
        except OSError as exc:
            self._abandon(box, f"cannot start a sandbox: {exc}")
            return
        finally:
            os.close(box.sync_w)
            box.sync_w = -1
        box.spawn_ms = (time.monotonic() - box.created) * 1000
        self.sel.register(box.pidfd, selectors.EVENT_READ, ("exit", box.sid))
        self.sel.register(box.ready_fd, selectors.EVENT_READ, ("ready", box.sid))
        if box.handover is not None:
            self._hand_over(box)
        if box.kill_pending:
            self.kill(box)  # after a hand-over: the engine sees it end

    def _abandon(self, box: Sandbox, why: str) -> None:
        """A sandbox that could not be started: whatever was made of it goes, and a take
        waiting for it gets the reason."""
        if box.pidfd >= 0:  # it exists (else its pid, if any, may be another's by now)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(box.pidfd, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(box.pid, 0)
            os.close(box.pidfd)
            box.pidfd = -1
        os.close(box.ready_fd)
        box.ready_fd = -1
        self._forget(box)
        box.cgroup.destroy()
        if box.handover is not None:
            self.report({"op": "error", "req": box.handover["msg"]["req"], "error": why})
        else:
            self.report({"op": "log", "level": "error", "msg": why})

    def _reap_strays(self) -> None:
        """Reap children that are no sandbox of ours (clones whose reply was lost). Only
        while no clone is in flight: one of those is a child whose pid is not known yet."""
        if self.cloning:
            return
        known = {box.pid for box in self.live.values()}
        if self.cloner is not None:
            known.add(self.cloner.pid)
        # None without CONFIG_PROC_CHILDREN: strays are left to the zygote's exit
        text = kernfiles.read(f"/proc/self/task/{os.getpid()}/children") or ""
        kids = [int(p) for p in text.split()]
        pending = False
        for pid in kids:
            if pid not in known:
                with contextlib.suppress(ChildProcessError):
                    done, _ = os.waitpid(pid, os.WNOHANG)
                    pending = pending or done == 0
        self.strays = pending

    # ---- serving the engine ------------------------------------------------------------

    def report(self, msg: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
        """Send to the engine, waiting for room if its socket is full (the socket is
        non-blocking for the reads: see on_engine)."""
        while True:
            try:
                protocol.send(self.sock, msg, fds)
                return
            except BlockingIOError:
                protocol.wait(self.sock, select.POLLOUT)
            except (BrokenPipeError, ConnectionResetError):
                self.engine_gone = True  # the loop shuts down when it sees the socket close
                return

    def take(self, msg: dict[str, Any]) -> None:
        """Hand the engine a sandbox: the offered one it names (it has its pipes already),
        else a ready one, else the oldest starting one; its limits are set first."""
        t0 = time.monotonic()
        session = msg.get("session")
        offered = self.offered.pop(msg.get("sid") or "", None)
        box, hit = offered, offered is not None
        try:
            if box is None and session is not None:
                box = self.spawn(session)
            elif box is None:
                sid = next((s for s in self.pool if self.live[s].ready), None)
                hit = sid is not None
                if sid is None and not self.pool:
                    self.spawn()
                box = self.live[sid or self.pool[0]]
                self.pool.remove(box.sid)
        except Exception as exc:
            self.report({"op": "error", "req": msg["req"], "error": str(exc)})
            return
        lim = msg.get("limits") or {}
        try:
            self._begin(box, lim)
            # an offered sandbox was put at normal priority, and its counters were reset,
            # when it said ready (and idle until its job: offers_ready)
            if offered is None:
                self._unnice(box)
                # what it used while it waited (an interpreter's start) is not the job's;
                # without a prestart this was done when it became ready
                if self.cfg.prestart:
                    box.cgroup.reset_counters()
        except OSError as exc:
            asked = f"memory {lim.get('memory_bytes')} bytes, pids {lim.get('pids')}"
            why = f"the kernel refused this sandbox's cgroup limits ({asked}): {exc.strerror}"
            self.report({"op": "error", "req": msg["req"], "error": why})
            self.kill(box)
            return
        box.handover = {"msg": msg, "t0": t0, "hit": hit}
        if box.pidfd >= 0:
            self._hand_over(box)
        # else: once the cloner has answered (finish)

    def claim(self, msg: dict[str, Any]) -> None:
        """The engine took an offered sandbox and is writing its job already: it runs from
        now on. No answer: the engine has all it needs. This is read before anything the
        sandbox says (serve), so its end is never taken for an idle sandbox's. One that
        ended meanwhile is gone from `offered`; the engine gets its exit report."""
        box = self.offered.pop(msg.get("sid") or "", None)
        if box is None:
            return
        try:
            self._begin(box, msg.get("limits") or {})
        except OSError as exc:  # the engine claims only with the pool's limits: a bug
            self.report({"op": "log", "level": "error", "msg": f"claim of {box.sid}: {exc}"})
            self.kill(box)

    def _begin(self, box: Sandbox, lim: dict[str, Any]) -> None:
        """A taken sandbox: sampled from now on, and with the job's limits (an OSError if
        the kernel refuses them)."""
        box.taken = True
        self.running[box.sid] = box
        self.sample_order.appendleft(box.sid)
        bw = lim.get("cpu_bandwidth")
        wanted = CgroupLimits(lim.get("memory_bytes"), lim.get("pids"), tuple(bw) if bw else None)
        box.cpu_limit_ns = lim.get("cpu_limit_ns")
        box.nofile = lim.get("fds")
        box.pids_peak = 1  # the sandbox's own pid 1 exists at hand-over
        if wanted != box.limits:
            box.cgroup.set_limits(wanted)
            box.limits = wanted

    def _unnice(self, box: Sandbox) -> None:
        """A sandbox at normal priority before any code of a job can run (when it is
        offered, or else taken): its init (before its setpgid), and its whole process group
        (the init, the interpreter it started and their threads) after. One still being
        cloned is never niced (finish)."""
        if not self.warmup_nice or box.pid <= 0:
            return
        with contextlib.suppress(ProcessLookupError):  # no such group before its setpgid
            os.setpriority(os.PRIO_PROCESS, box.pid, 0)
            os.setpriority(os.PRIO_PGRP, box.pid, 0)

    def _hand_over(self, box: Sandbox) -> None:
        """Give the engine the sandbox a take got: its pipes and pidfd, unless it was
        offered (the engine has them)."""
        assert box.handover is not None
        self._send_pipes(
            box,
            {
                "op": "sandbox",
                "req": box.handover["msg"]["req"],
                "sid": box.sid,
                "pid": box.pid,
                "pool_hit": box.handover["hit"],
                "take_ms": (time.monotonic() - box.handover["t0"]) * 1000,
                "spawn_ms": box.spawn_ms,
                "pool": self.pooled(),
                "setup_ms": (box.ready_at - box.created) * 1000 if box.ready else None,
            },
        )

    def _offer(self, box: Sandbox) -> None:
        """Send the engine a ready sandbox's pipes and pidfd ahead of its take. Its warm-up
        is over: it waits at normal priority, for the job it may get at any moment."""
        self.pool.remove(box.sid)
        self.offered[box.sid] = box
        self._unnice(box)
        self._send_pipes(
            box,
            {
                "op": "offer",
                "sid": box.sid,
                "pid": box.pid,
                "setup_ms": (box.ready_at - box.created) * 1000,
                "pool": self.pooled(),
            },
        )

    def _send_pipes(self, box: Sandbox, msg: dict[str, Any]) -> None:
        """Report `msg` with the sandbox's ends of its pipes and its pidfd, which are the
        engine's from then on; without them if they went with its offer."""
        self.report(msg, [*box.engine_fds, box.pidfd] if box.engine_fds else [])
        for fd in box.engine_fds:
            os.close(fd)
        box.engine_fds = []

    def pooled(self) -> int:
        """Sandboxes not yet taken: starting, ready, or offered and not yet claimed."""
        return len(self.pool) + len(self.offered)

    def kill(self, box: Sandbox) -> None:
        if box.pidfd < 0:
            box.kill_pending = True  # still being cloned: killed once it exists
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(box.pidfd, signal.SIGKILL)

    def on_ready(self, sid: str) -> None:
        """The sandbox's own channel, one message a line: "R" when ready, "E<why>" when
        setup failed, "D<wait status>" when the program ended (the sandbox is about to
        exit), and "S<wait status>" from a session's init, to be taken when it exits."""
        box = self.live[sid]
        while True:
            try:
                data = os.read(box.ready_fd, 4096)
            except BlockingIOError:
                return
            if not data:
                break
            box.channel += data
            while b"\n" in box.channel:
                line, box.channel = box.channel.split(b"\n", 1)
                self._sandbox_message(box, line)
            if box.reported or len(box.channel) > CHANNEL_CAP:
                break  # nothing more to hear from it
        self.sel.unregister(box.ready_fd)
        os.close(box.ready_fd)
        box.ready_fd = -1

    def _sandbox_message(self, box: Sandbox, line: bytes) -> None:
        kind, body = line[:1], line[1:]
        if kind == b"R" and not box.ready:
            box.ready = True
            box.ready_at = time.monotonic()
            box.cgroup.reset_counters()  # its setup is not the job's
            # not one taken while it started, nor one the pool let go of (killed by a
            # shrink, it may have said ready before it died)
            if self.offer_ready and box.session is None and box.sid in self.pool:
                self._offer(box)
            elif box.session is None:
                self.report(
                    {
                        "op": "ready",
                        "setup_ms": (box.ready_at - box.created) * 1000,
                        "pool": self.pooled(),
                    }
                )
        elif kind == b"E" and not box.ready:  # setup ends before any code can write here
            box.setup_error = body.decode(errors="replace")
        elif kind == b"D" and box.taken and box.session is None and not box.reported:
            status = _done_status(body, exits_only=self.cfg.runtime == "python")
            if status is not None:
                box.program_status = status
                self._report_end(box, _read_io(box.pid))
                # its teardown, and that of what its init has just ended (node's heap, say),
                # runs when the cores have nothing better to do: after the answer, and
                # after the next requests. (Not its setup: in the idle class a pool starved
                # under load, seen as misses.) The engine holds its slot until it is reaped.
                for pid in box.cgroup.pids() or [box.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
                self.kill(box)  # whatever it still does is not part of the job
        elif kind == b"S" and body.isdigit() and self.cfg.runtime != "python":
            # only an init sends this; a Python sandbox's code could reach the channel, so
            # its word is never taken for an exit status
            box.program_status = int(body)

    def on_exit(self, sid: str) -> None:
        if self.live[sid].ready_fd >= 0:  # collect its last words first
            self.on_ready(sid)
        box = self.live[sid]
        if box.ready_fd >= 0:
            self.sel.unregister(box.ready_fd)
            os.close(box.ready_fd)
        self.sel.unregister(box.pidfd)
        io = None if box.reported else _read_io(box.pid)  # a zombie still has its counters
        _, status, ru = os.wait4(box.pid, 0)
        os.close(box.pidfd)
        if box.netns >= 0:  # every process in it is gone with the sandbox's pid 1
            self.netns.give_back(box.netns)
            box.netns = -1
        self._forget(box)
        if box.reported:  # early: the engine holds its slot until now
            self.report({"op": "reaped", "sid": sid})
        else:
            self._report_end(box, io, ru, status)
        if not box.cgroup.destroy():
            self.report({"op": "log", "level": "error", "msg": f"cgroup of {sid} not removed"})

    def _report_end(
        self, box: Sandbox, io: dict[str, int] | None, ru: Any = None, status: int | None = None
    ) -> None:
        """The engine's account of a sandbox's end: at its exit, or earlier, when the
        sandbox said its program ended (then `ru` is None: no rusage before the reaping,
        the cgroup's counters stand for it)."""
        box.reported = True
        stats = box.cgroup.stats()
        if stats.pids_peak is not None:  # cgroup v2 counts it exactly
            box.pids_peak = max(box.pids_peak, stats.pids_peak)
        rusage = None
        if ru is not None:
            rusage = {
                "utime": ru.ru_utime,
                "stime": ru.ru_stime,
                "maxrss_kb": ru.ru_maxrss,
                "inblock": ru.ru_inblock,
                "oublock": ru.ru_oublock,
            }
        self.report(
            {
                "op": "exit",
                "sid": box.sid,
                "taken": box.taken,
                # the program's own status when an init ran it, else pid 1's
                "status": box.program_status if box.program_status is not None else status,
                "setup_error": box.setup_error,
                "rusage": rusage,
                "cgroup": stats.as_dict(),
                "io": io,
                "pids_peak": box.pids_peak if box.taken else None,
                "cpu_killed": box.cpu_killed,
                "fds_peak": box.fds_peak if box.taken and box.fds_peak else None,
                "fds_hit": box.fds_hit,
                "pool": self.pooled(),
                "early": ru is None,  # a "reaped" message follows
            }
        )

    def wants_refill(self) -> bool:
        """Refill when idle, or when the pool runs low. A new sandbox costs the zygote's one
        thread its cgroup and pipes (the clone is the cloner's), time in which it reports no
        finished sandbox; so while sandboxes run, it only refills below half the pool.
        Refilling to the full pool under load was measured: three times the pool hits at 8
        clients, and the same throughput and latency (the cpu is what is short)."""
        if not self.free_uids or self.pooled() >= self.cfg.pool_size:
            return False
        return not self.running or self.pooled() < max(1, self.cfg.pool_size // 2)

    def serve(self) -> None:
        self.sock.setblocking(False)
        self.sel.register(self.sock, selectors.EVENT_READ, ("engine", ""))
        self._start_cloner()
        self.report(
            {
                "op": "hello",
                "pid": os.getpid(),
                "runtime": self.cfg.runtime,
                "preload_failed": self.preload_failed,
            }
        )
        next_poll = 0.0
        while True:
            # requests and exits come first; refill only when nothing else is waiting
            timeout: float | None = None
            if self.running:
                timeout = max(0.0, next_poll - time.monotonic())
            if self.wants_refill() or self.backlog:
                timeout = 0
            events = self.sel.select(timeout)
            if self.running and time.monotonic() >= next_poll:
                self.poll()
                next_poll = time.monotonic() + POLL_S
            if self.strays:
                self._reap_strays()
            # the engine's messages first, all of them: a claim sent before a job was written
            # must be seen before that sandbox's end, which may be in this same batch
            events.sort(key=lambda event: event[0].data[0] != "engine")
            for key, _ in events:
                kind, sid = key.data
                if kind == "engine":
                    if not self.on_engine():
                        self.shutdown()
                        return
                elif kind == "cloner":
                    self.on_cloned()
                elif sid not in self.live:
                    continue  # reaped earlier in this batch: its channel was read then
                elif kind == "ready":
                    self.on_ready(sid)
                elif kind == "exit":
                    self.on_exit(sid)
            if self.backlog:
                self.take(self.backlog.popleft())
            elif not events and self.wants_refill():
                self.refill_one()

    def on_engine(self) -> bool:
        """Every message the engine has sent; False once it has gone. Takes wait in the
        backlog, one handled per turn of the loop, between the sandboxes' news: a burst's
        thousand takes at once would hold up every exit and clone behind them."""
        while True:
            try:
                msg, fds = protocol.recv(self.sock)
            except BlockingIOError:
                return True
            for fd in fds:
                os.close(fd)
            if msg is None:
                return False
            if msg.get("op") == "take":
                self.backlog.append(msg)
            else:
                self.handle(msg)

    def poll(self) -> None:
        """Sample what the kernel does not keep a peak of (v1 has no pids.peak) and enforce
        the cpu budget over all of a sandbox's processes (RLIMIT_CPU is per process)."""
        deadline = time.monotonic() + POLL_BUDGET_S
        for _ in range(len(self.sample_order)):
            sid = self.sample_order.popleft()
            box = self.running.get(sid)
            if box is None:  # reaped since
                continue
            self.sample_order.append(sid)
            self._sample(box)
            if time.monotonic() >= deadline:
                return

    def _sample(self, box: Sandbox) -> None:
        used = box.cgroup.cpu_usage_ns()
        # a sandbox that has not run since its last sampling has not forked nor opened
        # anything either: its peaks stand, and one read was its sampling (a thousand
        # sleepers cost this loop a dozen syscalls each before)
        if used is not None and used == box.sampled_cpu_ns:
            return
        box.sampled_cpu_ns = used
        over = used is not None and bool(box.cpu_limit_ns) and used >= box.cpu_limit_ns
        if over and not box.cpu_killed:
            box.cpu_killed = True
            self.kill(box)
        cur = box.cgroup.pids_current()
        if cur is not None and cur > box.pids_peak:
            box.pids_peak = cur
        self._sample_fds(box)

    def _sample_fds(self, box: Sandbox) -> None:
        """The open-fd count of the sandbox's processes (RLIMIT_NOFILE is per process):
        its peak, and whether one of them filled its table."""
        for pid in box.cgroup.pids()[:16]:
            try:
                n = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue
            box.fds_peak = max(box.fds_peak, n)
            if box.nofile and n >= box.nofile:
                box.fds_hit = True

    def _forget(self, box: Sandbox) -> None:
        """A sandbox that is no more, reaped or given up: out of every index, the ends the
        engine never got closed, its uid free again."""
        self.live.pop(box.sid, None)
        self.running.pop(box.sid, None)
        if box.sid in self.pool:
            self.pool.remove(box.sid)
        self.offered.pop(box.sid, None)
        for fd in box.engine_fds:
            os.close(fd)
        box.engine_fds = []
        if box.netns >= 0:  # not given back: a clone given up may still be alive in it
            os.close(box.netns)
            box.netns = -1
        self._release_uid(box.uid, box.session)

    def _release_uid(self, uid: int, session: dict[str, Any] | None) -> None:
        if session is None:  # session uids belong to the session, not to this zygote
            self.free_uids.append(uid)

    def refill_one(self) -> None:
        try:
            self.spawn()
        except Exception as exc:
            self.report({"op": "log", "level": "error", "msg": f"spawn failed: {exc}"})
            time.sleep(0.05)  # don't spin on a persistent failure

    def handle(self, msg: dict[str, Any]) -> None:
        """An engine message other than a take (takes wait in the backlog: on_engine)."""
        op = msg.get("op")
        if op == "claim":
            self.claim(msg)
        elif op == "kill":
            box = self.live.get(msg.get("sid", ""))
            if box is not None:
                self.kill(box)
        elif op == "pool":
            self.resize(int(msg["size"]), msg.get("release") or [])
        elif op == "ping":
            self.report({"op": "pong", "live": len(self.live), "pool": self.pooled()})

    def resize(self, size: int, release: list[str]) -> None:
        """New pool target: surplus sandboxes are killed, never reused. Offered ones only
        when the engine releases them (it may be claiming one right now); then starting or
        ready ones, oldest first."""
        self.cfg.pool_size = max(0, size)
        for sid in release:
            box = self.offered.pop(sid, None)
            if box is not None:
                self.kill(box)
        while self.pool and self.pooled() > self.cfg.pool_size:
            self.kill(self.live[self.pool.popleft()])
        self.netns.shrink(self.cfg.pool_size)
        self.report({"op": "resized", "pool": self.pooled()})

    def shutdown(self) -> None:
        while self.cloning:  # their pids, so they can be reaped; each ends with its go pipe
            box = self.cloning.popleft()
            reply = self.cloner.wait_reply(1.0) if self.cloner is not None else None
            os.close(box.sync_w)
            box.sync_w = -1
            if reply is None:
                for rest in self.cloning:
                    os.close(rest.sync_w)
                    rest.sync_w = -1
                self.cloning.clear()  # the cloner answers no more
            elif reply.pid > 0:
                box.pid = reply.pid
        for box in list(self.live.values()):
            if box.pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(box.pid, signal.SIGKILL)
        for sid in list(self.live):
            self.on_exit_quiet(sid)
        if self.cloner is not None:
            self.cloner.stop()

    def on_exit_quiet(self, sid: str) -> None:
        box = self.live.pop(sid)
        if box.pid > 0:
            with contextlib.suppress(ChildProcessError):
                os.wait4(box.pid, 0)
        box.cgroup.destroy()


def _raise_fd_limit() -> None:
    """A live sandbox holds ~20 of the zygote's fds (its pipes, pidfd, cgroup files kept
    open): a thousand at once needs more than a login's usual limit. Sandboxes set their
    own limit before any code runs."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
        want = min(ceiling, 1 << 20)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (OSError, ValueError):
        pass  # not root enough: the limit stays, and a spawn past it fails with its reason


def offers_ready(cfg: ZygoteConfig) -> bool:
    """Whether a sandbox that said "ready" is idle until its job, so that it can be offered
    (its counters were reset then): one with no interpreter started ahead (Python), or one
    whose interpreter said it waits for the job (node). A warm bash may still be starting
    after its init's "ready"; its counters are reset when it is taken."""
    return not cfg.prestart or cfg.runtime == "node"


def _done_status(body: bytes, exits_only: bool) -> int | None:
    """The wait status in a "D" message, if it is one a program can end with. A Python
    sandbox's runner only ever ends with an exit status (its code could have written the
    message itself: a signal it claims there is not taken)."""
    if not body.isdigit() or len(body) > 5:
        return None
    status = int(body)
    if status > 0xFFFF or not (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
        return None
    if exits_only and not os.WIFEXITED(status):
        return None
    return status


def _read_io(pid: int) -> dict[str, int] | None:
    try:
        fields = dict(
            line.split(": ") for line in (kernfiles.read(f"/proc/{pid}/io") or "").splitlines()
        )
        return {"rchar": int(fields["rchar"]), "wchar": int(fields["wchar"])}
    except (KeyError, ValueError):
        return None


def main() -> None:
    cfg = ZygoteConfig(**json.loads(sys.argv[1]))
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    _raise_fd_limit()
    sock = socket.socket(fileno=cfg.sock_fd)
    try:
        # numpy spawns no BLAS threads with this, and the zygote must stay one thread
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        os.environ["OMP_NUM_THREADS"] = "1"
        failed = {}
        for name in cfg.preload:
            try:
                importlib.import_module(name)
            except Exception as exc:  # the code would find it broken too: not the zygote's end
                failed[name] = f"{type(exc).__name__}: {exc}"
        libc.unshare(libc.CLONE_NEWNS)
        mounts.build_root(cfg.root, cfg.ro_paths)
        bpf = build_filter()
        driver = CgroupDriver.detect(cfg.cgroup_prefix)
        if driver is None:
            raise RuntimeError("no usable cgroup controllers (memory and pids are required)")
        driver.prepare()
        driver.sweep()
        spec = child.ChildSpec(
            root=cfg.root,
            seccomp_bpf=bpf,
            tmp_bytes=cfg.tmp_bytes,
            work_bytes=cfg.work_bytes,
            landlock_abi=landlock.abi(),
            runtime=cfg.runtime,
            prestart=cfg.prestart,
            cap_last_cap=libc.cap_last_cap(),
        )
        spec = dataclasses.replace(spec, seal=child.make_seal(spec))  # NativeMissing if unbuilt
    except Exception as exc:
        protocol.send(sock, {"op": "fatal", "error": f"{type(exc).__name__}: {exc}"})
        traceback.print_exc()
        sys.exit(1)
    # A sandbox's environment is its job's alone: emptied once here rather than in every
    # sandbox, where os.environ.clear() was ~25 copy-on-write faults of first-run Python;
    # then the base environment every Python job's begins with, for the same reason
    os.environ.clear()
    os.environ.update(cfg.env or {})
    # the sandbox must not find the server's source tree on its path
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != src]
    # Everything imported so far lives as long as the zygote: out of the collector's sight,
    # a full collection (in the zygote or in a sandbox) no longer writes to every object's
    # header, each write a copy-on-write fault of a page shared with every sandbox
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    home_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    warmup_nice = bool(cfg.prestart) and libc.has_capability(libc.CAP_SYS_NICE)
    z = Zygote(
        cfg,
        sock,
        driver,
        spec,
        NetnsPool.create(home_netns),
        warmup_nice=warmup_nice,
        offer_ready=offers_ready(cfg),
        preload_failed=failed,
    )
    z.free_uids.extend(range(cfg.uid_base, cfg.uid_base + cfg.uid_count))
    z.serve()


if __name__ == "__main__":
    main()
