"""Sessions: a workspace that persists across the executions of one session_id.

Each workspace is a sparse ext4 image, loop-mounted under the sessions directory: its size
is the quota, enforced by the filesystem (ENOSPC), and it survives server restarts. The
sessions directory is a shared mount, so the zygotes (which hold it as a slave) see every
workspace mounted after they started. A session keeps one outside uid for its life, so
files written by one execution belong to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from execbox.sandbox import libc, safepath
from execbox.store.sqlite import SessionRow, Store

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_ARTIFACTS = 1000
MIN_FREE_FOR_NEW = 4 << 20  # mkfs and the first writes of a sparse workspace need room


class SessionError(ValueError):
    """A session request that cannot be honoured; the message says why."""

    def __init__(self, message: str, storage: bool = False) -> None:
        super().__init__(message)
        self.storage = storage  # the host's disk, not the request, is the problem


@dataclass(frozen=True)
class SessionConfig:
    root: str  # the sessions directory
    uid_base: int
    uid_count: int
    quota_bytes: int
    idle_ttl_s: float


@dataclass(frozen=True)
class Workspace:
    id: str
    uid: int
    path: str  # the mounted workspace on the host


def check_id(session_id: str) -> str:
    if not SESSION_ID.match(session_id or ""):
        raise SessionError(
            "session_id: must be 1-128 characters of letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return session_id


def _is_mountpoint(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


class Sessions:
    def __init__(self, store: Store, cfg: SessionConfig) -> None:
        self.store = store
        self.cfg = cfg
        self.root = os.path.realpath(cfg.root)
        self._locks: dict[str, asyncio.Lock] = {}
        self._mounting = threading.Lock()  # see _mount

    def prepare(self) -> None:
        """Make the sessions directory a shared mount. Call before the zygotes start."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        if not _is_mountpoint(self.root):
            libc.mount(self.root, self.root, None, libc.MS_BIND)
        libc.mount(None, self.root, None, 1 << 20)  # MS_SHARED
        for sid in self.store.all_sessions():  # remount what a restart left unmounted
            with contextlib.suppress(Exception):
                self._mount(self.store.get_session(sid))  # type: ignore[arg-type]

    def lock(self, session_id: str) -> asyncio.Lock:
        return self._locks.setdefault(session_id, asyncio.Lock())

    # ---- lifecycle -----------------------------------------------------------------------

    def _paths(self, session_id: str) -> tuple[str, str]:
        base = os.path.join(self.root, session_id)
        return os.path.join(base, "image.ext4"), os.path.join(base, "workspace")

    def _mount(self, row: SessionRow) -> str:
        image, mnt = self._paths(row.id)
        if _is_mountpoint(mnt):
            return mnt
        # One at a time: `mount -o loop` picks a free loop device and then binds it, and two
        # at once (two new sessions, each in a worker thread) could pick the same one: one
        # failed "already mounted or mount point busy". And two first requests for one new
        # session (a run and an upload) must not both make its image.
        with self._mounting:
            if _is_mountpoint(mnt):  # mounted meanwhile, by another request for it
                return mnt
            os.makedirs(mnt, mode=0o700, exist_ok=True)
            if not os.path.exists(image):
                free = shutil.disk_usage(os.path.dirname(image)).free
                if free < MIN_FREE_FOR_NEW:
                    raise SessionError(
                        f"no space left for a new session workspace: {free} bytes free in "
                        f"{self.root}",
                        storage=True,
                    )
                with open(image, "wb") as f:
                    f.truncate(row.quota_bytes)
                _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
                      "-E", f"root_owner={row.uid}:{row.uid}", image])  # fmt: skip
            _run(["mount", "-o", "loop,nosuid,nodev", image, mnt])
            os.chown(mnt, row.uid, row.uid)
            os.chmod(mnt, 0o755)
            lost = os.path.join(mnt, "lost+found")
            if os.path.isdir(lost):
                with contextlib.suppress(OSError):
                    os.rmdir(lost)
        return mnt

    def ensure(self, session_id: str) -> Workspace:
        check_id(session_id)
        row = self.store.create_session(
            session_id, self.cfg.uid_base, self.cfg.uid_count, self.cfg.quota_bytes
        )
        return Workspace(row.id, row.uid, self._mount(row))

    def get(self, session_id: str) -> Workspace | None:
        row = self.store.get_session(check_id(session_id))
        if row is None:
            return None
        return Workspace(row.id, row.uid, self._mount(row))

    def touch(self, session_id: str) -> None:
        self.store.touch_session(session_id)

    def delete(self, session_id: str) -> bool:
        row = self.store.get_session(check_id(session_id))
        if row is None:
            return False
        image, mnt = self._paths(session_id)
        if _is_mountpoint(mnt):
            _run(["umount", "-l", mnt])
        shutil.rmtree(os.path.dirname(image), ignore_errors=True)
        self.store.delete_session(session_id)
        self._locks.pop(session_id, None)
        return True

    def gc(self, now: float | None = None) -> list[str]:
        """Remove sessions idle for longer than the configured lifetime."""
        now = time.time() if now is None else now
        gone = []
        for sid in self.store.idle_sessions(now - self.cfg.idle_ttl_s):
            lock = self._locks.get(sid)
            if lock is not None and lock.locked():
                continue  # in use right now
            if self.delete(sid):
                gone.append(sid)
        return gone

    def info(self, ws: Workspace) -> dict[str, Any]:
        row = self.store.get_session(ws.id)
        assert row is not None
        st = os.statvfs(ws.path)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        return {
            "session_id": ws.id,
            "state": "busy" if self.lock(ws.id).locked() else "idle",
            "size_bytes": used,
            "quota_bytes": row.quota_bytes,
            "files": len(snapshot(ws.path)),
            "created_at": row.created_at,
            "last_used": row.last_used,
            "expires_at": row.last_used + self.cfg.idle_ttl_s,
        }


