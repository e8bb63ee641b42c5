"""How a Job becomes a process inside a sandbox: which zygote serves it, and the payload
the sandbox receives on its job pipe (see execbox.sandbox.child.run_job)."""

from __future__ import annotations

import base64
import json
import math
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from execbox.jobs import Job, Limits

CODE_DIR = "/tmp/.execbox"
NODE_HANDLER = (Path(__file__).with_name("node_handler.js")).read_text()
NODE_PRELUDE = (Path(__file__).with_name("node_prelude.js")).read_text()
BASH_PRELUDE = (Path(__file__).with_name("bash_prelude.sh")).read_text()
WORKDIR = "/workspace"

# Which zygote (and pool) serves each runtime. `command` execs an arbitrary argv, so it
# shares the bash zygote, which pre-imports nothing.
ZYGOTE_OF = {"python": "python", "node": "node", "bash": "bash", "command": "bash"}
# The second Python zygote, which also imports Settings.preload_python_heavy (numpy).
PYTHON_HEAVY = "python-heavy"


@dataclass(frozen=True)
class HeavyNames:
    """What names one of the heavy modules in a job's code: its top-level name as a word
    (`import numpy as np`, `from numpy.linalg import norm`).

    One pattern per name, each starting with the name itself: re then looks for that
    literal first, and a 10 MB body that does not name it is scanned in ~4 ms a name, not
    the ~70 ms an alternation behind a leading word boundary takes (the scan runs on the
    event loop). Files are searched as bytes, without decoding them."""

    text: tuple[re.Pattern[str], ...]
    raw: tuple[re.Pattern[bytes], ...]

    def named_in(self, code: str) -> bool:
        return any(p.search(code) for p in self.text)

    def named_in_file(self, data: bytes) -> bool:
        return any(p.search(data) for p in self.raw)


def heavy_names(heavy: tuple[str, ...]) -> HeavyNames | None:
    """The matcher for these heavy modules, or None without any."""
    names = sorted({m.split(".")[0] for m in heavy if m})
    if not names:
        return None
    # the name, then neither a word character after it nor one before it (a lookbehind
    # after the literal, so the literal still leads the pattern)
    word = [rf"{re.escape(n)}(?!\w)(?<!\w{re.escape(n)})" for n in names]
    return HeavyNames(
        tuple(re.compile(w) for w in word), tuple(re.compile(w.encode()) for w in word)
    )


def zygote_for(job: Job, heavy: HeavyNames | None) -> str:
    """The zygote to run `job` in. A Python job whose code, or one of its .py files, names a
    heavy module goes to the zygote that has it imported already (an import of numpy in a
    fresh interpreter takes ~90 ms); any other to the lean one, which costs less per
    execution. Only speed depends on this: either zygote runs any Python code, and a
    module named only in a string (`__import__("nu" + "mpy")`) is imported when the code
    runs."""
    if job.runtime != "python" or heavy is None:
        return ZYGOTE_OF[job.runtime]
    if job.code and heavy.named_in(job.code):
        return PYTHON_HEAVY
    for path, data in job.files.items():
        if path.endswith(".py") and heavy.named_in_file(data):
            return PYTHON_HEAVY
    return ZYGOTE_OF["python"]


class InvalidJob(ValueError):
    """The job cannot run as given; the message names the field and the problem."""


@dataclass(frozen=True)
class RuntimePaths:
    python_bin_dir: str  # the runtime environment's bin/, first on PATH
    node: str
    bash: str


def base_env(paths: RuntimePaths) -> dict[str, str]:
    return {
        "PATH": f"{paths.python_bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "USER": "sandbox",
        "LANG": "C.UTF-8",
        # numpy/OpenBLAS would start one thread per core and trip small pid limits
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }


