"""Engine benchmark: execbox's engine (no HTTP) against bubblewrap and cold subprocesses.

Latency (p50, p99) of a trivial program per runtime, then throughput with 1, 2, 4 and 8
concurrent clients against bubblewrap with the same client counts. The variants are
interleaved round-robin after a warm-up: these machines are noisy, so only numbers taken
side by side in one run are compared, and the table prints ratios.

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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from execbox.config import Settings
from execbox.engine import Engine
from execbox.jobs import Job, Status

PY = "/usr/bin/python3"
BWRAP = shutil.which("bwrap")
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}
BWRAP_ARGS = [
    "--unshare-all", "--die-with-parent", "--new-session",
    "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64",
    "/lib64", "--symlink", "usr/bin", "/bin", "--tmpfs", "/tmp", "--proc", "/proc",
    "--dev", "/dev", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
    "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL", "--",
]  # fmt: skip
PROGRAMS = {
    "python": ("print(1+1)", [PY, "-I", "-S", "-c", "print(1+1)"], b"2\n"),
    "node": ("console.log(1+1)", ["/usr/bin/node", "-e", "console.log(1+1)"], b"2\n"),
    "bash": ("echo hi", ["/usr/bin/bash", "-c", "echo hi"], b"hi\n"),
}
Timed = Callable[[], Awaitable[float]]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def subprocess_variant(argv: list[str], expect: bytes) -> Timed:
    def once() -> float:
        t = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, env=CLEAN_ENV)
        elapsed = (time.perf_counter() - t) * 1000
        if out.stdout != expect:
            raise SystemExit(f"{argv[0]} printed {out.stdout!r}: {out.stderr[-300:]!r}")
        return elapsed

    async def run() -> float:
        return await asyncio.to_thread(once)

    return run


def engine_variant(
    engine: Engine, runtime: str, code: str, expect: bytes, forks: list[float]
) -> Timed:
    async def run() -> float:
        t = time.perf_counter()
        out = await engine.run(Job(runtime=runtime, code=code))
        elapsed = (time.perf_counter() - t) * 1000
        if out.status is not Status.SUCCESS or out.stdout != expect:
            raise SystemExit(f"engine {runtime}: {out.status} {out.stdout!r} {out.stderr!r}")
        forks.append(out.timings.fork_ms)
        return elapsed

    return run


async def latency(variants: dict[str, Timed], n: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(5):  # warm-up, not counted
        for fn in variants.values():
            await fn()
    for i in range(n):
        names = list(variants)
        rotated = names[i % len(names) :] + names[: i % len(names)]  # fair interleaving
        for name in rotated:
            samples[name].append(await variants[name]())
            await asyncio.sleep(0.002)  # let the pools refill between requests
    return samples


async def throughput(fn: Timed, clients: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    done = 0

    async def client() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await fn()
            done += 1

    t = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.monotonic() - t)


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    settings = Settings.from_env(max_concurrency=16)
    results: dict[str, object] = {"n": args.n, "host_cores": os.cpu_count()}
    async with Engine(settings) as engine:
        await asyncio.sleep(1)  # pools fill
        forks: list[float] = []
        variants: dict[str, Timed] = {}
        for rt, (code, argv, expect) in PROGRAMS.items():
            variants[f"engine {rt}"] = engine_variant(engine, rt, code, expect, forks)
            variants[f"cold {rt}"] = subprocess_variant(argv, expect)
            if BWRAP and rt == "python":
                variants[f"bwrap {rt}"] = subprocess_variant([BWRAP, *BWRAP_ARGS, *argv], expect)
        print(f"latency: {args.n} runs of each of {len(variants)} variants, interleaved ...")
        samples = await latency(variants, args.n)
        lat = {
            k: {"p50": statistics.median(v), "p99": percentile(v, 0.99)} for k, v in samples.items()
        }
        results["latency_ms"] = lat
        results["fork_ms_p50"] = statistics.median(forks)
        tput: dict[str, dict[int, float]] = {"engine python": {}, "bwrap python": {}}
        py = PROGRAMS["python"]
        for clients in (1, 2, 4, 8):
            print(f"throughput: {clients} clients ...")
            tput["engine python"][clients] = await throughput(
                engine_variant(engine, "python", py[0], py[2], []), clients, args.seconds
            )
            if BWRAP:
                tput["bwrap python"][clients] = await throughput(
                    subprocess_variant([BWRAP, *BWRAP_ARGS, *py[1]], py[2]), clients, args.seconds
                )
        results["throughput_per_s"] = tput
    return results


def report(res: dict[str, object]) -> None:
    lat: dict[str, dict[str, float]] = res["latency_ms"]  # type: ignore[assignment]
    print(f"\n{'variant':<16}{'p50 ms':>9}{'p99 ms':>9}   vs engine (p50)")
    for name, v in lat.items():
        rt = name.split()[-1]
        base = lat[f"engine {rt}"]["p50"]
        ratio = "" if name.startswith("engine") else f"{v['p50'] / base:6.1f}x slower"
        print(f"{name:<16}{v['p50']:9.2f}{v['p99']:9.2f}   {ratio}")
    print(f"engine fork_time_ms p50: {res['fork_ms_p50']:.2f}")
    tput: dict[str, dict[int, float]] = res["throughput_per_s"]  # type: ignore[assignment]
    print(f"\n{'clients':<9}{'engine/s':>10}{'bwrap/s':>10}{'ratio':>8}")
    for c, e in tput["engine python"].items():
        b = tput["bwrap python"].get(c)
        ratio = f"{e / b:7.1f}x" if b else "     -"
        print(f"{c:<9}{e:10.0f}{(b or 0):10.0f}{ratio}")
    p50 = lat["engine python"]["p50"]
    bw = lat.get("bwrap python", {}).get("p50")
    print("\ntargets (issue: the sandbox engine):")
    print(f"  engine p50 <= 4 ms: {p50:.2f} ms -> {'met' if p50 <= 4 else 'NOT met'}")
    if bw:
        verdict = "met" if bw / p50 >= 3 else "NOT met"
        print(f"  >= 3x faster than bubblewrap: {bw / p50:.1f}x -> {verdict}")
    else:
        print("  bubblewrap is not installed: no baseline (apt-get install bubblewrap)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "engine.json"))
    args = ap.parse_args(argv)
    res = asyncio.run(main_async(args))
    report(res)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
