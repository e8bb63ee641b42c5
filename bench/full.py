"""Full benchmark: execbox over HTTP and its engine, against bubblewrap and cold starts.

One run, all side by side (these machines are noisy: only numbers taken in one run are
compared, and the table prints ratios):

- latency p50/p99 of Python `print(1+1)`, Python with numpy, Node `console.log(1+1)` and
  bash `echo hi`: over HTTP (POST /v1/exec; bash through the Faber POST /execute), through
  the engine in this process, one bubblewrap per request and cold subprocesses, all
  interleaved round-robin; plus fork_time_ms p50 from the HTTP responses;
- throughput of Python `print(1+1)` with 1, 2, 4 and 8 concurrent clients over HTTP, through
  the engine and with bubblewrap;
- memory (USS) of the idle pooled sandboxes of the python zygote, server and engine;
- 1000 concurrent `time.sleep(1)` over HTTP against a server allowing 1000 at once, with
  GET /v1/health polled every 0.2 s throughout.

It prints a table and the targets met or not, writes bench/results/bench.json and draws
bench/results/latency.png. The HTTP latency and throughput clients are a minimal
keep-alive HTTP/1.1 client on asyncio streams, so that the client's own cost (httpx's is
about a millisecond a request) does not hide the server's.

    execbox bench [--quick] [--n 120] [--seconds 2.5] [--burst 1000]
    .venv/bin/python bench/full.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

import engine as enginebench  # bench/engine.py: its baselines and helpers
from execbox.config import Settings
from execbox.engine import Engine
from execbox.jobs import Job, Status
from soak import free_port  # bench/soak.py

PYTHON = "/usr/bin/python3"  # the cold baseline: Debian's interpreter

RESULTS = Path(__file__).resolve().parent / "results"
BWRAP = enginebench.BWRAP
CLEAN_ENV = enginebench.CLEAN_ENV
percentile = enginebench.percentile
Timed = Callable[[], Awaitable[float]]

# name: (code, runtime for the engine, expected stdout)
PROGRAMS: dict[str, tuple[str, str, str]] = {
    "python": ("print(1+1)", "python", "2\n"),
    "numpy": ("import numpy; print(numpy.arange(10).sum())", "python", "45\n"),
    "node": ("console.log(1+1)", "node", "2\n"),
    "bash": ("echo hi", "bash", "hi\n"),
}
KINDS = ("http", "engine", "bwrap", "cold")
TITLES = {
    "python": "python: print(1+1)",
    "numpy": "python: import numpy; print(arange(10).sum())",
    "node": "node: console.log(1+1)",
    "bash": "bash: echo hi (HTTP: Faber /execute)",
}
TARGET_P50 = {"python": 3.0, "node": 6.0}  # ms, over HTTP
SLEEP_CODE = "import time; time.sleep(1)"


def cold_argv(name: str, runtime_python: str) -> list[str]:
    code = PROGRAMS[name][0]
    return {
        "python": [PYTHON, "-I", "-S", "-c", code],
        # numpy lives in the runtime's venv, which needs site (so no -S)
        "numpy": [runtime_python, "-I", "-c", code],
        "node": ["/usr/bin/node", "-e", code],
        "bash": ["/usr/bin/bash", "-c", code],
    }[name]


def bwrap_argv(name: str, runtime_python: str) -> list[str]:
    assert BWRAP is not None
    args = list(enginebench.BWRAP_ARGS)
    if name == "numpy":  # the runtime's venv, read-only, at its own path
        venv = os.path.dirname(os.path.dirname(runtime_python))
        args[-1:-1] = ["--ro-bind", venv, venv]
    return [BWRAP, *args, *cold_argv(name, runtime_python)]


# ---- progress ----------------------------------------------------------------------------


class Bar:
    """A textual progress bar on stderr, redrawn at most every 0.1 s."""

    def __init__(self, label: str, total: float, unit: str = "") -> None:
        self.label, self.total, self.unit = label, max(total, 1e-9), unit
        self.done = 0.0
        self.t0 = time.monotonic()
        self._drawn = self._frac = 0.0
        self.draw(force=True)

    def set(self, done: float) -> None:
        self.done = done
        self.draw()

    def add(self, k: float = 1) -> None:
        self.set(self.done + k)

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        frac = min(1.0, self.done / self.total)
        tty = sys.stderr.isatty()
        if tty and not force and now - self._drawn < 0.1:
            return
        if not tty and not force and int(frac * 10) == int(self._frac * 10):
            return  # a log, not a terminal: one line each 10 %
        self._drawn, self._frac = now, frac
        fill = int(frac * 30)
        bar = "#" * fill + "-" * (30 - fill)
        fmt = ".1f" if self.unit else ".0f"
        done = f"{self.done:{fmt}}/{self.total:{fmt}}{self.unit}"
        line = f"{self.label:<28}[{bar}] {frac * 100:5.1f}% {done} {now - self.t0:5.1f}s "
        sys.stderr.write(f"\r{line}" if tty else f"{line}\n")
        sys.stderr.flush()

    def close(self) -> None:
        self.done = self.total
        if sys.stderr.isatty() or self._frac < 1:
            self.draw(force=True)
        if sys.stderr.isatty():
            sys.stderr.write("\n")
            sys.stderr.flush()


# ---- a minimal keep-alive HTTP/1.1 client ------------------------------------------------


class Conn:
    """One keep-alive connection to the server: POST JSON, read the JSON answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        payload = await self.reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, json.loads(payload)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def http_request(name: str) -> tuple[str, dict[str, Any]]:
    code, runtime, _ = PROGRAMS[name]
    if runtime == "bash":  # ZeroBoot has no bash: the Faber dialect runs commands
        return "/execute", {"tasks": [{"command": "bash", "args": ["-c", code]}]}
    return "/v1/exec", {"code": code, "language": runtime, "timeout_seconds": 30}


