"""What this host allows, checked for real: `execbox doctor` prints it, and `serve` and
`run` refuse to start without the parts isolation cannot do without."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from execbox.config import Settings
from execbox.sandbox import landlock, libc, native
from execbox.sandbox.cgroups import CgroupDriver
from execbox.sandbox.seccomp import LibSeccompError, build_filter


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _probe_child(flags: int) -> tuple[bool, str]:
    """clone() a child into `flags` namespaces and report whether the kernel allowed it."""
    r, w = os.pipe()
    try:
        pid = libc.clone(flags)
    except OSError as exc:
        os.close(r)
        os.close(w)
        return False, str(exc)
    if pid == 0:
        os.close(r)
        os._exit(0)
    os.close(w)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0, "clone into new namespaces works"


def check_namespaces() -> Check:
    ok, detail = _probe_child(libc.NAMESPACE_FLAGS & ~libc.CLONE_NEWCGROUP)
    return Check(
        "user+pid+mount+net+ipc+uts namespaces",
        ok,
        detail,
        "enable unprivileged user namespaces: sysctl kernel.unprivileged_userns_clone=1 "
        "and user.max_user_namespaces>0; run as root (or with CAP_SYS_ADMIN)",
    )


def check_root() -> Check:
    ok = os.geteuid() == 0
    return Check(
        "root",
        ok,
        "running as root" if ok else f"running as uid {os.geteuid()}",
        "run execbox as root: it writes uid maps and cgroups for its sandboxes",
    )


def check_seccomp() -> Check:
    try:
        bpf = build_filter()
    except LibSeccompError as exc:
        return Check("seccomp (libseccomp)", False, str(exc), "apt-get install libseccomp2")
    with open("/proc/self/status") as f:
        has = any(line.startswith("Seccomp:") for line in f)
    return Check(
        "seccomp (libseccomp)",
        has,
        f"filter compiled: {len(bpf) // 8} BPF instructions",
        "a kernel built with CONFIG_SECCOMP_FILTER",
    )


def check_native() -> Check:
    name = "execbox's C library (the sandbox seal, the cloner)"
    try:
        lib = native.library()
        for symbol in native.SYMBOLS:
            getattr(lib, symbol)
    except (native.NativeMissing, OSError, AttributeError) as exc:
        return Check(name, False, str(exc), "make install (builds it with gcc)")
    return Check(name, True, f"{native.LIBRARY} loads")


def check_cgroups() -> Check:
    driver = CgroupDriver.detect("execbox")
    if driver is None:
        return Check(
            "cgroups (memory, pids)",
            False,
            "no cgroup v2 tree with memory+pids+cpu, and no v1 memory and pids hierarchies",
            "mount cgroup v2 with its controllers enabled, or the v1 memory, pids and cpuacct "
            "hierarchies; in a container, run with --cgroupns=host and a writable /sys/fs/cgroup",
        )
    ctrls = ", ".join(sorted(driver.roots))
    return Check("cgroups (memory, pids)", True, f"cgroup v{driver.version}: {ctrls}")


def check_landlock() -> Check:
    abi = landlock.abi()
    return Check(
        "landlock",
        abi > 0,
        f"ABI {abi}" if abi > 0 else "not available",
        "boot with lsm=...,landlock (CONFIG_SECURITY_LANDLOCK); execbox works without it",
        required=False,
    )


def check_runtime(settings: Settings) -> list[Check]:
    out = []
    py = settings.runtime_python
    ok = os.access(py, os.X_OK)
    detail = py
    if ok:
        res = subprocess.run(
            [py, "-I", "-c", "import numpy; print(numpy.__version__)"],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
        )
        ok = res.returncode == 0
        detail = f"{py} (numpy {res.stdout.strip()})" if ok else f"{py}: numpy missing"
    out.append(Check("python runtime", ok, detail, "make install"))
    for name, path in (("node runtime", settings.node), ("bash runtime", settings.bash)):
        ok = os.access(path, os.X_OK)
        out.append(
            Check(
                name,
                ok,
                path if ok else f"{path} not found",
                "apt-get install nodejs" if "node" in name else "apt-get install bash",
                required=False,
            )
        )
    bwrap = shutil.which("bwrap")
    out.append(
        Check(
            "bubblewrap (benchmark baseline only)",
            bool(bwrap),
            bwrap or "not found",
            "apt-get install bubblewrap",
            required=False,
        )
    )
    return out


def isolation_checks() -> list[Check]:
    return [
        check_root(),
        check_namespaces(),
        check_seccomp(),
        check_native(),
        check_cgroups(),
        check_landlock(),
    ]


def all_checks(settings: Settings) -> list[Check]:
    return [*isolation_checks(), *check_runtime(settings)]


def refusal(checks: list[Check]) -> str | None:
    """A message naming what is missing, or None when isolation is possible."""
    missing = [c for c in checks if c.required and not c.ok]
    if not missing:
        return None
    lines = ["execbox refuses to run code: this host cannot isolate it."]
    lines += [f"  - {c.name}: {c.detail}. Fix: {c.fix}" for c in missing]
    lines.append("execbox never falls back to running code without a sandbox.")
    return "\n".join(lines)
