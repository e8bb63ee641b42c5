"""The sandbox's filesystem.

The zygote builds one read-only root tree in its own private mount namespace, once
(`build_root`). Each sandbox then only binds that tree, adds its private /tmp, working
directory and /proc, and pivots into it (seal.c): about 0.1 ms instead of building the
whole tree per sandbox.
"""

from __future__ import annotations

import os
import shutil

from execbox.sandbox import libc
from execbox.sandbox.libc import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SLAVE,
)

SANDBOX_UID = 1000
SANDBOX_GID = 1000
WORKDIR = "/workspace"
DEVICES = ("null", "zero", "random", "urandom")
# what every sandbox mounts afresh, hiding whatever the root had there
PRIVATE_DIRS = ("/tmp", WORKDIR, "/proc", "/dev", "/var/tmp", "/run/lock")
# Files copied from the host's /etc: what the dynamic linker, libc and the runtimes read.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "localtime", "mime.types", "nsswitch.conf")
PASSWD = (
    "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
    f"sandbox:x:{SANDBOX_UID}:{SANDBOX_GID}:sandbox:/tmp:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = f"root:x:0:\nsandbox:x:{SANDBOX_GID}:\nnogroup:x:65534:\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
# An empty module in the read-only root, which an interpreter started ahead of time loads
# once while it waits, so that its loader is compiled before the job's own load (see
# node_prelude.js). Read-only, as its directory and the root are: the lookups this load
# makes (a package.json beside it or above it) can never be answered otherwise later.
WARM_MODULE = "/.execbox/warm.js"


def _bind_ro(src: str, dst: str) -> None:
    libc.mount(src, dst, None, MS_BIND | MS_REC)
    libc.mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_root(root: str, ro_paths: list[str]) -> None:
    """Build the read-only root at `root`. Call in the zygote, inside a private mount ns.

    `ro_paths` are host directories (the runtimes' homes) made visible at the same path.
    """
    # slave, not private: session workspaces mounted later on the host's shared sessions
    # directory must still appear here (nothing propagates back to the host)
    libc.mount(None, "/", None, MS_REC | MS_SLAVE)
    os.makedirs(root, exist_ok=True)
    libc.mount("execbox-root", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    for d in ("usr", "etc", "tmp", "proc", "dev", WORKDIR.lstrip("/"), "var", "run"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    for link in ("bin", "lib", "lib64", "sbin", "lib32", "libx32"):
        target = os.path.realpath("/" + link)
        if target.startswith("/usr/") and os.path.isdir(target):
            os.symlink(target.lstrip("/"), os.path.join(root, link))
    _bind_ro("/usr", os.path.join(root, "usr"))
    for path in ro_paths:
        path = os.path.realpath(path)
        if path.startswith("/usr/") or not os.path.isdir(path):
            continue
        private = next((p for p in PRIVATE_DIRS if path == p or path.startswith(p + "/")), None)
        if private:
            raise RuntimeError(
                f"{path} cannot be shown to sandboxes: each sandbox mounts its own {private} "
                "over it; install the runtime environment elsewhere (make install uses "
                "/opt/execbox/python)"
            )
        dst = os.path.join(root, path.lstrip("/"))
        os.makedirs(dst, exist_ok=True)
        _bind_ro(path, dst)
    _populate_etc(os.path.join(root, "etc"))
    warm = os.path.join(root, WARM_MODULE.lstrip("/"))
    os.makedirs(os.path.dirname(warm), mode=0o755)
    open(warm, "w").close()
    _populate_dev(os.path.join(root, "dev"))
    # /var/tmp and /run/lock are where programs look for scratch space; point them at
    # the sandbox's private /tmp rather than leaving a second writable place.
    os.symlink("/tmp", os.path.join(root, "var", "tmp"))
    os.symlink("/tmp", os.path.join(root, "run", "lock"))
    libc.mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _populate_etc(etc: str) -> None:
    for name in ETC_FILES:
        src = os.path.join("/etc", name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(etc, name))
    alt = "/etc/alternatives"
    if os.path.isdir(alt):
        os.makedirs(os.path.join(etc, "alternatives"))
        for name in os.listdir(alt):
            src = os.path.join(alt, name)
            if os.path.islink(src):
                os.symlink(os.readlink(src), os.path.join(etc, "alternatives", name))
    for name, text in (
        ("passwd", PASSWD),
        ("group", GROUP),
        ("hosts", HOSTS),
        ("hostname", "sandbox\n"),
        ("resolv.conf", ""),  # no resolver: the sandbox has no network
    ):
        with open(os.path.join(etc, name), "w") as f:
            f.write(text)


def _populate_dev(dev: str) -> None:
    for name in DEVICES:
        node = os.path.join(dev, name)
        open(node, "w").close()
        libc.mount(f"/dev/{name}", node, None, MS_BIND)
        libc.mount(None, node, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("shm", "/tmp"),  # POSIX shared memory lives in the sandbox's own /tmp
    ):
        os.symlink(target, os.path.join(dev, name))