def http_variant(conn: Conn, name: str, side: dict[str, list[float]] | None = None) -> Timed:
    path, body = http_request(name)
    expect = PROGRAMS[name][2]

    async def run() -> float:
        t = time.perf_counter()
        status, out = await conn.post(path, body)
        elapsed = (time.perf_counter() - t) * 1000
        res = out["results"][0] if path == "/execute" else out
        if status != 200 or res.get("stdout") != expect:
            raise SystemExit(f"http {name}: {status} {str(out)[:300]}")
        if side is not None and path == "/v1/exec":
            side.setdefault(f"fork {name}", []).append(out["fork_time_ms"])
            side.setdefault(f"server {name}", []).append(out["total_time_ms"])
        return elapsed

    return run


def engine_variant(engine: Engine, name: str) -> Timed:
    code, runtime, expect = PROGRAMS[name]

    async def run() -> float:
        t = time.perf_counter()
        out = await engine.run(Job(runtime=runtime, code=code))
        elapsed = (time.perf_counter() - t) * 1000
        if out.status is not Status.SUCCESS or out.stdout.decode() != expect:
            raise SystemExit(f"engine {name}: {out.status} {out.stdout!r} {out.stderr!r}")
        return elapsed

    return run


def subprocess_variant(argv: list[str], name: str) -> Timed:
    return enginebench.command_variant(argv, PROGRAMS[name][2].encode())


# ---- servers -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def server(extra_env: dict[str, str] | None = None) -> AsyncIterator[tuple[int, int]]:
    """`execbox serve` on a free loopback port, as bench/soak.py starts it: (pid, port)."""
    state = tempfile.mkdtemp(prefix="execbox-bench-")
    port = free_port()
    env = dict(os.environ, EXECBOX_STATE_DIR=state, EXECBOX_OPEN_MODE="true",
               EXECBOX_RATE_LIMIT="100000/second", **(extra_env or {}))  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "execbox.cli", "serve", "--port", str(port),
         "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("bench: the server did not start")
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(f"http://127.0.0.1:{port}/v1/health")
                    if r.status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield proc.pid, port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(
            f"grep -o ' {state}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l",
            shell=True,
            check=False,
        )
        shutil.rmtree(state, ignore_errors=True)


# ---- memory ------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    return out


