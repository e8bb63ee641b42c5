"""Property-based fuzzing of every place a client-chosen path meets the filesystem."""

from __future__ import annotations

import contextlib
import os
import posixpath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from execbox import sessions
from execbox.runtimes import InvalidJob, check_relative_path
from execbox.sandbox import safepath

EXAMPLES = int(os.environ.get("EXECBOX_FUZZ_EXAMPLES", "25"))
PARTS = st.sampled_from(["a", "b", "..", ".", "", "link", "up", "etc", "x y", "\x00", "€"])
PATHS = st.one_of(
    st.text(max_size=40),
    st.lists(PARTS, min_size=0, max_size=6).map("/".join),
    st.lists(PARTS, min_size=1, max_size=6).map(lambda p: "/" + "/".join(p)),
)


@given(PATHS)
@settings(max_examples=EXAMPLES * 16)
def test_job_file_names_never_escape_the_workdir(path: str) -> None:
    try:
        norm = check_relative_path(path)
    except InvalidJob as exc:
        assert str(exc).startswith("files: ")  # names the field
        return
    assert not norm.startswith("/") and "\x00" not in norm
    assert ".." not in norm.split("/")
    assert posixpath.normpath(posixpath.join("/workspace", norm)).startswith("/workspace/")


@given(PATHS)
@settings(max_examples=EXAMPLES * 16)
def test_session_file_paths_are_plain_relative_paths(path: str) -> None:
    try:
        rel = sessions.resolve_rel(path)
    except sessions.SessionError as exc:
        assert str(exc).startswith("path: ")
        return
    assert rel == path and not rel.startswith("/")
    assert all(p not in ("", ".", "..") for p in rel.split("/"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A workspace the sandbox has booby-trapped, beside a secret it must not reach."""
    base = tmp_path_factory.mktemp("planted")
    root, outside = base / "ws", base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("SECRET")
    (root / "a").mkdir()
    (root / "a" / "ok").write_text("fine")
    os.symlink(str(outside), root / "link")
    os.symlink("../outside/secret", root / "up")
    os.symlink("/etc", root / "etc")
    os.symlink(str(outside), root / "a" / "b")
    return str(root), str(outside)


@given(PATHS)
@settings(max_examples=EXAMPLES * 12, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_reads_below_a_workspace_never_leave_it(planted: tuple[str, str], path: str) -> None:
    root, _ = planted
    try:
        data = safepath.read_beneath(root, path, 1 << 16)
    except (OSError, ValueError):
        return
    # only files really below the workspace: the seed file, or one the write test made
    assert data in (b"fine", b"W")


@given(PATHS)
@settings(max_examples=EXAMPLES * 12, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_writes_below_a_workspace_never_leave_it(planted: tuple[str, str], path: str) -> None:
    root, outside = planted
    with contextlib.suppress(OSError, ValueError):
        safepath.write_beneath(root, path, b"W", os.getuid(), os.getgid())
    assert sorted(os.listdir(outside)) == ["secret"]
    with open(os.path.join(outside, "secret")) as f:
        assert f.read() == "SECRET"
    assert not os.path.exists("/etc/W")
