"""Engine benchmark: execbox's engine (no HTTP) against bubblewrap and cold subprocesses.

Measures, in one run, the latency (p50, p99) of a trivial program per runtime (Python, the
headline; then Node and bash) three ways: through the engine's warm pool, through a fresh
bubblewrap sandbox per request with a comparable isolation set, and as a cold subprocess.
Then throughput of Python `print(1+1)` with 1, 2, 4 and 8 concurrent clients, engine against
bubblewrap.

Why interleaved: these machines are noisy (other jobs, CPU frequency, page cache), so running
each variant in its own block would compare different moments of the machine. After a warm-up
every variant takes one request per round, round-robin with a rotating start, so all variants
see the same noise; the throughput runs alternate engine and bubblewrap per client count.
Only numbers taken side by side in one run are compared, and the tables print ratios.

    .venv/bin/python bench/engine.py [--n 200] [--seconds 3] [--json bench/results/engine.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from execbox.config import Settings
from execbox.engine import Engine
from execbox.jobs import Job, Status

CLEAN_ENV = {"PATH": "/usr/bin:/bin"}
BWRAP = shutil.which("bwrap", path="/usr/bin:/bin") or shutil.which("bwrap")
BWRAP_ARGS = [
    "--unshare-all", "--die-with-parent", "--new-session",
    "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64",
    "/lib64", "--symlink", "usr/bin", "/bin", "--tmpfs", "/tmp", "--proc", "/proc",
    "--dev", "/dev", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
    "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL", "--",
]  # fmt: skip
RUNTIMES = ("python", "node", "bash")
CLIENTS = (1, 2, 4, 8)
WARMUP_ROUNDS = 10
TARGET_P50_MS = 4.0
TARGET_VS_BWRAP = 3.0

Timed = Callable[[], Awaitable[float]]


class BenchError(Exception):
    """Something the benchmark needs failed to run."""


@dataclass(frozen=True)
class Program:
    runtime: str
    code: str  # what the engine runs
    argv: list[str]  # the same program as a plain command
    expect: bytes


PROGRAMS = {
    "python": Program(
        "python", "print(1+1)", ["/usr/bin/python3", "-I", "-S", "-c", "print(1+1)"], b"2\n"
    ),
    "node": Program(
        "node", "console.log(1+1)", ["/usr/bin/node", "-e", "console.log(1+1)"], b"2\n"
    ),
    "bash": Program("bash", "echo hi", ["/usr/bin/bash", "-c", "echo hi"], b"hi\n"),
}


# ---- statistics -------------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * len(xs)) - 1))]


def summarize(xs: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(xs), "p99": percentile(xs, 0.99), "n": len(xs)}


# ---- variants ---------------------------------------------------------------------------------


def run_command(argv: list[str], expect: bytes) -> float:
    """Runs argv once, checks its output; the wall time in ms."""
    t = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, env=CLEAN_ENV, check=False)
    elapsed = (time.perf_counter() - t) * 1000
    if out.returncode != 0 or out.stdout != expect:
        raise BenchError(
            f"{' '.join(argv[:3])} ... exited {out.returncode}, printed {out.stdout[:200]!r} "
            f"(expected {expect!r}); stderr: {out.stderr[-300:]!r}"
        )
    return elapsed


def command_variant(argv: list[str], expect: bytes) -> Timed:
    async def run() -> float:
        return await asyncio.to_thread(run_command, argv, expect)

    return run


def engine_variant(engine: Engine, prog: Program, timings: list[dict[str, float]]) -> Timed:
    async def run() -> float:
        t = time.perf_counter()
        out = await engine.run(Job(runtime=prog.runtime, code=prog.code))
        elapsed = (time.perf_counter() - t) * 1000
        if out.status is not Status.SUCCESS or out.stdout != prog.expect:
            raise BenchError(
                f"engine {prog.runtime}: {out.status} {out.error or ''} "
                f"stdout={out.stdout[:200]!r} stderr={out.stderr[-300:]!r}"
            )
        tm = out.timings
        timings.append({"fork_ms": tm.fork_ms, "exec_ms": tm.exec_ms, "total_ms": tm.total_ms})
        return elapsed

    return run


def bwrap_argv(prog: Program) -> list[str]:
    assert BWRAP is not None
    return [BWRAP, *BWRAP_ARGS, *prog.argv]


def preflight() -> None:
    """Every baseline command runs and prints what it should, before any timing."""
    for prog in PROGRAMS.values():
        if not os.access(prog.argv[0], os.X_OK):
            raise BenchError(f"{prog.argv[0]} is not installed: needed for the {prog.runtime} runs")
        run_command(prog.argv, prog.expect)
        if BWRAP:
            run_command(bwrap_argv(prog), prog.expect)


# ---- latency ----------------------------------------------------------------------------------


async def latency(variants: dict[str, Timed], n: int) -> dict[str, list[float]]:
    """n samples of each variant, round-robin with a rotating start, after a warm-up."""
    for _ in range(WARMUP_ROUNDS):
        for fn in variants.values():
            await fn()
    samples: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for i in range(n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(await variants[name]())
            await asyncio.sleep(0.002)  # let the engine's pools refill, as between real requests
    return samples


# ---- throughput -------------------------------------------------------------------------------


async def engine_throughput(engine: Engine, clients: int, seconds: float) -> float:
    """Executions/s with `clients` asyncio tasks each looping engine.run."""
    fn = engine_variant(engine, PROGRAMS["python"], [])
    stop = time.perf_counter() + seconds
    done = 0

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await fn()
            done += 1

    t = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - t)


def command_throughput(argv: list[str], expect: bytes, clients: int, seconds: float) -> float:
    """Executions/s with `clients` threads each looping a fresh subprocess."""
    stop = time.perf_counter() + seconds
    counts = [0] * clients
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            while time.perf_counter() < stop:
                run_command(argv, expect)
                counts[i] += 1
        except BaseException as e:
            errors.append(e)

    t = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise BenchError(f"bwrap throughput: {errors[0]}")
    return sum(counts) / (time.perf_counter() - t)


async def throughput(engine: Engine, seconds: float) -> dict[str, dict[int, float]]:
    """Engine against bubblewrap per client count, alternating which goes first."""
    res: dict[str, dict[int, float]] = {"engine": {}, "bwrap": {}}
    prog = PROGRAMS["python"]
    for i, clients in enumerate(CLIENTS):
        print(f"throughput: {clients} client(s), {seconds:g} s each ...", flush=True)
        order = ["engine", "bwrap"] if i % 2 == 0 else ["bwrap", "engine"]
        for which in order:
            if which == "engine":
                res["engine"][clients] = await engine_throughput(engine, clients, seconds)
            elif BWRAP:
                res["bwrap"][clients] = await asyncio.to_thread(
                    command_throughput, bwrap_argv(prog), prog.expect, clients, seconds
                )
            await asyncio.sleep(0.5)  # pools settle
    return res


# ---- the run ----------------------------------------------------------------------------------


def build_variants(engine: Engine, timings: dict[str, list[dict[str, float]]]) -> dict[str, Timed]:
    variants: dict[str, Timed] = {}
    for rt in RUNTIMES:
        prog = PROGRAMS[rt]
        variants[f"{rt} engine"] = engine_variant(engine, prog, timings[rt])
        if BWRAP:
            variants[f"{rt} bwrap"] = command_variant(bwrap_argv(prog), prog.expect)
        variants[f"{rt} cold"] = command_variant(prog.argv, prog.expect)
    return variants


def ratios(lat: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for rt in RUNTIMES:
        base = lat[f"{rt} engine"]["p50"]
        out[rt] = {
            f"{v}/engine": lat[f"{rt} {v}"]["p50"] / base
            for v in ("bwrap", "cold")
            if f"{rt} {v}" in lat
        }
    return out


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env(pool_size=2)
    res: dict[str, Any] = {
        "n": args.n,
        "warmup_rounds": WARMUP_ROUNDS,
        "host_cores": os.cpu_count(),
        "bwrap": BWRAP,
        "bwrap_args": BWRAP_ARGS if BWRAP else None,
    }
    async with Engine(settings) as engine:
        await asyncio.sleep(1.0)  # pools fill
        timings: dict[str, list[dict[str, float]]] = {rt: [] for rt in RUNTIMES}
        variants = build_variants(engine, timings)
        print(
            f"latency: {args.n} runs of each of {len(variants)} variants, interleaved "
            f"(after {WARMUP_ROUNDS} warm-up rounds) ...",
            flush=True,
        )
        samples = await latency(variants, args.n)
        lat = {k: summarize(v) for k, v in samples.items()}
        res["latency_ms"] = lat
        res["ratios_p50"] = ratios(lat)
        res["engine_timings_ms_p50"] = {
            rt: {k: statistics.median(t[k] for t in ts[WARMUP_ROUNDS:]) for k in ts[0]}
            for rt, ts in timings.items()
        }
        res["fork_ms_p50"] = res["engine_timings_ms_p50"]["python"]["fork_ms"]
        res["throughput_per_s"] = await throughput(engine, args.seconds)
    return res


# ---- report -----------------------------------------------------------------------------------


def fmt_ratio(x: float | None) -> str:
    return f"{x:.1f}x" if x is not None else "-"


def report(res: dict[str, Any]) -> None:
    lat: dict[str, dict[str, float]] = res["latency_ms"]
    rat: dict[str, dict[str, float]] = res["ratios_p50"]
    print(f"\nlatency, n={res['n']} each ({res['host_cores']} cores)")
    print(f"{'variant':<15}{'p50 ms':>9}{'p99 ms':>9}   p50 / engine p50")
    for rt in RUNTIMES:
        for v in ("engine", "bwrap", "cold"):
            s = lat.get(f"{rt} {v}")
            if s is None:
                print(f"{rt + ' ' + v:<15}  skipped: bwrap not installed")
                continue
            r = rat[rt].get(f"{v}/engine")
            ratio = f"{v}/engine = {r:.1f}x" if r is not None else ""
            print(f"{rt + ' ' + v:<15}{s['p50']:9.2f}{s['p99']:9.2f}   {ratio}")
    print(
        "engine timings p50 (ms):  "
        + "   ".join(
            f"{rt}: fork {t['fork_ms']:.2f} exec {t['exec_ms']:.2f}"
            for rt, t in res["engine_timings_ms_p50"].items()
        )
    )

    tput: dict[str, dict[int, float]] = res["throughput_per_s"]
    print("\nthroughput, python print(1+1), executions/s")
    print(f"{'clients':<9}{'engine':>9}{'bwrap':>9}{'engine/bwrap':>14}")
    for c, e in tput["engine"].items():
        b = tput["bwrap"].get(c)
        print(f"{c:<9}{e:9.0f}{(f'{b:.0f}' if b else '-'):>9}{fmt_ratio(e / b if b else None):>14}")

    p50 = lat["python engine"]["p50"]
    vs = rat["python"].get("bwrap/engine")
    res["targets"] = {
        "engine_p50_le_4ms": p50 <= TARGET_P50_MS,
        "engine_3x_faster_than_bwrap_p50": None if vs is None else vs >= TARGET_VS_BWRAP,
    }
    print("\ntargets (from the issue), python print(1+1):")
    met = "met" if p50 <= TARGET_P50_MS else "NOT met"
    print(f"  engine p50 <= {TARGET_P50_MS:g} ms: {p50:.2f} ms -> {met}")
    if vs is None:
        print("  engine at least 3x faster than bubblewrap (p50): not measured, bwrap missing")
    else:
        met = "met" if vs >= TARGET_VS_BWRAP else "NOT met"
        print(
            f"  engine at least {TARGET_VS_BWRAP:g}x faster than bubblewrap (p50): "
            f"{vs:.1f}x -> {met}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="latency samples per variant")
    ap.add_argument("--seconds", type=float, default=3.0, help="per throughput measurement")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "engine.json"))
    args = ap.parse_args(argv)
    if args.n < 1 or args.seconds <= 0:
        ap.error("--n must be >= 1 and --seconds > 0")
    if not BWRAP:
        print(
            "bubblewrap (bwrap) is not installed: skipping the bubblewrap baseline "
            "(apt-get install bubblewrap)",
            flush=True,
        )
    started = time.perf_counter()
    try:
        preflight()
        res = asyncio.run(measure(args))
    except BenchError as e:
        print(f"bench/engine.py: FAILED: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the engine itself could not start or run
        print(f"bench/engine.py: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    res["elapsed_s"] = time.perf_counter() - started
    report(res)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nwrote {out} ({res['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