def check_relative_path(path: str) -> str:
    """A file name the API received, as a normalised path below the working directory."""
    if not path or "\x00" in path:
        raise InvalidJob(f"files: invalid file name {path!r}")
    if path.startswith("/"):
        raise InvalidJob(f"files: {path!r} is absolute; file names are relative to {WORKDIR}")
    norm = posixpath.normpath(path)
    if norm == "." or norm.startswith("../") or norm == ".." or "/../" in f"/{path}/":
        raise InvalidJob(f"files: {path!r} escapes the working directory")
    return norm


def rlimits(limits: Limits) -> dict[str, int]:
    return {
        "cpu": max(1, math.ceil(limits.cpu_time_s)),
        "fsize": limits.file_size_bytes,
        "nofile": limits.fds,
        # pids.max is the binding limit: it counts in pids.events, RLIMIT_NPROC leaves no
        # trace. NPROC stays as a backstop, twice above it: the kernel counts a fork
        # against NPROC before it asks the cgroup, so in a fork bomb, with every process
        # forking at once, the count reached pids + 4 before pids.max refused one (half
        # of the fork bombs ended "failure", with no limit named).
        "nproc": 2 * limits.pids + 4,
        "stack": limits.stack_bytes,
        "core": 0,
    }


def payload(job: Job, paths: RuntimePaths) -> dict[str, Any]:
    env = base_env(paths)
    env.update(job.env)
    files = [
        {"path": check_relative_path(name), "data": base64.b64encode(data).decode(), "mode": 0o644}
        for name, data in job.files.items()
    ]
    _check_file_tree([f["path"] for f in files])
    out: dict[str, Any] = {
        "env": env,
        "files": files,
        "rlimits": rlimits(job.limits),
        "cwd": WORKDIR,
    }
    event = {} if job.event is None else job.event
    if job.handler:
        out["handler"] = {"event": event}
    if job.runtime == "python":
        out.update(mode="python", code=_code(job))
    elif job.runtime == "node" and job.handler:
        user, wrapper, event_file = (f"{CODE_DIR}/{n}" for n in ("main.js", "run.js", "event.json"))
        out.update(
            mode="exec",
            argv=[paths.node, wrapper, user, event_file],
            programs=[
                {"path": user, "text": _code(job)},
                {"path": wrapper, "text": NODE_HANDLER},
                {"path": event_file, "text": json.dumps(event)},
            ],
        )
    elif job.runtime == "node":
        main = f"{CODE_DIR}/main.js"
        out.update(
            mode="exec", argv=[paths.node, main], programs=[{"path": main, "text": _code(job)}]
        )
    elif job.runtime == "bash":
        main = f"{CODE_DIR}/main.sh"
        out.update(
            mode="exec", argv=[paths.bash, main], programs=[{"path": main, "text": _code(job)}]
        )
        out["source"] = main  # a warm bash may run it in place (see bash_prelude.sh)
        if job.handler:
            # the shell's "handler" is the script itself: the event on stdin and in $EVENT
            out["env"]["EVENT"] = json.dumps(event)
            del out["handler"]
    elif job.runtime == "command":
        if not job.argv or not job.argv[0]:
            raise InvalidJob("command: cannot be empty")
        out.update(mode="exec", argv=list(job.argv))
    else:
        raise InvalidJob(f"runtime: unknown runtime {job.runtime!r}")
    return out


def _check_file_tree(paths: list[str]) -> None:
    """A file cannot also be the directory of another: refuse it here, not in a sandbox."""
    names = set(paths)
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in names:
                raise InvalidJob(
                    f"files: {path!r} needs {parent!r} to be a directory, but it is a file"
                )


def stdin_for(job: Job) -> bytes:
    """The shell handler reads its event on stdin, unless the request gave stdin itself."""
    if job.handler and job.runtime == "bash" and not job.stdin:
        return json.dumps({} if job.event is None else job.event).encode()
    return job.stdin


def _code(job: Job) -> str:
    if job.code is None:
        raise InvalidJob(f"code: required for the {job.runtime} runtime")
    return job.code


def default_paths(runtime_python: str, node: str, bash: str) -> RuntimePaths:
    return RuntimePaths(os.path.dirname(runtime_python), node, bash)
