"""A short run of `make soak` inside `make test`: mixed normal and abusive load against a
real server, and no growth in fds, threads, memory, processes or cgroups."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def test_short_soak_leaks_nothing() -> None:
    path = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("soak", path)
    assert spec and spec.loader
    soak = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = soak  # dataclasses look their module up there
    spec.loader.exec_module(soak)
    assert soak.main(["--seconds", "15", "--clients", "6"]) == 0
