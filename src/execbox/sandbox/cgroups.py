"""One cgroup per sandbox: memory, pids and cpu, on cgroup v2 where its controllers are
usable and on the v1 hierarchies otherwise (these machines mount v1 controllers, and the
v2 tree has none enabled: ../shared/DESIGN.md).

Only the zygote, which is root on the host, touches the cgroup filesystem; the sandbox
sees none of it (it gets its own cgroup namespace and no cgroupfs mount).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass, field

from execbox.sandbox.kernfiles import read as _read
from execbox.sandbox.kernfiles import read_fd
from execbox.sandbox.kernfiles import write as _write

# cpu (bandwidth) is left out until a limit uses it: each hierarchy costs every sandbox a
# mkdir, an attach and a rmdir
V1_CONTROLLERS = ("memory", "pids", "cpuacct")


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int | None = None
    pids: int | None = None
    # cpu bandwidth as (quota_us, period_us); None leaves it unlimited
    cpu_bandwidth: tuple[int, int] | None = None


@dataclass
class CgroupStats:
    memory_peak_bytes: int | None = None
    memory_current_bytes: int | None = None
    oom_kills: int = 0
    pids_peak: int | None = None  # cgroup v2 only
    pids_limit_hits: int = 0
    cpu_usage_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return dict(self.__dict__)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, options) of every cgroup filesystem."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                out.append((parts[1], parts[2], set(parts[3].split(","))))
    return out


def _keyed(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


@dataclass
class CgroupDriver:
    """Finds the hierarchies once and creates sandbox cgroups below `prefix`."""

    version: int
    roots: dict[str, str] = field(default_factory=dict)  # controller -> dir of our prefix

    @classmethod
    def detect(cls, prefix: str) -> CgroupDriver | None:
        mounts = _mounts()
        for mnt, fstype, _ in mounts:
            if fstype != "cgroup2":
                continue
            ctrls = (_read(os.path.join(mnt, "cgroup.controllers")) or "").split()
            if {"memory", "pids", "cpu"} <= set(ctrls):
                return cls(version=2, roots={"unified": os.path.join(mnt, prefix)})
        roots = {}
        for mnt, fstype, opts in mounts:
            if fstype != "cgroup":
                continue
            for ctrl in V1_CONTROLLERS:
                if ctrl in opts and ctrl not in roots:
                    roots[ctrl] = os.path.join(mnt, prefix)
        if "memory" in roots and "pids" in roots:
            return cls(version=1, roots=roots)
        return None

    def _dirs(self) -> list[str]:
        return sorted(set(self.roots.values()))

    def prepare(self) -> None:
        for d in self._dirs():
            os.makedirs(d, exist_ok=True)
        if self.version == 2:
            root = self.roots["unified"]
            # enable the controllers for our children, from the top down
            parent = os.path.dirname(root)
            for d in (parent, root):
                with contextlib.suppress(OSError):
                    _write(os.path.join(d, "cgroup.subtree_control"), "+memory +pids +cpu")

    def create(self, name: str) -> Cgroup:
        paths = {ctrl: os.path.join(root, name) for ctrl, root in self.roots.items()}
        for d in sorted(set(paths.values())):
            os.mkdir(d)
        cg = Cgroup(self.version, paths)
        return cg

    def sweep_dead_servers(self) -> int:
        """Remove execbox/<pid> trees of servers that are gone (killed with SIGKILL, say):
        their sandboxes' cgroups, and anything still running in them."""
        removed = 0
        for root in self._dirs():
            parent = os.path.dirname(root)  # .../execbox
            if not os.path.isdir(parent):
                continue
            for name in os.listdir(parent):
                if not name.isdigit() or os.path.exists(f"/proc/{name}"):
                    continue
                tree = os.path.join(parent, name)
                for dirpath, _dirs, _files in sorted(os.walk(tree), key=lambda w: -len(w[0])):
                    Cgroup(self.version, {"x": dirpath}).destroy()
                    removed += 1
        return removed

    def sweep(self) -> int:
        """Kill and remove every cgroup left below our prefix (after a crash)."""
        removed = 0
        for root in self._dirs():
            if not os.path.isdir(root):
                continue
            for name in os.listdir(root):
                path = os.path.join(root, name)
                if os.path.isdir(path):
                    Cgroup(self.version, {"x": path}).destroy()
                    removed += 1
        return removed


