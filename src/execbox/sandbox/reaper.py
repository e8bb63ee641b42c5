"""The server is a child subreaper: sandboxes orphaned by a zygote that died are
reparented to it (PDEATHSIG has already killed them), and it reaps them, so a crash
never leaves zombies, whatever the host's init does."""

from __future__ import annotations

import contextlib
import os

from execbox.sandbox import libc

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)


def _children() -> set[int]:
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with (
                contextlib.suppress(OSError),
                open(f"/proc/self/task/{tid}/children") as f,
            ):
                out.update(int(p) for p in f.read().split())
    return out


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def reap_orphans(keep: set[int]) -> int:
    """Reap every zombie child except `keep` (the zygotes, which their owners wait for)."""
    reaped = 0
    for pid in _children() - keep:
        if _is_zombie(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
                reaped += 1
    return reaped
