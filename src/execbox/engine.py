"""Runs Jobs in sandboxes and returns Outcomes: admission, concurrency, wall clock, output
caps and usage. Knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import logging
import math
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from execbox import runtimes
from execbox.config import Settings
from execbox.jobs import Job, Outcome, Status, Timings, Usage
from execbox.sandbox import mounts, reaper
from execbox.sandbox.cgroups import CgroupDriver
from execbox.sandbox.pipes import read_capped, write_all
from execbox.sandbox.supervisor import Lease, Supervisor, ZygoteError, ZygoteLaunch
from execbox.sessions import SessionError, Sessions, artifacts, snapshot
from execbox.status import Evidence, derive, exceeded

log = logging.getLogger("execbox.engine")

UIDS_PER_ZYGOTE = 4096
RESULT_CAP = 16 << 20  # a handler's serialized return value
EXIT_GRACE_S = 2.0  # after the wall clock's kill, how long the exit report may take


@dataclass
class Captured:
    """What came out of the sandbox's pipes: (bytes, truncated) each."""

    stdout: tuple[bytes, bool]
    stderr: tuple[bytes, bool]
    result: tuple[bytes, bool]


def _handler_result(job: Job, result: tuple[bytes, bool]) -> tuple[Any, dict[str, str] | None]:
    """The handler's return value, or its error, from the sandbox's result channel."""
    data, truncated = result
    if not job.handler or job.runtime == "bash":
        return None, None
    if truncated:
        return None, {"type": "ResultTooLarge", "message": "the handler's return value "
                      f"exceeds {RESULT_CAP} bytes", "traceback": ""}  # fmt: skip
    if not data:  # killed before it answered: the status says why
        return None, None
    try:
        msg = json.loads(data)
    except ValueError:
        return None, {"type": "ResultCorrupt", "message": "unreadable result", "traceback": ""}
    if msg.get("ok"):
        return msg.get("value"), None
    return None, msg.get("error")


