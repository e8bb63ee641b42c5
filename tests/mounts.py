"""Test cleanup for what sessions leave on the host on purpose (their workspaces persist
across server restarts): unmount everything below a state directory."""

from __future__ import annotations

import os
import subprocess


def unmount_below(path: str) -> None:
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for mnt in sorted((p for p in points if p == path or p.startswith(path + "/")), reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False)
