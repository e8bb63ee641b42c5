"""One Settings object, read from EXECBOX_* environment variables (and the seeds' own names
where a dialect defines one, such as ZEROBOOT_API_KEYS_FILE or FABER_OPEN_MODE)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from execbox.jobs import Limits

REPO_ROOT = Path(__file__).resolve().parents[2]


def _env_bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class LimitRange:
    """Server-side default, minimum and maximum of each per-request limit."""

    default: Limits = field(default_factory=Limits)
    minimum: Limits = field(
        default_factory=lambda: Limits(
            wall_time_s=0.01,
            cpu_time_s=0.01,
            memory_bytes=16 << 20,
            pids=1,
            fds=8,
            output_bytes=0,
            file_size_bytes=0,
            stack_bytes=256 << 10,
            tmp_bytes=1 << 20,
            workdir_bytes=1 << 20,
        )
    )
    maximum: Limits = field(
        default_factory=lambda: Limits(
            wall_time_s=3600.0,
            cpu_time_s=3600.0,
            memory_bytes=8 << 30,
            pids=4096,
            fds=65536,
            output_bytes=64 << 20,
            file_size_bytes=1 << 30,
            stack_bytes=256 << 20,
            tmp_bytes=1 << 30,
            workdir_bytes=1 << 30,
        )
    )


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    # the interpreter of the runtime environment sandboxes use (numpy is installed there)
    runtime_python: str = "/opt/execbox/python/bin/python"
    node: str = "/usr/bin/node"
    bash: str = "/usr/bin/bash"
    max_concurrency: int = 16
    pool_size: int = 2  # each zygote's pool at start; then it follows demand
    pool_min: int = 1
    pool_max: int = 16
    uid_base: int = 0  # 0: derived from the server's pid, so servers on one host don't clash
    cgroup_prefix: str = ""  # "": execbox/<server pid>
    state_dir: str = "/var/lib/execbox"  # the SQLite store and the session workspaces
    session_quota_bytes: int = 64 << 20
    session_idle_ttl_s: float = 3600.0
    session_uid_base: int = 3_000_000
    session_uid_count: int = 100_000
    record_retention_s: float = 7 * 86400.0
    record_max_code_bytes: int = 64 << 10
    record_max_output_bytes: int = 1 << 20
    # hosts (or host:port) results may be POSTed to; "*" allows any public host
    callback_allowed_hosts: tuple[str, ...] = ()
    callback_secret: str | None = None
    callback_attempts: int = 5
    callback_backoff_s: float = 0.5
    # env_vars a request may not set: they would subvert the runtime
    blocked_env_vars: tuple[str, ...] = (
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "NODE_OPTIONS",
        "NODE_PATH",
        "BASH_ENV",
        "ENV",
        "PATH",
    )
    limits: LimitRange = field(default_factory=LimitRange)
    runtimes: tuple[str, ...] = ("python", "node", "bash")
    # imported by the zygote of every Python sandbox, so that code importing them starts at once
    preload_python: tuple[str, ...] = (
        "json",
        "re",
        "collections",
        "itertools",
        "functools",
        "math",
        "random",
        "datetime",
        "decimal",
        "fractions",
        "statistics",
        "typing",
        "dataclasses",
        "pathlib",
        "io",
        "string",
        "textwrap",
        "base64",
        "hashlib",
        "heapq",
        "bisect",
        "csv",
        "subprocess",
        "threading",
    )
    # Imported only by a second Python zygote, which runs the jobs whose code names one of
    # them (runtimes.zygote_for). numpy doubles a sandbox's memory image (17 MB instead of
    # 10), and every sandbox pays for its image at the clone and at the exit: measured,
    # 0.6 ms of cpu per execution, a tenth, for code that never imports it. Empty: one
    # Python zygote, which imports preload_python only.
    preload_python_heavy: tuple[str, ...] = ("numpy",)
    # HTTP
    max_body_bytes: int = 10 << 20
    max_batch: int = 64
    api_keys_file: str | None = None
    internal_api_token: str | None = None
    open_mode: bool = False
    metrics_open: bool = True
    rate_limit: str = "100/second"
    trusted_proxies: tuple[str, ...] = ()
    audit_log: str | None = None
    # cluster mode (all off without a Redis URL)
    redis_url: str | None = None
    node_id: str | None = None  # None: <hostname>:<port>
    advertise_url: str | None = None  # how other nodes reach this one; None: from host:port
    heartbeat_s: float = 1.0
    node_ttl_s: float = 3.0  # a node silent this long is gone
    lease_s: float = 5.0  # a running async execution's lease, renewed by its node

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for f in fields(cls):
            key = "EXECBOX_" + f.name.upper()
            if key not in env or f.name == "limits":
                continue
            raw = env[key]
            if f.type in ("int", "float"):
                try:
                    values[f.name] = int(raw) if f.type == "int" else float(raw)
                except ValueError:
                    raise ValueError(f"{key}: {raw!r} is not a valid {f.type}") from None
            elif f.type in ("bool",):
                values[f.name] = _env_bool(raw)
            elif f.type.startswith("tuple"):
                values[f.name] = tuple(x.strip() for x in raw.split(",") if x.strip())
            else:
                values[f.name] = raw
        keys = env.get("EXECBOX_API_KEYS_FILE") or env.get("ZEROBOOT_API_KEYS_FILE")
        if keys:
            values["api_keys_file"] = keys
        if env.get("INTERNAL_API_TOKEN"):
            values["internal_api_token"] = env["INTERNAL_API_TOKEN"]
        if _env_bool(env.get("EXECBOX_OPEN_MODE", "")) or _env_bool(env.get("FABER_OPEN_MODE", "")):
            values["open_mode"] = True
        limits = _limits_from_env(env)
        if limits is not None:
            values["limits"] = limits
        values.update(overrides)
        return replace(cls(), **values)  # type: ignore[arg-type]


def _limits_from_env(env: dict[str, str]) -> LimitRange | None:
    """EXECBOX_DEFAULT_<LIMIT>, EXECBOX_MIN_<LIMIT> and EXECBOX_MAX_<LIMIT> for each field of
    Limits, e.g. EXECBOX_DEFAULT_MEMORY_BYTES=536870912 or EXECBOX_MAX_WALL_TIME_S=600."""
    base = LimitRange()
    parts: dict[str, dict[str, float | int]] = {"default": {}, "minimum": {}, "maximum": {}}
    for which, prefix in (("default", "DEFAULT"), ("minimum", "MIN"), ("maximum", "MAX")):
        for f in fields(Limits):
            key = f"EXECBOX_{prefix}_{f.name.upper()}"
            if key in env:
                kind = type(getattr(base.default, f.name))
                try:
                    parts[which][f.name] = kind(float(env[key]))
                except ValueError:
                    raise ValueError(f"{key}: {env[key]!r} is not a number") from None
    if not any(parts.values()):
        return None
    rng = LimitRange(
        default=replace(base.default, **parts["default"]),
        minimum=replace(base.minimum, **parts["minimum"]),
        maximum=replace(base.maximum, **parts["maximum"]),
    )
    for f in fields(Limits):
        lo, d, hi = (getattr(x, f.name) for x in (rng.minimum, rng.default, rng.maximum))
        if not lo <= d <= hi:
            raise ValueError(
                f"limits: {f.name} default {d} is outside its configured range {lo}..{hi}"
            )
    return rng