AUTOSCALE_TICK_S = 0.25
IDLE_AFTER_S = 2.0


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def pool_target(z: Supervisor, now: float, floor: int, ceiling: int) -> int:
    """How many ready sandboxes a zygote should keep: enough for the takes expected while
    one refill runs (twice over), between floor and ceiling. Grows at once; shrinks one
    step a tick, and to the floor once idle.

    Not one per sandbox in flight (it was): in a burst of a thousand long executions that
    made the zygote clone hundreds of sandboxes nobody took, a fifth more cpu on cores that
    were already the limit. And a refill counts as twice the zygote's fastest at most: a
    slower one ran on a saturated machine, where sandboxes made further ahead would only
    share the same cores with the ones in use."""
    recent = [t for t in z.take_times if now - t < 1.0]
    if not z.take_times or now - z.take_times[-1] > IDLE_AFTER_S:
        return floor
    refills = sorted(z.refill_ms[-32:]) or [10.0]
    refill_s = min(refills[len(refills) // 2], 2 * z.fastest_refill_ms) / 1000
    want = math.ceil(len(recent) * refill_s * 2) + 1
    want = min(max(want, floor), ceiling)
    if want >= z.pool_target:
        return want
    return z.pool_target - 1


ZYGOTES_MAX = 4  # python, python-heavy, node, bash: the uid span each server takes


def sandbox_uid_base(s: Settings, pid: int) -> int:
    """The first outside uid of this server's sandboxes: from the settings, or from the pid
    so that servers on one host don't clash. Never inside the session uids' range: a
    sandbox must not share a uid with any other sandbox, a session's included."""
    span = UIDS_PER_ZYGOTE * ZYGOTES_MAX
    lo, hi = s.session_uid_base, s.session_uid_base + s.session_uid_count
    if s.uid_base:
        if s.uid_base < hi and lo < s.uid_base + span:
            raise ValueError(
                f"uid_base: sandbox uids {s.uid_base}..{s.uid_base + span - 1} overlap the "
                f"session uids {lo}..{hi - 1}"
            )
        return s.uid_base
    base = 100_000_000 + (pid % 4096) * span
    if base < hi and lo < base + span:
        base = hi + (pid % 4096) * span
    return base


@dataclass
class EngineStats:
    queued: int = 0
    running: int = 0
    by_status: dict[tuple[str, str], int] = field(default_factory=dict)


class Engine:
    def __init__(self, settings: Settings, sessions: Sessions | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.paths = runtimes.default_paths(settings.runtime_python, settings.node, settings.bash)
        self.zygotes: dict[str, Supervisor] = {}
        self.stats = EngineStats()
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self.started = False
        self.listeners: list[Any] = []  # callables(job, outcome), e.g. metrics
        self._autoscaler: asyncio.Task[None] | None = None
        self._tag = secrets.token_hex(3)
        self._heavy = runtimes.heavy_names(settings.preload_python_heavy)

    # ---- lifecycle ---------------------------------------------------------------------------

    def _launch(self, index: int, name: str) -> ZygoteLaunch:
        """The zygote `name`: a runtime's (ZYGOTE_OF), or the heavy Python one."""
        s = self.settings
        base = sandbox_uid_base(s, os.getpid())
        prefix = s.cgroup_prefix or f"execbox/{os.getpid()}"
        ro_paths = [os.path.dirname(self.paths.python_bin_dir)]  # the runtime env's home
        runtime = "python" if name == runtimes.PYTHON_HEAVY else name
        preload = list(s.preload_python) if runtime == "python" else []
        if name == runtimes.PYTHON_HEAVY:
            preload += s.preload_python_heavy
        return ZygoteLaunch(
            runtime=runtime,
            name=name,
            python=s.runtime_python,
            root=self._root_of(name),
            ro_paths=ro_paths,
            uid_base=base + index * UIDS_PER_ZYGOTE,
            uid_count=UIDS_PER_ZYGOTE,
            cgroup_prefix=f"{prefix}/{name}",
            pool_size=s.pool_size,
            preload=preload,
            tmp_bytes=s.limits.default.tmp_bytes,
            work_bytes=s.limits.default.workdir_bytes,
            default_memory_bytes=s.limits.default.memory_bytes,
            default_pids=s.limits.default.pids,
            prestart=self._prestart(runtime),
            env=runtimes.base_env(self.paths) if runtime == "python" else None,
        )

    def _prestart(self, runtime: str) -> list[str] | None:
        """The interpreter a pooled sandbox starts while it waits for a job."""
        if runtime == "node":
            return [self.paths.node, "-e", runtimes.NODE_PRELUDE, mounts.WARM_MODULE]
        if runtime == "bash":
            return [self.paths.bash, "--noprofile", "--norc", "-c", runtimes.BASH_PRELUDE]
        return None

    async def start(self) -> None:
        reaper.become_subreaper()
        await asyncio.to_thread(self._sweep_dead_servers)
        needed = {runtimes.ZYGOTE_OF[r] for r in (*self.settings.runtimes, "command")}
        needed -= {r for r in ("node", "bash") if self.missing(r)}  # a prestart would fail forever
        if "python" in needed and self._heavy is not None:
            needed.add(runtimes.PYTHON_HEAVY)
        for i, name in enumerate(sorted(needed)):
            self.zygotes[name] = Supervisor(self._launch(i, name), on_death=self._zygote_died)
        results = await asyncio.gather(
            *(z.start() for z in self.zygotes.values()), return_exceptions=True
        )
        for z, res in zip(self.zygotes.values(), results, strict=True):
            if isinstance(res, BaseException):
                log.error("%s zygote failed to start: %s", z.name, res)
        self.started = True
        self._autoscaler = asyncio.get_running_loop().create_task(self._autoscale())

    async def _autoscale(self) -> None:
        while True:
            await asyncio.sleep(AUTOSCALE_TICK_S)
            now = time.monotonic()
            for z in self.zygotes.values():
                if z.ready:
                    target = pool_target(z, now, self.settings.pool_min, self.settings.pool_max)
                    if target != z.pool_target:
                        z.set_pool_size(target)

    def _sweep_dead_servers(self) -> None:
        """Clean what a server killed outright left on the host: its cgroups (and any
        process still in them) and its zygotes' empty root mount points."""
        driver = CgroupDriver.detect(f"execbox/{os.getpid()}")
        if driver is not None:
            n = driver.sweep_dead_servers()
            if n:
                log.warning("removed %d cgroups left by servers that died", n)
        for path in glob.glob("/tmp/.execbox-root-*-*-*"):
            pid = path.rsplit("/", 1)[1].split("-")[2]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                with contextlib.suppress(OSError):
                    os.rmdir(path)

    def _zygote_died(self) -> None:
        # its sandboxes die of PDEATHSIG a moment later and are reparented to us: reap them
        loop = asyncio.get_running_loop()
        for delay in (0.05, 0.2, 1.0, 3.0):
            loop.call_later(delay, self.reap)

    def reap(self) -> int:
        keep = {z.proc.pid for z in self.zygotes.values() if z.proc is not None}
        return reaper.reap_orphans(keep)

    def _root_of(self, runtime: str) -> str:
        # the server's pid (for the sweep) and this engine's own tag: two engines of one
        # process must not remove each other's roots
        return f"/tmp/.execbox-root-{os.getpid()}-{self._tag}-{runtime}"

    async def close(self) -> None:
        if self._autoscaler is not None:
            self._autoscaler.cancel()
        await asyncio.gather(*(z.close() for z in self.zygotes.values()))
        self.started = False
        await asyncio.to_thread(self._remove_own_cgroups)
        for runtime in self.zygotes:
            with contextlib.suppress(OSError):  # an empty mount point on the host's side
                os.rmdir(self._root_of(runtime))

    def _remove_own_cgroups(self) -> None:
        prefix = self.settings.cgroup_prefix or f"execbox/{os.getpid()}"
        driver = CgroupDriver.detect(prefix)
        if driver is not None:
            for root in set(driver.roots.values()):
                for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda w: -len(w[0])):
                    with contextlib.suppress(OSError):
                        os.rmdir(dirpath)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def missing(self, runtime: str) -> str | None:
        """Why a runtime cannot run on this host, or None. Checked before every job, so a
        binary removed while the server runs is reported, never hung on."""
        path = {"python": self.settings.runtime_python, "node": self.paths.node}.get(
            runtime, self.paths.bash
        )
        if os.access(path, os.X_OK):
            return None
        fix = {"python": "make install", "node": "apt-get install nodejs"}.get(
            runtime, "apt-get install bash"
        )
        return f"the {runtime} runtime is missing: {path} is not an executable ({fix})"

    def health(self) -> dict[str, dict[str, Any]]:
        out = {}
        for runtime in (*self.settings.runtimes, "command"):
            z = self.zygotes.get(runtimes.ZYGOTE_OF[runtime])
            missing = self.missing(runtime)
            ready = bool(z and z.ready) and missing is None
            error = None if ready else (missing or (z.last_error if z else "not started"))
            out[runtime] = {
                "ready": ready,
                "error": error,
                "memory_mb": self.settings.limits.default.memory_bytes >> 20,
            }
        heavy = self.zygotes.get(runtimes.PYTHON_HEAVY)
        if "python" in out and self._heavy is not None:
            # not a runtime of its own: while it is down its jobs run in the python zygote,
            # which imports numpy for each of them (~90 ms): a warning, not a problem
            error = None
            if heavy is None or not heavy.ready:
                error = heavy.last_error if heavy and heavy.last_error else "not running"
            elif heavy.preload_failed:
                failed = heavy.preload_failed.items()
                error = "; ".join(f"cannot import {m}: {why}" for m, why in failed)
            out[runtimes.PYTHON_HEAVY] = {
                "ready": error is None,
                "error": error,
                "memory_mb": self.settings.limits.default.memory_bytes >> 20,
                "fallback": "python",
            }
        return out

    # ---- running -----------------------------------------------------------------------------

    async def run(
        self, job: Job, on_start: Callable[[], Awaitable[bool | None]] | None = None
    ) -> Outcome:
        """Run a job; `on_start` is awaited once it has a slot, just before its sandbox. If it
        answers False the job is withdrawn (another node took it) and nothing runs."""
        t0 = time.monotonic()
        payload = runtimes.payload(job, self.paths)  # raises InvalidJob before any sandbox
        self.stats.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.stats.queued -= 1
        self.stats.running += 1
        gone: list[asyncio.Future[None]] = []
        try:
            if on_start is not None and await on_start() is False:
                return Outcome(Status.INTERNAL_ERROR, error="withdrawn before it started")
            if job.session is not None:
                outcome = await self._run_in_session(job, payload, t0)
            else:
                outcome = await self._run(job, payload, t0, gone=gone)
        except Exception as exc:  # a bug: log it, but still answer with an Outcome
            log.exception("engine failure on job %s", job.id)
            outcome = Outcome(Status.INTERNAL_ERROR, error=f"internal error: {exc}")
        finally:
            self.stats.running -= 1
            # the answer does not wait for the sandbox's teardown, but its slot does: at
            # most max_concurrency sandboxes exist at once, dying ones included
            if gone and not gone[0].done():
                gone[0].add_done_callback(lambda _: self._slots.release())
            else:
                self._slots.release()
        outcome.timings.total_ms = (time.monotonic() - t0) * 1000
        key = (job.runtime, outcome.status.value)
        self.stats.by_status[key] = self.stats.by_status.get(key, 0) + 1
        for listener in self.listeners:
            listener(job, outcome)
        return outcome

    async def _run_in_session(self, job: Job, payload: dict[str, Any], t0: float) -> Outcome:
        """One execution at a time per session, in its persistent workspace, with the files
        it created or changed listed as artifacts."""
        assert job.session is not None
        if self.sessions is None:
            return Outcome(Status.INTERNAL_ERROR, error="sessions are not enabled on this engine")
        async with self.sessions.lock(job.session):
            try:
                ws = await asyncio.to_thread(self.sessions.ensure, job.session)
            except (SessionError, RuntimeError) as exc:
                return Outcome(Status.INTERNAL_ERROR, error=f"session: {exc}")
            before = await asyncio.to_thread(snapshot, ws.path)
            outcome = await self._run(job, payload, t0, {"uid": ws.uid, "dir": ws.path})
            outcome.artifacts = await asyncio.to_thread(artifacts, ws.path, before)
            await asyncio.to_thread(self.sessions.touch, job.session)
        return outcome

    async def _run(
        self,
        job: Job,
        payload: dict[str, Any],
        t0: float,
        session: dict[str, Any] | None = None,
        gone: list[asyncio.Future[None]] | None = None,
    ) -> Outcome:
        timings = Timings(queue_ms=(time.monotonic() - t0) * 1000)
        missing = self.missing(job.runtime)
        if missing:
            return Outcome(Status.INTERNAL_ERROR, error=missing, timings=timings)
        t_take = time.monotonic()
        limits = {
            "memory_bytes": job.limits.memory_bytes,
            "pids": job.limits.pids,
            "cpu_limit_ns": int(job.limits.cpu_time_s * 1e9),
            "fds": job.limits.fds,
        }
        try:
            lease = await self._take(job, limits, session)
        except ZygoteError as exc:
            return Outcome(Status.INTERNAL_ERROR, error=str(exc), timings=timings)
        timings.fork_ms = (time.monotonic() - t_take) * 1000
        if gone is not None:
            gone.append(lease.gone)
        try:
            return await self._drive(job, payload, lease, timings)
        finally:
            lease.kill()  # no-op when it already exited; never leave one running
            lease.close_fds()

    async def _take(
        self, job: Job, limits: dict[str, Any], session: dict[str, Any] | None
    ) -> Lease:
        """A sandbox for `job`, from the zygote runtimes.zygote_for picks. The heavy Python
        zygote's jobs go to the lean one while it is down, and when it fails the take (it
        died during it, say): nothing of the job reaches a sandbox before a take succeeds,
        so the job runs once either way, only slower (its code imports what it names)."""
        lean = self.zygotes.get(runtimes.ZYGOTE_OF[job.runtime])
        zygote = self.zygotes.get(runtimes.zygote_for(job, self._heavy)) or lean
        if zygote is None:
            raise ZygoteError(f"runtime {job.runtime} is not enabled")
        if zygote is not lean and lean is not None:
            if zygote.ready:
                try:
                    return await zygote.take(limits, session)
                except ZygoteError as exc:
                    log.warning("job %s: %s; it runs in the %s zygote", job.id, exc, lean.name)
            zygote = lean
        return await zygote.take(limits, session)

    async def _drive(
        self, job: Job, payload: dict[str, Any], lease: Lease, timings: Timings
    ) -> Outcome:
        limits = job.limits
        t_exec = time.monotonic()
        reason: dict[str, str] = {}

        def over_cap() -> None:
            if "kill" not in reason:
                reason["kill"] = "output"
                lease.kill()

        cap = limits.output_bytes
        stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        readers = asyncio.gather(
            read_capped(lease.stdout_fd, cap, over_cap, stop),
            read_capped(lease.stderr_fd, cap, over_cap, stop),
            read_capped(lease.result_fd, max(cap, RESULT_CAP), lambda: None, stop),
        )
        readers.add_done_callback(_retrieve)  # cancelled on some paths: nothing to log then
        feed = asyncio.ensure_future(self._feed(lease, payload, runtimes.stdin_for(job)))
        try:
            exit_msg = await asyncio.wait_for(asyncio.shield(lease.exited), limits.wall_time_s)
        except TimeoutError:
            reason.setdefault("kill", "timeout")
            lease.kill()
            try:
                exit_msg = await asyncio.wait_for(lease.exited, EXIT_GRACE_S)
            except (TimeoutError, ZygoteError) as exc:
                readers.cancel()
                return self._lost(job, lease, timings, f"sandbox did not exit after kill: {exc}")
        except ZygoteError as exc:
            feed.cancel()
            readers.cancel()
            timings.exec_ms = (time.monotonic() - t_exec) * 1000
            return Outcome(Status.INTERNAL_ERROR, error=str(exc), timings=timings)
        timings.exec_ms = (time.monotonic() - t_exec) * 1000
        wall_ns = time.monotonic_ns() - int(t_exec * 1e9)
        feed.cancel()
        # every writer is gone once pid 1 of the namespace has been reaped
        try:
            captured = Captured(*await asyncio.wait_for(asyncio.shield(readers), EXIT_GRACE_S))
        except TimeoutError:
            if not exit_msg.get("early"):
                readers.cancel()
                return self._lost(job, lease, timings, "sandbox output did not close")
            # The program ended and said so before its sandbox's teardown (in the idle
            # class): a process it left (a fork bomb's hundreds) can hold a pipe until the
            # teardown reaches it. What it writes after the program's end is not the job's;
            # what is in the pipes now is the answer.
            log.warning("job %s in sandbox %s: output still open after its end", job.id, lease.sid)
            stop.set_result(None)
            captured = Captured(*await readers)
        return self._outcome(job, exit_msg, reason.get("kill"), captured, timings, wall_ns, lease)

    async def _feed(self, lease: Lease, payload: dict[str, Any], stdin: bytes) -> None:
        with contextlib.suppress(OSError):
            await write_all(lease.job_fd, json.dumps(payload).encode())
        os.close(lease.job_fd)
        lease.job_fd = -1
        with contextlib.suppress(OSError):
            await write_all(lease.stdin_fd, stdin)
        os.close(lease.stdin_fd)
        lease.stdin_fd = -1

    def _lost(self, job: Job, lease: Lease, timings: Timings, why: str) -> Outcome:
        log.error("job %s in sandbox %s: %s", job.id, lease.sid, why)
        return Outcome(Status.INTERNAL_ERROR, error=why, timings=timings)

    def _outcome(
        self,
        job: Job,
        msg: dict[str, Any],
        kill_reason: str | None,
        captured: Captured,
        timings: Timings,
        wall_ns: int,
        lease: Lease,
    ) -> Outcome:
        status_word = msg["status"]
        exit_code = os.waitstatus_to_exitcode(status_word)
        sig = -exit_code if exit_code < 0 else None
        cg = msg["cgroup"]
        ru = msg["rusage"]
        usage = Usage(
            cpu_time_ns=cg.get("cpu_usage_ns"),
            user_time_ns=cg.get("cpu_user_ns"),
            system_time_ns=cg.get("cpu_system_ns"),
            wall_time_ns=wall_ns,
            memory_peak_bytes=cg.get("memory_peak_bytes"),
            memory_current_bytes=cg.get("memory_current_bytes"),
            process_count=msg.get("pids_peak"),
            file_descriptors=msg.get("fds_peak"),
            io_read_bytes=(msg.get("io") or {}).get("rchar"),
            io_write_bytes=(msg.get("io") or {}).get("wchar"),
        )
        if usage.cpu_time_ns is None and ru is not None:  # no cpuacct: pid 1 and its children
            usage.user_time_ns = int(ru["utime"] * 1e9)
            usage.system_time_ns = int(ru["stime"] * 1e9)
            usage.cpu_time_ns = usage.user_time_ns + usage.system_time_ns
        setup_error = msg.get("setup_error")
        evidence = Evidence(
            exit_code=None if sig else exit_code,
            signal=sig,
            internal_error=bool(setup_error),
            timed_out=kill_reason == "timeout",
            output_exceeded=kill_reason == "output",
            oom_kills=cg.get("oom_kills") or 0,
            cpu_time_ns=usage.cpu_time_ns,
            cpu_limit_ns=int(job.limits.cpu_time_s * 1e9),
            cpu_killed=bool(msg.get("cpu_killed")),
            pids_limit_hits=cg.get("pids_limit_hits") or 0,
            fds_exceeded=bool(msg.get("fds_hit")),
        )
        value, handler_error = _handler_result(job, captured.result)
        status = derive(evidence)
        flags = exceeded(evidence)
        return Outcome(
            status=status,
            exit_code=None if sig else exit_code,
            signal=sig,
            stdout=captured.stdout[0],
            stderr=captured.stderr[0],
            stdout_truncated=captured.stdout[1],
            stderr_truncated=captured.stderr[1],
            return_value=value,
            handler_error=handler_error,
            usage=usage,
            timings=timings,
            error=f"sandbox setup failed: {setup_error}" if setup_error else None,
            pool_hit=lease.pool_hit,
            exceeded=flags,
        )


def signal_name(sig: int | None) -> str | None:
    if sig is None:
        return None
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"
