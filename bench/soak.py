"""Soak: mixed load, normal and abusive, across the three dialects, against a real server.

It starts `execbox serve` on a free loopback port, warms it up, samples the server's open
fds, threads and memory and the host's process and cgroup counts, runs the load for
--seconds, drains, samples again, and fails (exit 1) when anything grew beyond noise.
It prints throughput and error counts. Requests go to 127.0.0.1 only, bounded in time.

    .venv/bin/python bench/soak.py --seconds 600
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx

# (name, method, path, body): each a request a real client sends
NORMAL = [
    ("zb-python", "/v1/exec", {"code": "print(sum(range(100)))"}),
    ("zb-node", "/v1/exec", {"code": "console.log(6*7)", "language": "node"}),
    ("zb-numpy", "/v1/exec", {"code": "import numpy; print(numpy.arange(10).sum())"}),
    ("faber-echo", "/execute", {"tasks": [{"command": "echo", "args": ["hi"]}]}),
    ("faber-files", "/execute", {"tasks": [{"command": "python", "args": ["m.py"],
                                            "files": {"m.py": "print('f')"}}]}),
]  # fmt: skip
ABUSIVE = [
    ("fork-bomb", "/v1/exec", {"code": "import os\nwhile True:\n    os.fork()",
                               "timeout_seconds": 2}),
    ("memory-bomb", "/v1/exec", {"code": "x = []\nwhile True: x.append(bytearray(1 << 24))",
                                 "timeout_seconds": 5}),
    ("busy-loop", "/v1/exec", {"code": "while True: pass", "timeout_seconds": 1}),
    ("output-flood", "/execute", {"tasks": [{"command": "yes", "resource_limits":
                                             {"max_output_size": 100000}}]}),
    ("stderr-flood", "/v1/exec", {"code": "import sys\nwhile True: sys.stderr.write('x' * 9999)",
                                  "timeout_seconds": 2}),
]  # fmt: skip


def executor_body() -> dict[str, object]:
    return {
        "execution_id": "soak-" + secrets.token_hex(8),
        "session_id": f"soak-{random.randrange(4)}",
        "code": "def handler(e):\n    open('n', 'a').write('x')\n    return e",
        "language": "python",
        "event": {"n": 1},
        "timeout": 10,
    }


@dataclass
class Sample:
    fds: int
    threads: int
    rss_kb: int
    sandbox_procs: int
    cgroups: int


def sample(pid: int) -> Sample:
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines())
    cgroups = 0
    for ctrl in ("memory", "pids"):
        base = f"/sys/fs/cgroup/{ctrl}/execbox/{pid}"
        if os.path.isdir(base):
            cgroups += sum(len(d) for _, d, _ in os.walk(base))
    return Sample(
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(status["Threads"]),
        rss_kb=int(status["VmRSS"].split()[0]),
        sandbox_procs=_procs_below(f"/sys/fs/cgroup/pids/execbox/{pid}"),
        cgroups=cgroups,
    )


def _procs_below(tree: str) -> int:
    """Processes in the server's cgroups: its sandboxes, pooled or running or leaked."""
    n = 0
    for dirpath, _dirs, _files in os.walk(tree):
        with contextlib.suppress(OSError), open(os.path.join(dirpath, "cgroup.procs")) as f:
            n += len(f.read().split())
    return n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(state: str, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, EXECBOX_STATE_DIR=state, EXECBOX_OPEN_MODE="true",
               EXECBOX_RATE_LIMIT="100000/second")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "execbox.cli", "serve", "--port", str(port),
         "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("soak: the server did not start")


def worker(url: str, stop: float, counts: Counter[str], lock: threading.Lock) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < stop:
            roll = random.random()
            if roll < 0.15:
                name, path, body = random.choice(ABUSIVE)
            elif roll < 0.35:
                name, path, body = "executor-session", "/execute", executor_body()
            else:
                name, path, body = random.choice(NORMAL)
            try:
                r = client.post(path, json=body)
                key = f"{name} {r.status_code}"
            except httpx.HTTPError as exc:
                key = f"{name} {type(exc).__name__}"
            with lock:
                counts[key] += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args(argv)
    state = tempfile.mkdtemp(prefix="execbox-soak-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(state, port)
    try:
        counts: Counter[str] = Counter()
        lock = threading.Lock()
        worker(url, time.monotonic() + 3, Counter(), lock)  # warm-up
        time.sleep(2)
        before = sample(proc.pid)
        t0 = time.monotonic()
        stop = t0 + args.seconds
        threads = [
            threading.Thread(target=worker, args=(url, stop, counts, lock))
            for _ in range(args.clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        time.sleep(3)  # let pools shrink and exits settle
        after = sample(proc.pid)
        alive = httpx.get(f"{url}/v1/health", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(
            f"grep -o ' {state}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l",
            shell=True,
            check=False,
        )
    total = sum(counts.values())
    errors = {k: v for k, v in counts.items() if k.split()[-1] not in ("200", "202")}
    print(f"soak: {total} requests in {elapsed:.0f}s = {total / elapsed:.1f}/s, "
          f"{args.clients} clients")  # fmt: skip
    for key, n in sorted(counts.items()):
        print(f"  {key:<32} {n}")
    print(f"  before: {before}\n  after:  {after}")
    problems = []
    if not alive:
        problems.append("the server is not healthy at the end")
    if after.fds > before.fds + 16:
        problems.append(f"server fds grew {before.fds} -> {after.fds}")
    if after.threads > before.threads + 8:
        problems.append(f"server threads grew {before.threads} -> {after.threads}")
    if after.rss_kb > before.rss_kb * 1.5 + 20_000:
        problems.append(f"server memory grew {before.rss_kb} -> {after.rss_kb} kB")
    if after.sandbox_procs > before.sandbox_procs + 16:
        problems.append(f"sandbox processes grew {before.sandbox_procs} -> {after.sandbox_procs}")
    if after.cgroups > before.cgroups + 16:
        problems.append(f"cgroups grew {before.cgroups} -> {after.cgroups}")
    if errors:
        problems.append(f"requests that failed: {errors}")
    for p in problems:
        print("FAIL:", p)
    print("soak: ok" if not problems else "soak: failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
