"""The engine's handle on one zygote: starts it by a fresh exec, asks it for sandboxes,
collects exit reports, and restarts it when it dies. Runs on the asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from execbox.sandbox import protocol

log = logging.getLogger("execbox.zygote")

# The zygote imports execbox from the source tree without site customisation from the
# server's environment; -I keeps PYTHON* variables and the user site out of it.
# forkhooks.record() comes before any other import: it must see every at-fork hook
_BOOT = (
    "import sys; sys.path.insert(0, {src!r}); from execbox.sandbox import forkhooks; "
    "forkhooks.record(); from execbox.sandbox.zygote import main; main()"
)
SRC_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


TakeReply = tuple[dict[str, Any], list[int]]


class ZygoteError(RuntimeError):
    """The zygote could not provide a sandbox, or died while one was in use."""


@dataclass(frozen=True)
class ZygoteLaunch:
    runtime: str
    python: str  # the runtime environment's interpreter, which the zygote runs on
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
    name: str = ""  # the pool's name, when it is not the runtime's (python-heavy)
    # the environment a Python sandbox starts with, the base one every job's begins with:
    # a job's is then set over it, only what differs (child._set_env)
    env: dict[str, str] | None = None


@dataclass
class Lease:
    """A sandbox handed to the engine: its pipes, its pidfd and its coming exit report."""

    sid: str
    pid: int
    job_fd: int
    stdin_fd: int
    stdout_fd: int
    stderr_fd: int
    result_fd: int
    pidfd: int
    pool_hit: bool
    take_ms: float
    exited: asyncio.Future[dict[str, Any]] = field(repr=False, default=None)  # type: ignore[assignment]
    # reaped: after `exited` when the sandbox reported its end before its teardown
    gone: asyncio.Future[None] = field(repr=False, default=None)  # type: ignore[assignment]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close_fds(self) -> None:
        for name in ("job_fd", "stdin_fd", "stdout_fd", "stderr_fd", "result_fd", "pidfd"):
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)


@dataclass
class Supervisor:
    launch: ZygoteLaunch
    on_death: Callable[[], None] | None = None
    proc: subprocess.Popen[bytes] | None = None
    sock: socket.socket | None = None
    ready: bool = False
    last_error: str | None = None
    restarts: int = 0
    started_at: float = 0.0
    preload_failed: dict[str, str] = field(default_factory=dict)  # module -> why, at its hello
    _req: int = 0
    _takes: dict[int, asyncio.Future[TakeReply]] = field(default_factory=dict)
    # ready sandboxes the zygote sent ahead of any take, oldest first: (its offer, its fds)
    _offers: dict[str, TakeReply] = field(default_factory=dict)
    _leases: dict[str, Lease] = field(default_factory=dict)
    _dying: dict[str, Lease] = field(default_factory=dict)  # reported, not yet reaped
    _hello: asyncio.Future[dict[str, Any]] | None = None
    _outbox: deque[dict[str, Any]] = field(default_factory=deque)
    _closing: bool = False
    _restart_task: asyncio.Task[None] | None = None
    stats: dict[str, int] = field(default_factory=lambda: {"hits": 0, "misses": 0})
    pool_size: int = 0  # ready or starting sandboxes, as the zygote last reported
    pool_target: int = 0
    refill_ms: list[float] = field(default_factory=list)  # recent clone-to-ready times
    fastest_refill_ms: float = float("inf")  # of this zygote's life: its unloaded refill
    take_times: list[float] = field(default_factory=list)  # recent takes, for autoscaling

    @property
    def runtime(self) -> str:
        return self.launch.runtime

    @property
    def name(self) -> str:
        return self.launch.name or self.launch.runtime

    async def start(self, timeout: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cfg = {k: v for k, v in asdict(self.launch).items() if k != "python"}
        cfg["name"] = self.name
        cfg["sock_fd"] = theirs.fileno()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(
            [self.launch.python, "-I", "-c", _BOOT.format(src=SRC_DIR), json.dumps(cfg)],
            pass_fds=[theirs.fileno()],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sys.stderr,
            cwd="/",
        )
        theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self._hello = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_readable)
        try:
            hello = await asyncio.wait_for(self._hello, timeout)
        except TimeoutError:
            self.last_error = f"{self.name} zygote did not start within {timeout:.0f}s"
            self._teardown()
            raise ZygoteError(self.last_error) from None
        if hello.get("op") == "fatal":
            self.last_error = f"{self.name} zygote failed: {hello.get('error')}"
            self._teardown()
            raise ZygoteError(self.last_error)
        self.ready = True
        self.last_error = None
        self.preload_failed = dict(hello.get("preload_failed") or {})
        for module, why in self.preload_failed.items():
            log.warning("%s zygote could not import %s: %s", self.name, module, why)
        self.started_at = time.monotonic()
        self.pool_target = self.launch.pool_size

    async def take(self, limits: dict[str, Any], session: dict[str, Any] | None = None) -> Lease:
        """A sandbox for one job, with these limits. An offered one is claimed without an
        answer when the pool's cgroup limits are the job's: nothing is left to set before
        its code runs. With other limits it is taken by name, and the zygote answers once
        they are set; without an offer, the zygote picks or starts one."""
        if not self.ready or self.sock is None:
            raise ZygoteError(self.last_error or f"{self.name} zygote is not running")
        offer = None
        if session is None and self._offers:
            offer = self._offers.pop(next(iter(self._offers)))
            if self._pool_limits(limits) and self._claim(offer[0]["sid"], limits):
                return self._lease(*offer, hit=True, take_ms=0.0)
        loop = asyncio.get_running_loop()
        self._req += 1
        req = self._req
        fut: asyncio.Future[TakeReply] = loop.create_future()
        self._takes[req] = fut
        msg = {"op": "take", "req": req, "limits": limits, "session": session}
        held: list[int] = []  # the offered sandbox's fds, if this take names one
        if offer is not None:
            msg["sid"] = offer[0]["sid"]
            held = offer[1]
        try:
            self.send(msg)
            reply, fds = await fut
        except BaseException as exc:
            self._takes.pop(req, None)
            _close(held)
            if isinstance(exc, OSError):
                raise ZygoteError(f"{self.name} zygote unreachable: {exc}") from exc
            raise
        if reply["op"] == "error":
            _close(held)
            raise ZygoteError(reply["error"])
        if held and not fds and reply["sid"] == msg["sid"]:
            fds = held  # the zygote took the offered one, whose fds we hold
        else:
            _close(held)  # none, or it ended meanwhile: the zygote handed over another
        return self._lease(reply, fds, hit=reply["pool_hit"], take_ms=reply["take_ms"])

    def _pool_limits(self, limits: dict[str, Any]) -> bool:
        return (
            limits.get("memory_bytes") == self.launch.default_memory_bytes
            and limits.get("pids") == self.launch.default_pids
            and not limits.get("cpu_bandwidth")
        )

    def _claim(self, sid: str, limits: dict[str, Any]) -> bool:
        """Tell the zygote the sandbox is taken, before its job is written: the zygote must
        read this before the sandbox's end. So only when it goes out now, not queued behind
        a burst's messages (then the take by name waits for its turn)."""
        assert self.sock is not None
        if self._outbox:
            return False
        try:
            protocol.send(self.sock, {"op": "claim", "sid": sid, "limits": limits})
        except BlockingIOError:
            return False
        except OSError as exc:
            raise ZygoteError(f"{self.name} zygote unreachable: {exc}") from exc
        self.pool_size = max(0, self.pool_size - 1)
        return True

    def _lease(self, msg: dict[str, Any], fds: list[int], hit: bool, take_ms: float) -> Lease:
        loop = asyncio.get_running_loop()
        job_fd, stdin_fd, stdout_fd, stderr_fd, result_fd, pidfd = fds
        lease = Lease(
            sid=msg["sid"],
            pid=msg["pid"],
            job_fd=job_fd,
            stdin_fd=stdin_fd,
            stdout_fd=stdout_fd,
            stderr_fd=stderr_fd,
            result_fd=result_fd,
            pidfd=pidfd,
            pool_hit=hit,
            take_ms=take_ms,
            exited=loop.create_future(),
            gone=loop.create_future(),
        )
        self.stats["hits" if hit else "misses"] += 1
        self.take_times.append(time.monotonic())
        del self.take_times[:-1024]
        self._leases[lease.sid] = lease
        return lease

    def set_pool_size(self, size: int) -> None:
        """A new pool target. Offers beyond it are given back (oldest first): the zygote
        never withdraws one itself, as the engine could be claiming it."""
        self.pool_target = size
        release = list(self._offers)[: max(0, len(self._offers) - size)]
        for sid in release:
            _close(self._offers.pop(sid)[1])
        if self.sock is not None and self.ready:
            with contextlib.suppress(OSError):
                self.send({"op": "pool", "size": size, "release": release})

    def send(self, msg: dict[str, Any]) -> None:
        """Send now, or queue in order when the socket is full (a burst of a thousand
        takes fills it): the zygote drains it, and a request never fails for that."""
        assert self.sock is not None
        if not self._outbox:
            try:
                protocol.send(self.sock, msg)
                return
            except BlockingIOError:
                pass
            asyncio.get_running_loop().add_writer(self.sock.fileno(), self._flush)
        self._outbox.append(msg)

    def _flush(self) -> None:
        sock = self.sock
        if sock is None:
            return
        while self._outbox:
            try:
                protocol.send(sock, self._outbox[0])
            except BlockingIOError:
                return
            except OSError as exc:
                self._outbox.clear()
                self._died(f"socket error: {exc}")
                return
            self._outbox.popleft()
        asyncio.get_running_loop().remove_writer(sock.fileno())

    # ---- incoming ------------------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self.sock is not None
        while True:
            try:
                msg, fds = protocol.recv(self.sock)
            except BlockingIOError:
                return
            except OSError as exc:
                self._died(f"socket error: {exc}")
                return
            if msg is None:
                self._died("exited")
                return
            self._dispatch(msg, fds)

    def _dispatch(self, msg: dict[str, Any], fds: list[int]) -> None:
        op = msg.get("op")
        if "pool" in msg:
            self.pool_size = msg["pool"]
        if op in ("hello", "fatal"):
            if self._hello is not None and not self._hello.done():
                self._hello.set_result(msg)
        elif op in ("sandbox", "error"):
            fut = self._takes.pop(msg["req"], None)
            if fut is not None and not fut.done():
                fut.set_result((msg, fds))
            else:
                for fd in fds:
                    os.close(fd)
        elif op in ("ready", "offer"):  # a sandbox finished starting (and was offered)
            self.refill_ms.append(msg["setup_ms"])
            del self.refill_ms[:-256]
            self.fastest_refill_ms = min(self.fastest_refill_ms, msg["setup_ms"])
            if op == "offer":
                self._offers[msg["sid"]] = (msg, fds)
                return  # its fds are kept
        elif op == "exit":
            offer = self._offers.pop(msg["sid"], None)
            if offer is not None:  # an offer that ended before any claim
                _close(offer[1])
            lease = self._leases.pop(msg["sid"], None)
            if lease is not None:
                # `exited` may be done already (the engine gave up waiting for it); the
                # slot the engine holds until `gone` is released either way
                if not lease.exited.done():
                    lease.exited.set_result(msg)
                if msg.get("early"):
                    self._dying[lease.sid] = lease
                elif not lease.gone.done():
                    lease.gone.set_result(None)
            elif msg.get("setup_error"):
                self.last_error = f"sandbox setup failed: {msg['setup_error']}"
                log.error("%s sandbox %s: %s", self.name, msg["sid"], self.last_error)
        elif op == "reaped":
            lease = self._dying.pop(msg["sid"], None)
            if lease is not None and not lease.gone.done():
                lease.gone.set_result(None)
        elif op == "log":
            log.log(logging.ERROR if msg.get("level") == "error" else logging.INFO, msg.get("msg"))
        for fd in fds if op not in ("sandbox", "error") else ():
            os.close(fd)

    def _died(self, why: str) -> None:
        was_ready = self.ready
        self._teardown()
        err = ZygoteError(f"{self.name} zygote died ({why})")
        self._end_all(err)
        if self._hello is not None and not self._hello.done():
            self._hello.set_result({"op": "fatal", "error": why})
        if self.on_death is not None:
            self.on_death()
        if was_ready and not self._closing:
            self.last_error = str(err)
            log.error("%s; restarting", err)
            self._restart_task = asyncio.get_running_loop().create_task(self._restart())

    def _end_all(self, err: ZygoteError) -> None:
        """The zygote is gone: the takes waiting on it fail, and its sandboxes, killed with
        it, are gone (the slots the engine holds for them come back)."""
        for fut in self._takes.values():
            if not fut.done():
                fut.set_exception(err)
        self._takes.clear()
        for lease in self._leases.values():
            lease.kill()
            if not lease.exited.done():
                lease.exited.set_exception(err)
        for lease in (*self._leases.values(), *self._dying.values()):
            if not lease.gone.done():  # its parent is gone: so is it (PDEATHSIG)
                lease.gone.set_result(None)
        self._leases.clear()
        self._dying.clear()

    async def _restart(self) -> None:
        delay = 0.05
        while not self._closing:
            try:
                await self.start()
                self.restarts += 1
                return
            except ZygoteError as exc:
                log.error("restart of %s zygote failed: %s", self.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _teardown(self) -> None:
        self.ready = False
        self._outbox.clear()
        for _msg, fds in self._offers.values():  # its sandboxes die with it
            _close(fds)
        self._offers.clear()
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_writer(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            self.proc = None

    async def close(self) -> None:
        self._closing = True
        if self._restart_task is not None:
            self._restart_task.cancel()
        if self.sock is not None and self.proc is not None:
            # closing our end tells the zygote to kill and clean up its sandboxes
            proc = self.proc
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
            for _ in range(100):
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.02)
        self._teardown()
        self._end_all(ZygoteError(f"{self.name} zygote closed"))


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
