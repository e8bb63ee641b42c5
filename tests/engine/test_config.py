"""Settings from the environment: per-limit default, minimum and maximum."""

from __future__ import annotations

import pytest

from execbox.config import Settings


def test_limits_come_from_the_environment() -> None:
    s = Settings.from_env(
        env={
            "EXECBOX_DEFAULT_MEMORY_BYTES": "536870912",
            "EXECBOX_MAX_WALL_TIME_S": "600",
            "EXECBOX_MIN_PIDS": "4",
            "EXECBOX_DEFAULT_TMP_BYTES": "33554432",
        }
    )
    assert s.limits.default.memory_bytes == 512 << 20
    assert s.limits.maximum.wall_time_s == 600.0
    assert s.limits.minimum.pids == 4
    assert s.limits.default.tmp_bytes == 32 << 20


def test_bad_limit_settings_are_refused_with_the_variable_named() -> None:
    with pytest.raises(ValueError, match="EXECBOX_MAX_PIDS"):
        Settings.from_env(env={"EXECBOX_MAX_PIDS": "lots"})
    with pytest.raises(ValueError, match=r"wall_time_s default 30\.0 is outside"):
        Settings.from_env(env={"EXECBOX_MAX_WALL_TIME_S": "10"})


def test_sandbox_uids_never_overlap_session_uids() -> None:
    from execbox.engine import UIDS_PER_ZYGOTE, ZYGOTES_MAX, sandbox_uid_base

    span = UIDS_PER_ZYGOTE * ZYGOTES_MAX
    for session_base in (3_000_000, 100_000_000, 150_000_000):
        s = Settings(session_uid_base=session_base)
        lo, hi = s.session_uid_base, s.session_uid_base + s.session_uid_count
        for pid in range(4096 * 2):
            base = sandbox_uid_base(s, pid)
            assert base + span <= lo or base >= hi, (session_base, pid, base)
    with pytest.raises(ValueError, match="overlap the session uids"):
        sandbox_uid_base(Settings(uid_base=3_050_000), 1)
    assert sandbox_uid_base(Settings(uid_base=5_000_000), 1) == 5_000_000
