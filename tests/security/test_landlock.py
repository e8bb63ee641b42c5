"""Landlock as its own layer: with mounts out of the picture, a process restricted by
execbox's ruleset can write only where the ruleset says."""

from __future__ import annotations

import os

from execbox.sandbox import landlock, libc


def test_landlock_confines_writes_to_the_allowed_directories(tmp_path) -> None:
    version = landlock.abi()
    assert version >= 1, "this kernel offers Landlock (execbox doctor says so)"
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child restricts itself, as a sandbox does
        os.close(r)
        res = []
        try:
            libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
            landlock.restrict(version, read_only=["/"], writable=[str(allowed)], devices=[])
            for target in (allowed / "f", other / "f", tmp_path / "f"):
                try:
                    target.write_text("x")
                    res.append("written")
                except OSError as exc:
                    res.append(exc.errno)
            res.append(len(os.listdir("/usr")) > 0)  # reading stays allowed
        finally:
            os.write(w, repr(res).encode())
            os._exit(0)
    os.close(w)
    data = os.read(r, 4096).decode()
    os.waitpid(pid, 0)
    assert data == "['written', 13, 13, True]"  # EACCES outside the allowed directory
    assert not (other / "f").exists()