def _uss_kib(pid: int) -> int:
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def server_zygote(server_pid: int, name: str = "python") -> int | None:
    """The server's zygote of that name (a runtime's, or python-heavy): a child whose
    cmdline runs execbox.sandbox.zygote with that name in its JSON configuration."""
    for pid in _children(server_pid):
        with contextlib.suppress(OSError, ValueError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if b"execbox.sandbox.zygote" in b" ".join(argv):
                cfg = json.loads(next(a for a in reversed(argv) if a.startswith(b"{")))
                if cfg.get("name", cfg.get("runtime")) == name:
                    return pid
    return None


def idle_sandboxes(zygote_pid: int | None) -> dict[int, int]:
    """USS in KiB of each idle pooled sandbox of a zygote (with any descendants): its
    children that are set up (their seccomp filter is loaded, the last step) and wait in a
    pipe read for their job."""
    out: dict[int, int] = {}
    if zygote_pid is None:
        return out
    for pid in _children(zygote_pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/wchan") as f:
                if "pipe_read" not in f.read():
                    continue  # starting, or running a job (or the zygote's cloner)
            with open(f"/proc/{pid}/status") as f:
                if "\nSeccomp:\t2\n" not in f.read():
                    continue  # a fresh clone waiting for its go, not yet set up
            tree, total = [pid], 0
            while tree:
                p = tree.pop()
                total += _uss_kib(p)
                tree += _children(p)
            out[pid] = total
    return out


# ---- phases ------------------------------------------------------------------------------


async def latency(
    variants: dict[str, Timed], n: int, every: Callable[[], None]
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    bar = Bar("latency (interleaved)", n * len(names))
    for _ in range(3):  # warm-up, not counted
        for fn in variants.values():
            await fn()
    for i in range(n):
        rotated = names[i % len(names) :] + names[: i % len(names)]  # fair interleaving
        for name in rotated:
            samples[name].append(await variants[name]())
            bar.add()
            await asyncio.sleep(0.002)  # let the pools refill between requests
        if i % 5 == 4:
            every()
    bar.close()
    return samples


async def throughput(make: Callable[[], Timed], clients: int, seconds: float, bar: Bar) -> float:
    fns = [make() for _ in range(clients)]
    await asyncio.gather(*(fn() for fn in fns))  # connect and warm up, not counted
    stop = time.monotonic() + seconds
    done = 0
    t = time.monotonic()
    base = bar.done

    async def client(fn: Timed) -> None:
        nonlocal done
        while time.monotonic() < stop:
            await fn()
            done += 1
            bar.set(base + min(seconds, time.monotonic() - t))

    await asyncio.gather(*(client(fn) for fn in fns))
    rate = done / (time.monotonic() - t)
    bar.set(base + seconds)
    return rate


async def burst(n: int) -> dict[str, Any]:
    """n concurrent `time.sleep(1)` over HTTP on a server allowing n at once, GET /v1/health
    polled every 0.2 s from another thread meanwhile."""
    env = {"EXECBOX_MAX_CONCURRENCY": str(n), "EXECBOX_POOL_MAX": str(max(n, 16))}
    async with server(env) as (_pid, port):
        url = f"http://127.0.0.1:{port}"
        polls: list[tuple[float, str, float]] = []  # (t, status, ms)
        stop = threading.Event()

        def poll() -> None:
            with httpx.Client(base_url=url, timeout=5) as hc:
                while not stop.is_set():
                    t = time.perf_counter()
                    try:
                        status = str(hc.get("/v1/health").status_code)
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    polls.append((time.monotonic(), status, (time.perf_counter() - t) * 1000))
                    stop.wait(max(0.0, 0.2 - (time.perf_counter() - t)))

        body = {"code": SLEEP_CODE, "timeout_seconds": 60}
        # the minimal client, one connection per request: httpx's own CPU cost, on the same
        # two cores, was a large part of what this measured
        conns = [Conn(port) for _ in range(n)]
        poller = threading.Thread(target=poll, daemon=True)
        try:
            for _ in range(3):  # warm-up
                await conns[0].post("/v1/exec", {"code": "print(1)"})
            bar = Bar(f"{n} concurrent sleep(1)", n)
            poller.start()
            await asyncio.sleep(0.5)  # a few polls before the burst
            t0 = time.monotonic()
            finished: list[float] = []
            outcomes: dict[str, int] = {}

            async def one(conn: Conn) -> None:
                try:
                    code, out = await conn.post("/v1/exec", body)
                    ok = code == 200 and out.get("exit_code") == 0
                    why = out.get("status") or str(out.get("error"))[:60]
                    key = "ok" if ok else f"{code} {why}"
                except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                    key = type(exc).__name__
                outcomes[key] = outcomes.get(key, 0) + 1
                finished.append(time.monotonic() - t0)
                bar.add()

            await asyncio.gather(*(one(c) for c in conns))
            elapsed = time.monotonic() - t0
            bar.close()
            await asyncio.sleep(0.5)  # a few polls after
        finally:
            stop.set()
            await asyncio.gather(*(c.close() for c in conns))
        if poller.ident is not None:
            await asyncio.to_thread(poller.join)
    during = [p for p in polls if t0 <= p[0] <= t0 + elapsed]
    statuses: dict[str, int] = {}
    for _, s, _ in polls:
        statuses[s] = statuses.get(s, 0) + 1
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(polls)]
    return {
        "n": n,
        "seconds_all_done": elapsed,
        "first_done_s": min(finished),
        "median_done_s": statistics.median(finished),
        "outcomes": outcomes,
        "health_polls": len(polls),
        "health_polls_during": len(during),
        "health_statuses": statuses,
        "health_all_200": bool(polls) and set(statuses) == {"200"},
        "health_max_ms": max(p[2] for p in polls),
        "health_max_gap_s": max(gaps, default=0.0),
    }


def summarize(samples: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(samples), "p99": percentile(samples, 0.99), "n": len(samples)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    # asyncio.to_thread's default pool has cpu+4 threads: too few for 8 bwrap clients
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=64))
    settings = Settings.from_env(max_concurrency=64)
    res: dict[str, Any] = {
        "n": args.n,
        "seconds": args.seconds,
        "host_cores": os.cpu_count(),
        "bwrap": BWRAP,
        "http_client": "minimal asyncio HTTP/1.1 keep-alive client (bench/full.py Conn)",
    }
    print(f"starting a server and an engine ({'quick' if args.quick else 'full'} run) ...")
    async with server() as (server_pid, port), Engine(settings) as engine:
        await asyncio.sleep(1)  # pools fill
        conn = Conn(port)
        side: dict[str, list[float]] = {}
        variants: dict[str, Timed] = {}
        for name in PROGRAMS:
            variants[f"http {name}"] = http_variant(conn, name, side)
            variants[f"engine {name}"] = engine_variant(engine, name)
            if BWRAP:
                variants[f"bwrap {name}"] = subprocess_variant(
                    bwrap_argv(name, settings.runtime_python), name
                )
            variants[f"cold {name}"] = subprocess_variant(
                cold_argv(name, settings.runtime_python), name
            )
        uss: dict[str, dict[int, int]] = {"http": {}, "engine": {}}

        def sample_memory() -> None:
            uss["http"].update(idle_sandboxes(server_zygote(server_pid)))
            z = engine.zygotes.get("python")
            uss["engine"].update(idle_sandboxes(z.proc.pid if z and z.proc else None))

        sample_memory()
        samples = await latency(variants, args.n, sample_memory)
        res["samples_ms"] = samples
        res["latency_ms"] = {k: summarize(v) for k, v in samples.items()}
        res["http_fork_time_ms"] = {k: summarize(v) for k, v in side.items() if "fork" in k}
        res["http_server_total_ms"] = {k: summarize(v) for k, v in side.items() if "server" in k}
        await conn.close()

        tput: dict[str, dict[int, float]] = {"http": {}, "engine": {}, "bwrap": {}}
        counts = (1, 2, 4, 8)
        kinds = ["http", "engine"] + (["bwrap"] if BWRAP else [])
        makers: dict[str, Callable[[], Timed]] = {
            "http": lambda: http_variant(Conn(port), "python"),
            "engine": lambda: engine_variant(engine, "python"),
            "bwrap": lambda: subprocess_variant(
                bwrap_argv("python", settings.runtime_python), "python"
            ),
        }
        bar = Bar("throughput python", len(counts) * len(kinds) * args.seconds, "s")
        for i, clients in enumerate(counts):
            order = kinds[i % len(kinds) :] + kinds[: i % len(kinds)]  # rotate who goes first
            for kind in order:
                fns: list[Timed] = []

                def make(kind: str = kind, fns: list[Timed] = fns) -> Timed:
                    fns.append(makers[kind]())
                    return fns[-1]

                tput[kind][clients] = await throughput(make, clients, args.seconds, bar)
                await asyncio.sleep(0.3)
        bar.close()
        res["throughput_per_s"] = tput
        await asyncio.sleep(3)  # idle: the pools shrink to their floor and settle
        sample_memory()
        res["idle_uss_kib"] = {k: sorted(v.values()) for k, v in uss.items()}
    res["burst"] = await burst(args.burst)
    return res


# ---- report ------------------------------------------------------------------------------


def _fmt(v: dict[str, float] | None) -> str:
    return f"{v['p50']:6.2f} /{v['p99']:7.2f}" if v else f"{'-':>15}"


def report(res: dict[str, Any]) -> list[tuple[str, str, bool]]:
    lat: dict[str, dict[str, float]] = res["latency_ms"]
    print(f"\nlatency, ms (p50 / p99), {res['n']} runs each, interleaved; ratios of p50")
    head = "".join(f"{k:>17}" for k in KINDS)
    print(f"{'program':<8}{head}{'engine/http':>13}{'bwrap/http':>12}{'cold/http':>11}")
    for name in PROGRAMS:
        cells = "".join(f"{_fmt(lat.get(f'{k} {name}')):>17}" for k in KINDS)
        h = lat[f"http {name}"]["p50"]
        ratios = "".join(
            f"{lat[f'{k} {name}']['p50'] / h:{w}.2f}x"
            if f"{k} {name}" in lat
            else f"{'-':>{w + 1}}"
            for k, w in (("engine", 12), ("bwrap", 11), ("cold", 10))
        )
        print(f"{name:<8}{cells}{ratios}")
    fork = res["http_fork_time_ms"]
    srv = res["http_server_total_ms"]
    print("\nfrom the HTTP responses, ms p50: " + ", ".join(
        f"{n}: fork {fork[f'fork {n}']['p50']:.2f} total {srv[f'server {n}']['p50']:.2f}"
        for n in ("python", "numpy", "node")
    ))  # fmt: skip

    tput: dict[str, dict[int, float]] = res["throughput_per_s"]
    print("\nthroughput, python print(1+1), executions/s")
    print(f"{'clients':<9}{'http':>9}{'engine':>9}{'bwrap':>9}{'http/bwrap':>12}")
    for c, h in tput["http"].items():
        e = tput["engine"].get(c, 0.0)
        b = tput["bwrap"].get(c)
        ratio = f"{h / b:11.2f}x" if b else f"{'-':>12}"
        print(f"{c:<9}{h:9.0f}{e:9.0f}{(b or 0):9.0f}{ratio}")

    uss = res["idle_uss_kib"]
    print("\nidle pooled python sandbox, USS (Private_Clean + Private_Dirty), MiB")
    for k, v in uss.items():
        if v:
            print(f"  {k:<7} p50 {statistics.median(v) / 1024:5.2f}  min {v[0] / 1024:5.2f}  "
                  f"max {v[-1] / 1024:5.2f}  ({len(v)} sandboxes)")  # fmt: skip
        else:
            print(f"  {k:<7} no idle sandbox found")
    b = res["burst"]
    print(f"\n{b['n']} concurrent sleep(1) over HTTP: all done in {b['seconds_all_done']:.2f} s "
          f"(first {b['first_done_s']:.2f} s, median {b['median_done_s']:.2f} s); "
          f"outcomes {b['outcomes']}")  # fmt: skip
    print(f"  GET /v1/health: {b['health_polls']} polls ({b['health_polls_during']} during), "
          f"statuses {b['health_statuses']}, slowest {b['health_max_ms']:.0f} ms, "
          f"largest gap {b['health_max_gap_s']:.2f} s")  # fmt: skip

    targets: list[tuple[str, str, bool]] = []
    hp = lat["http python"]
    targets.append(("HTTP /v1/exec python print(1+1) p50 <= 3 ms", f"{hp['p50']:.2f} ms",
                    hp["p50"] <= 3))  # fmt: skip
    targets.append(("HTTP /v1/exec python print(1+1) p99 <= 8 ms", f"{hp['p99']:.2f} ms",
                    hp["p99"] <= 8))  # fmt: skip
    f50 = fork["fork python"]["p50"]
    targets.append(("fork_time_ms p50 <= 1 ms", f"{f50:.2f} ms", f50 <= 1))
    n50 = lat["http node"]["p50"]
    targets.append(("HTTP node console.log p50 <= 6 ms", f"{n50:.2f} ms", n50 <= 6))
    t8 = tput["http"].get(8, 0.0)
    targets.append(("python throughput, 8 clients >= 400/s", f"{t8:.0f}/s", t8 >= 400))
    b8 = tput["bwrap"].get(8)
    targets.append(("  and >= 3x bubblewrap", f"{t8 / b8:.2f}x" if b8 else "no bwrap",
                    bool(b8) and t8 / b8 >= 3))  # fmt: skip
    healthy = b["health_all_200"] and b["health_polls_during"] > 0
    all_ok = b["outcomes"].get("ok", 0) == b["n"]
    burst_ok = all_ok and healthy and b["seconds_all_done"] <= 5
    health = "200 throughout" if healthy else "NOT always 200"
    value = f"{b['seconds_all_done']:.2f} s, {b['outcomes'].get('ok', 0)} ok, health {health}"
    targets.append(
        (f"{b['n']} concurrent sleep(1) done within 5 s, healthy throughout", value, burst_ok)
    )
    u = uss["http"] or uss["engine"]
    u50 = statistics.median(u) / 1024 if u else float("nan")
    targets.append(("idle pooled sandbox USS p50 <= 2 MiB", f"{u50:.2f} MiB", bool(u) and u50 <= 2))
    print("\ntargets:")
    for what, value, met in targets:
        print(f"  {what:<62} {value:<42} {'met' if met else 'NOT met'}")
    print(f"  {sum(m for *_, m in targets)} of {len(targets)} met")
    return targets


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples: dict[str, list[float]] = res["samples_ms"]
    colors = {"http": "#1f77b4", "engine": "#2ca02c", "bwrap": "#d62728", "cold": "#7f7f7f"}
    fig, axes = plt.subplots(1, len(PROGRAMS), figsize=(15, 5.5), sharey=True)
    for ax, name in zip(axes, PROGRAMS, strict=True):
        kinds = [k for k in KINDS if f"{k} {name}" in samples]
        data = [samples[f"{k} {name}"] for k in kinds]
        box = ax.boxplot(data, whis=(1, 99), showfliers=True, patch_artist=True,
                         flierprops={"markersize": 2, "alpha": 0.4}, widths=0.6)  # fmt: skip
        for patch, k in zip(box["boxes"], kinds, strict=True):
            patch.set_facecolor(colors[k])
            patch.set_alpha(0.55)
        for i, d in enumerate(data, start=1):
            p50 = statistics.median(d)
            label = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none"}
            ax.annotate(
                f"{p50:.1f}", (i + 0.32, p50), xytext=(3, 0), textcoords="offset points",
                ha="left", va="center", fontsize=8, fontweight="bold", bbox=label,
            )  # fmt: skip
        if name in TARGET_P50:
            ax.axhline(TARGET_P50[name], color="#1f77b4", linestyle="--", linewidth=1)
            ax.text(0.55, TARGET_P50[name] * 0.93, f"target p50 {TARGET_P50[name]:g} ms",
                    color="#1f77b4", fontsize=8, va="top")  # fmt: skip
        ax.set_xticks(range(1, len(kinds) + 1), kinds)
        ax.set_yscale("log")
        ax.set_title(TITLES[name], fontsize=10)
        ax.set_xlim(0.5, len(kinds) + 0.9)
        ax.grid(True, which="both", axis="y", alpha=0.3)
    axes[0].set_ylabel("latency per execution, ms (log)")
    fig.suptitle(
        f"execbox latency, {res['n']} interleaved runs per variant on {res['host_cores']} cores "
        "(boxes: p25-p75, whiskers: p1-p99, label: p50 ms)",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="execbox bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run (about 40 s)")
    ap.add_argument("--n", type=int, help="latency runs per variant (default 120, quick 20)")
    ap.add_argument("--seconds", type=float, help="per throughput point (2.5, quick 1)")
    ap.add_argument("--burst", type=int, default=1000, help="concurrent sleep(1) executions")
    ap.add_argument("--json", default=str(RESULTS / "bench.json"))
    ap.add_argument("--png", default=str(RESULTS / "latency.png"))
    args = ap.parse_args(argv)
    args.n = args.n or (20 if args.quick else 120)
    args.seconds = args.seconds or (1.0 if args.quick else 2.5)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 1000 connections, both ends
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    if not BWRAP:
        print("bubblewrap is not installed: no bwrap baseline (apt-get install bubblewrap)")
    t0 = time.monotonic()
    res = asyncio.run(main_async(args))
    res["wall_s"] = time.monotonic() - t0
    targets = report(res)
    res["targets"] = [{"target": t, "value": v, "met": m} for t, v, m in targets]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2))
    plot(res, Path(args.png))
    print(f"\nwrote {args.json} and {args.png} ({res['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
