"""execbox's command line: serve · run · doctor · nodes · limits · bench."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time

from execbox import host
from execbox.config import Settings
from execbox.jobs import Job, Status

EXIT_INTERNAL = 70  # EX_SOFTWARE: execbox failed, not the code


def _preflight(settings: Settings) -> None:
    msg = host.refusal(host.isolation_checks())
    if msg:
        print(msg, file=sys.stderr)
        sys.exit(EXIT_INTERNAL)


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    checks = host.all_checks(settings)
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "ok" if c.ok else ("MISSING" if c.required else "absent")
        line = f"{c.name:<{width}}  {mark:<7}  {c.detail}"
        if not c.ok:
            line += f"\n{'':<{width}}           fix: {c.fix}"
        print(line)
    refusal = host.refusal(checks)
    print()
    if refusal:
        print(refusal)
        return 1
    landlock = next(c for c in checks if c.name == "landlock")
    print(
        "execbox will isolate each execution with user, pid, mount, net, ipc, uts and cgroup "
        "namespaces, a read-only root, seccomp, cgroups, rlimits and no capabilities"
        + ("" if landlock.ok else " (no Landlock on this kernel)")
        + "."
    )
    return 0


def _read_code(args: argparse.Namespace) -> str:
    if args.code is not None:
        return args.code
    if args.file in (None, "-"):
        return sys.stdin.read()
    with open(args.file) as f:
        return f.read()


async def _run_once(settings: Settings, job: Job) -> int:
    from execbox.engine import Engine

    runtimes = (job.runtime,) if job.runtime != "command" else ("bash",)
    async with Engine(dataclasses.replace(settings, runtimes=runtimes, pool_size=1)) as engine:
        outcome = await engine.run(job)
    sys.stdout.buffer.write(outcome.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(outcome.stderr)
    if outcome.status is Status.INTERNAL_ERROR:
        print(f"execbox: {outcome.error}", file=sys.stderr)
        return EXIT_INTERNAL
    if outcome.status not in (Status.SUCCESS, Status.FAILURE):
        print(f"execbox: {outcome.status.value}", file=sys.stderr)
    if outcome.exit_code is not None:
        return outcome.exit_code
    return 128 + (outcome.signal or 0)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    _preflight(settings)
    d = settings.limits.default
    limits = dataclasses.replace(
        d,
        wall_time_s=args.timeout if args.timeout is not None else d.wall_time_s,
        memory_bytes=args.memory_mb << 20 if args.memory_mb else d.memory_bytes,
    )
    if args.lang == "command":
        job = Job(runtime="command", argv=args.argv, limits=limits)
    else:
        job = Job(runtime=args.lang, code=_read_code(args), limits=limits)
    return asyncio.run(_run_once(settings, job))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    _preflight(settings)
    import uvicorn

    from execbox.api.app import create_app

    settings = dataclasses.replace(
        settings,
        host=args.host,
        port=args.port,
        redis_url=args.redis or settings.redis_url,
        node_id=args.node_id or settings.node_id,
        advertise_url=args.advertise or settings.advertise_url,
    )
    from execbox.engine import sandbox_uid_base

    try:
        sandbox_uid_base(settings, os.getpid())
    except ValueError as exc:
        print(f"execbox: bad configuration: {exc}", file=sys.stderr)
        return 2
    if settings.redis_url:
        from execbox.cluster.link import RedisLink

        try:
            RedisLink(settings.redis_url).close()
        except ValueError as exc:
            print(f"execbox: bad configuration: {exc}", file=sys.stderr)
            return 2
    try:
        app = create_app(settings)
    except (ValueError, OSError) as exc:  # an unreadable keys file, say
        print(f"execbox: bad configuration: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
    return 0


def cmd_nodes(args: argparse.Namespace, settings: Settings) -> int:
    """The cluster's live nodes, from Redis."""
    from execbox.cluster.link import RedisDown, RedisLink
    from execbox.cluster.nodes import Registry

    url = args.redis or settings.redis_url
    if not url:
        print("execbox nodes: no Redis: pass --redis URL or set EXECBOX_REDIS_URL", file=sys.stderr)
        return 2
    try:
        link = RedisLink(url, timeout_s=2.0)
    except ValueError as exc:
        print(f"execbox nodes: {exc}", file=sys.stderr)
        return 2
    try:
        nodes = Registry(link, settings.node_ttl_s).alive()
    except RedisDown as exc:
        print(f"execbox nodes: Redis at {url} cannot be reached: {exc}", file=sys.stderr)
        return 1
    finally:
        link.close()
    if args.json:
        print(json.dumps([n.to_json() for n in nodes], indent=2))
        return 0
    rows = [("NODE", "URL", "RUNTIMES", "RUNNING", "QUEUED", "FREE", "CAPACITY", "SEEN")]
    now = time.time()
    for n in nodes:
        rows.append((n.id, n.url, ",".join(n.runtimes), str(n.running), str(n.queued),
                     str(n.free), str(n.capacity), f"{now - n.heartbeat_at:.1f}s ago"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"{len(nodes)} node(s) alive, {sum(n.free for n in nodes)} free slot(s)")
    return 0


def cmd_bench(argv: list[str]) -> int:
    """bench/full.py from the checkout: latency, throughput, memory and a 1000-execution burst
    over HTTP and through the engine, against bubblewrap and cold starts."""
    import importlib

    from execbox.config import REPO_ROOT

    bench_dir = REPO_ROOT / "bench"
    if not (bench_dir / "full.py").is_file():
        print(f"execbox bench: {bench_dir}/full.py not found (needs a checkout)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(bench_dir))
    return int(importlib.import_module("full").main(argv))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own options, parsed by bench/full.py
        return cmd_bench(argv[1:])
    parser = argparse.ArgumentParser(prog="execbox", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="start the HTTP server")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--log-level", default="info")
    p.add_argument("--redis", help="cluster mode: the Redis URL nodes share (EXECBOX_REDIS_URL)")
    p.add_argument("--node-id", help="this node's id in the cluster (EXECBOX_NODE_ID)")
    p.add_argument("--advertise", help="the URL other nodes reach this one at")
    p = sub.add_parser("nodes", help="list the cluster's live nodes (from Redis)")
    p.add_argument("--redis", help="the Redis URL (EXECBOX_REDIS_URL)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("run", help="run code in a sandbox and exit with its exit code")
    p.add_argument("--lang", choices=["python", "node", "bash", "command"], default="python")
    p.add_argument("-c", dest="code", help="the code to run")
    p.add_argument("--timeout", type=float, help="wall-clock limit in seconds")
    p.add_argument("--memory-mb", type=int, help="memory limit in MiB")
    p.add_argument("file", nargs="?", help="a file with the code, or - for stdin")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="with --lang command: the argv")
    sub.add_parser("doctor", help="report what this host allows and what execbox will use")
    p = sub.add_parser("limits", help="print the effective default limits as JSON")
    sub.add_parser("bench", help="benchmark HTTP and the engine (execbox bench --help)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"execbox: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "serve":
        args.host = args.host or settings.host
        args.port = args.port or settings.port
        return cmd_serve(args, settings)
    if args.cmd == "run":
        if args.lang == "command":
            args.argv = ([args.file] if args.file else []) + args.argv
            if not args.argv:
                parser.error("run --lang command needs an argv")
        elif args.argv:
            parser.error("unexpected arguments after the file")
        return cmd_run(args, settings)
    if args.cmd == "nodes":
        return cmd_nodes(args, settings)
    if args.cmd == "doctor":
        return cmd_doctor(args, settings)
    if args.cmd == "limits":
        print(json.dumps(dataclasses.asdict(settings.limits), indent=2))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