def _run(argv: list[str]) -> None:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise SessionError(f"{argv[0]} failed: {res.stderr.strip() or res.returncode}")


# ---- files and artifacts --------------------------------------------------------------------


def snapshot(root: str) -> dict[str, tuple[int, int, int]]:
    """path -> (size, mtime_ns, inode) of every regular file, without following links."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(full, root)] = (st.st_size, st.st_mtime_ns, st.st_ino)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


def _sha256(root: str, rel: str) -> str | None:
    try:
        fd = safepath.open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
    return h.hexdigest()


def artifacts(root: str, before: dict[str, tuple[int, int, int]]) -> list[dict[str, Any]]:
    """Files an execution created or changed, with size, sha256 and MIME type."""
    after = snapshot(root)
    changed = sorted(p for p, meta in after.items() if before.get(p) != meta)[:MAX_ARTIFACTS]
    return [
        {
            "path": p,
            "size": after[p][0],
            "sha256": _sha256(root, p),
            "mime_type": mimetypes.guess_type(p)[0] or "application/octet-stream",
            "created": p not in before,
        }
        for p in changed
    ]


def list_files(root: str) -> list[dict[str, Any]]:
    return [
        {"path": p, "size": size, "modified": mtime / 1e9}
        for p, (size, mtime, _) in sorted(snapshot(root).items())
    ]


def resolve_rel(path: str) -> str:
    """A file path from a URL, checked: relative, no '..', no empty parts."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or "\x00" in path
    ):
        raise SessionError(f"path: {path!r} is not a plain relative path inside the workspace")
    return path


def read_file(ws: Workspace, rel: str, limit: int) -> bytes:
    return safepath.read_beneath(ws.path, resolve_rel(rel), limit)


def write_file(ws: Workspace, rel: str, data: bytes) -> None:
    safepath.write_beneath(ws.path, resolve_rel(rel), data, ws.uid, ws.uid)


def delete_file(ws: Workspace, rel: str) -> None:
    safepath.unlink_beneath(ws.path, resolve_rel(rel))


def used_bytes(root: str) -> int:
    st = os.statvfs(root)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


__all__ = ["Path", "SessionConfig", "SessionError", "Sessions", "Workspace"]
