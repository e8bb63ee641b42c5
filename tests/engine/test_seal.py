"""The sandbox's seal (seal.c) reports which step failed, and the zygote refuses to start
without it. What a sealed sandbox can and cannot do is tried in tests/security."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from execbox import host
from execbox.sandbox import child, libc, native, seal

SPEC = child.ChildSpec(
    root="/nonexistent-execbox-root",
    seccomp_bpf=b"",
    tmp_bytes=1 << 20,
    work_bytes=1 << 20,
    cap_last_cap=libc.cap_last_cap(),
)


def _in_child(fn) -> dict:
    """Run fn() in a forked child with mount and cgroup namespaces of its own (so no step
    that succeeds touches the host's); its result or the OSError it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        out: dict = {}
        try:
            libc.unshare(libc.CLONE_NEWNS)
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            fn()
            out = {"ok": True}
        except OSError as exc:
            out = {"errno": exc.errno, "message": str(exc)}
        finally:
            os.write(w, json.dumps(out).encode())
            os._exit(0)
    os.close(w)
    data = os.read(r, 65536)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def test_a_failed_step_is_named_with_its_errno() -> None:
    spec = dataclasses.replace(SPEC, seal=child.make_seal(SPEC))
    out = _in_child(lambda: child.setup(spec))
    assert out["errno"] == 2, out  # ENOENT: the root tree is not there
    assert "mount /nonexistent-execbox-root: No such file or directory" in out["message"]


def test_a_spec_without_a_seal_is_refused_before_any_step() -> None:
    with pytest.raises(RuntimeError, match="no seal"):
        child.setup(SPEC)


def test_without_the_library_the_error_says_how_to_build_it(monkeypatch) -> None:
    assert host.check_native().ok
    monkeypatch.setattr(native, "LIBRARY", "/nonexistent/_native.so")
    with pytest.raises(native.NativeMissing, match="make install"):
        seal.library()
    check = host.check_native()
    assert not check.ok and check.required
    refusal = host.refusal([check])
    assert refusal is not None and "C library" in refusal and "make install" in refusal


def test_a_library_without_every_function_is_refused(monkeypatch) -> None:
    """One built from older sources (before the cloner's loop was C, say) loads, but lacks
    what execbox calls: the check names what is missing."""
    import ctypes.util

    other = ctypes.util.find_library("m")  # a library that loads, and is not ours
    assert other is not None
    monkeypatch.setattr(native, "LIBRARY", os.path.join("/lib/x86_64-linux-gnu", other))
    assert os.path.exists(native.LIBRARY)
    check = host.check_native()
    assert not check.ok and check.required
    assert "execbox_seal" in check.detail and "make install" in check.fix
