"""A real cluster for the tests: Debian's redis-server on a loopback port, and execbox
nodes as separate `execbox serve` processes, each with its own state directory."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.mounts import unmount_below
from tests.ports import free_port

KEYS = [f"key-{i:02d}" for i in range(40)]
RATE = "300/minute"
POLL_KEYS = KEYS[20:]  # polling for results has budgets of its own


def wait_until(predicate, timeout: float, what: str, step: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


@dataclass
class Redis:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            pytest.fail("redis-server is not installed: `make install` installs it")
        self.proc = subprocess.Popen(
            [
                redis_server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def pong() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(pong, 10, "redis-server to answer")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None


@dataclass
class Node:
    name: str
    port: int
    state: Path
    redis_url: str
    keys_file: Path
    index: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    pids: list[int] = field(default_factory=list)  # every server process it has been

    def __post_init__(self) -> None:
        self.log = self.state.parent / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            "PATH": os.environ["PATH"],
            "EXECBOX_STATE_DIR": str(self.state),
            "EXECBOX_API_KEYS_FILE": str(self.keys_file),
            "EXECBOX_RATE_LIMIT": RATE,
            "EXECBOX_MAX_CONCURRENCY": "2",
            "EXECBOX_RUNTIMES": "python",
            "EXECBOX_POOL_SIZE": "1",
            "EXECBOX_SESSION_UID_BASE": str(6_000_000 + self.index * 10_000),
            "EXECBOX_NODE_ID": self.name,
            "EXECBOX_HEARTBEAT_S": "0.3",
            "EXECBOX_NODE_TTL_S": "1.5",
            "EXECBOX_LEASE_S": "2",
        }
        self.state.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - the server's, for a failing test to show
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "execbox.cli",
                "serve",
                "--port",
                str(self.port),
                "--redis",
                self.redis_url,
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=out,
            stderr=out,
        )
        self.pids.append(self.proc.pid)

    def wait_ready(self) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"node {self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60, f"node {self.name} to start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


@dataclass
class Cluster:
    redis: Redis
    nodes: dict[str, Node]

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture(scope="package")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    redis = Redis(free_port(), tmp_path_factory.mktemp("redis"))
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: Redis) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    keys = base / "keys"
    keys.write_text(json.dumps(KEYS))
    redis = redis_server
    nodes = {
        name: Node(name, free_port(), base / name / "state", redis.url, keys, i)
        for i, name in enumerate(("node-a", "node-b", "node-c"))
    }
    try:
        for n in nodes.values():
            n.start()
        for n in nodes.values():
            n.wait_ready()
        yield Cluster(redis, nodes)
    finally:
        for n in nodes.values():
            n.stop()
        for n in nodes.values():
            unmount_below(str(n.state))
    # nothing of any node is left on the host, the one killed with SIGKILL included
    for n in nodes.values():
        for pid in n.pids:
            assert leftovers(pid) == [], f"{n.name} (pid {pid}) left {leftovers(pid)}"


def leftovers(server_pid: int) -> list[str]:
    """The cgroups and processes a server with this pid left behind."""
    tree = f"execbox/{server_pid}"  # below each v1 hierarchy, or the v2 root
    found = glob.glob(f"/sys/fs/cgroup/*/{tree}") + glob.glob(f"/sys/fs/cgroup/{tree}")
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"execbox/{server_pid}/".encode() in cmd:
            found.append(f"process {proc.name}")
    return found