STATS_V1 = (
    ("memory", "memory.max_usage_in_bytes"),
    ("memory", "memory.usage_in_bytes"),
    ("memory", "memory.oom_control"),
    ("pids", "pids.current"),
    ("pids", "pids.events"),
    ("cpuacct", "cpuacct.usage"),
    ("cpuacct", "cpuacct.usage_user"),
    ("cpuacct", "cpuacct.usage_sys"),
)
STATS_V2 = (
    ("memory", "memory.peak"),
    ("memory", "memory.current"),
    ("memory", "memory.events"),
    ("pids", "pids.current"),
    ("pids", "pids.peak"),
    ("pids", "pids.events"),
    ("cpu", "cpu.stat"),
)
# not cgroup.procs: on v1 an open cgroup.procs keeps answering with the list it loaded
# first (the kernel caches it per open file)


@dataclass
class Cgroup:
    version: int
    paths: dict[str, str]
    # the directories, opened once: a file is then opened relative to its directory's fd,
    # without walking the whole cgroupfs path each time
    _dirfds: dict[str, int] = field(default_factory=dict, repr=False)
    # the files read again and again (the end report, the sampling): kept open and read
    # with pread, one syscall each, on the request's path (see keep_open)
    _files: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)

    def _at(self, ctrl: str) -> int | None:
        d = self.paths.get("unified" if self.version == 2 else ctrl)
        if d is None:
            return None
        fd = self._dirfds.get(d)
        if fd is None:
            try:
                fd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return None
            self._dirfds[d] = fd
        return fd

    def _get(self, ctrl: str, file: str) -> str | None:
        fd = self._files.get((ctrl, file))
        if fd is not None:
            try:
                return read_fd(fd)
            except OSError:
                return None
        at = self._at(ctrl)
        return None if at is None else _read(file, at)

    def keep_open(self) -> None:
        """Open the files that stats() and the sampling read, ahead of the request (a read
        is then one pread instead of open, read and close)."""
        for ctrl, file in STATS_V2 if self.version == 2 else STATS_V1:
            at = self._at(ctrl)
            if at is None or (ctrl, file) in self._files:
                continue
            with contextlib.suppress(OSError):  # absent on this host: read as None
                self._files[(ctrl, file)] = os.open(file, os.O_RDONLY | os.O_CLOEXEC, dir_fd=at)

    def close(self) -> None:
        for fd in (*self._dirfds.values(), *self._files.values()):
            os.close(fd)
        self._dirfds.clear()
        self._files.clear()

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in sorted(set(self.paths.values()))]

    def attach(self, pid: int) -> None:
        for d in sorted(set(self.paths.values())):
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def set_limits(self, limits: CgroupLimits) -> None:
        if self.version == 2:
            if limits.memory_bytes is not None:
                self._set("memory", "memory.max", str(limits.memory_bytes))
                self._set("memory", "memory.swap.max", "0", optional=True)
            if limits.pids is not None:
                self._set("pids", "pids.max", str(limits.pids))
            if limits.cpu_bandwidth is not None:
                quota, period = limits.cpu_bandwidth
                self._set("cpu", "cpu.max", f"{quota} {period}")
            return
        if limits.memory_bytes is not None:
            # v1 requires memory <= memory+swap at every step: raise memsw first when
            # growing, lower memory first when shrinking
            mem, memsw = "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"
            try:
                self._set("memory", mem, str(limits.memory_bytes))
                self._set("memory", memsw, str(limits.memory_bytes), True)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._set("memory", memsw, str(limits.memory_bytes), True)
                self._set("memory", mem, str(limits.memory_bytes))
        if limits.pids is not None:
            self._set("pids", "pids.max", str(limits.pids))
        if limits.cpu_bandwidth is not None:
            quota, period = limits.cpu_bandwidth
            self._set("cpu", "cpu.cfs_period_us", str(period), True)
            self._set("cpu", "cpu.cfs_quota_us", str(quota), True)

    def _set(self, ctrl: str, file: str, value: str, optional: bool = False) -> None:
        fd = self._at(ctrl)
        if fd is None:
            if optional:
                return
            raise OSError(errno.ENOENT, f"cgroup controller {ctrl} is not available")
        try:
            _write(file, value, fd)
        except OSError:
            if not optional:
                raise

    def stats(self) -> CgroupStats:
        s = CgroupStats()
        get = self._get
        if self.version == 2:
            s.memory_peak_bytes = _int(get("memory", "memory.peak"))
            s.memory_current_bytes = _int(get("memory", "memory.current"))
            ev = _keyed(get("memory", "memory.events"))
            s.oom_kills = ev.get("oom_kill", 0)
            s.pids_peak = _int(get("pids", "pids.peak"))
            s.pids_limit_hits = _keyed(get("pids", "pids.events")).get("max", 0)
            cpu = _keyed(get("cpu", "cpu.stat"))
            if "usage_usec" in cpu:
                s.cpu_usage_ns = cpu["usage_usec"] * 1000
                s.cpu_user_ns = cpu.get("user_usec", 0) * 1000
                s.cpu_system_ns = cpu.get("system_usec", 0) * 1000
            return s
        s.memory_peak_bytes = _int(get("memory", "memory.max_usage_in_bytes"))
        s.memory_current_bytes = _int(get("memory", "memory.usage_in_bytes"))
        s.oom_kills = _keyed(get("memory", "memory.oom_control")).get("oom_kill", 0)
        s.pids_limit_hits = _keyed(get("pids", "pids.events")).get("max", 0)
        # cpuacct.stat is in USER_HZ ticks, too coarse for a job of a few ms: the three
        # nanosecond files instead
        s.cpu_usage_ns = _int(get("cpuacct", "cpuacct.usage"))
        s.cpu_user_ns = _int(get("cpuacct", "cpuacct.usage_user"))
        s.cpu_system_ns = _int(get("cpuacct", "cpuacct.usage_sys"))
        return s

    def reset_counters(self) -> None:
        """Zero the peak memory and the cpu usage (cgroup v1 allows it), so the job is not
        billed for what the sandbox did while it waited in the pool."""
        if self.version == 1:
            for ctrl, file in (
                ("memory", "memory.max_usage_in_bytes"),
                ("cpuacct", "cpuacct.usage"),
            ):
                with contextlib.suppress(OSError):
                    self._set(ctrl, file, "0", optional=True)

    def pids_current(self) -> int | None:
        return _int(self._get("pids", "pids.current"))

    def cpu_usage_ns(self) -> int | None:
        if self.version == 2:
            usec = _keyed(self._get("cpu", "cpu.stat")).get("usage_usec")
            return None if usec is None else usec * 1000
        return _int(self._get("cpuacct", "cpuacct.usage"))

    def pids(self) -> list[int]:
        """The processes inside (every hierarchy holds the same ones: one read is enough)."""
        text = self._get("pids", "cgroup.procs") if "pids" in self.paths else None
        if text is None:
            out: set[int] = set()
            for d in set(self.paths.values()):
                out.update(int(x) for x in (_read(os.path.join(d, "cgroup.procs")) or "").split())
            return sorted(out)
        return [int(x) for x in text.split()]

    def destroy(self, timeout: float = 2.0) -> bool:
        """Remove the directories, killing whatever is still inside. True when gone.

        rmdir comes first: once a sandbox's pid 1 has been reaped the kernel has killed the
        rest of its pid namespace, so a cgroup is almost always empty by now."""
        self.close()
        deadline = time.monotonic() + timeout
        dirs = sorted(set(self.paths.values()))
        while True:
            left = []
            for d in dirs:
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(d)
            if not left or time.monotonic() > deadline:
                return not left
            dirs = left
            for d in dirs:
                if self.version == 2:
                    with contextlib.suppress(OSError):
                        _write(os.path.join(d, "cgroup.kill"), "1")
                for pid in (_read(os.path.join(d, "cgroup.procs")) or "").split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.005)
