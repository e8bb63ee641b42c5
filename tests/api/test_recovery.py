"""Kill the server with SIGKILL under load, start it again: every accepted execution is
run again or marked interrupted, and nothing of the dead server is left on the host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.mounts import unmount_below
from tests.ports import free_port


def start(state: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ["PATH"],
        "EXECBOX_STATE_DIR": state,
        "EXECBOX_OPEN_MODE": "true",
        "EXECBOX_MAX_CONCURRENCY": "1",  # one runs, the others wait: pending at the kill
        "EXECBOX_RUNTIMES": "python",
        "EXECBOX_SESSION_UID_BASE": str(7_000_000 + (os.getpid() % 1000) * 1000),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "execbox.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("server did not start")
        time.sleep(0.1)


def cgroups_of(pid: int) -> list[str]:
    return [
        d
        for ctrl in ("memory", "pids", "cpuacct", "cpu")
        if os.path.isdir(d := f"/sys/fs/cgroup/{ctrl}/execbox/{pid}")
    ]


def test_sigkill_under_load_loses_nothing(tmp_path) -> None:
    state, port = str(tmp_path / "state"), free_port()
    url = f"http://127.0.0.1:{port}"
    first = start(state, port)
    try:
        ids = ["long", "next-1", "next-2"]
        codes = ["import time; time.sleep(60)", "print('one')", "print('two')"]
        for eid, code in zip(ids, codes, strict=True):
            body = {"execution_id": eid, "session_id": "crash", "code": code,
                    "language": "python", "async": True}  # fmt: skip
            assert httpx.post(f"{url}/execute", json=body).status_code == 202
        deadline = time.monotonic() + 15
        while httpx.get(f"{url}/executions/long").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(f"{url}/info").json()["active_executions"] >= 1
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    second = start(state, port)
    try:
        deadline = time.monotonic() + 20
        while True:
            recs = {i: httpx.get(f"{url}/executions/{i}").json() for i in ids}
            if all(r["status"] not in ("pending", "running") for r in recs.values()):
                break
            assert time.monotonic() < deadline, recs
            time.sleep(0.1)
        assert recs["long"]["status"] == "interrupted"
        assert "may already have had effects" in recs["long"]["message"]
        assert (recs["next-1"].get("stdout"), recs["next-2"].get("stdout")) == ("one\n", "two\n"), (
            recs
        )
        # the dead server's cgroups were swept at start; its sandboxes are gone
        assert cgroups_of(first.pid) == []
        leftovers = subprocess.run(
            ["pgrep", "-f", "time.sleep\\(60\\)"], capture_output=True, text=True
        ).stdout.split()
        assert leftovers == []
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(15)
        unmount_below(state)
