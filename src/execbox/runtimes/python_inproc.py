"""Runs Python code inside the sandbox, in the interpreter the zygote already initialised.

This is what `python -c CODE` does, without paying for a new interpreter (7 ms cold, 90 ms
with numpy): fresh __main__, sys.argv, std streams on the sandbox's pipes, SystemExit and
uncaught exceptions mapped to exit codes, non-daemon threads and atexit handlers honoured.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import inspect
import io
import json
import os
import sys
import threading
import time
import traceback
import types
from typing import Any

FD_EVIDENCE_S = 0.12  # over two of the zygote's sampling periods


def _stream(fd: int, mode: str, line_buffering: bool, errors: str) -> io.TextIOWrapper:
    raw = io.FileIO(fd, mode, closefd=False)
    buffered: io.BufferedIOBase = (
        io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)  # type: ignore[arg-type]
    )
    return io.TextIOWrapper(
        buffered, encoding="utf-8", errors=errors, line_buffering=line_buffering
    )


def _errors(stream: Any, default: str) -> str:
    """The error handler the interpreter chose for this stream at its start, from its
    locale (surrogateescape in C.UTF-8, the sandbox's): what `python -c` would have."""
    return getattr(stream, "errors", None) or default


def reseed() -> None:
    """Every sandbox is a copy of one zygote: without this, numpy's global generator would
    hand the same "random" numbers to every execution. (The random module reseeds itself
    through its own at-fork hook, which the cloner runs: forkhooks.py.) And threading's
    record of the main thread's native id, set in the zygote (its at-fork hook leaves it),
    would show the code a host tid."""
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        np_random.seed()
    threading.main_thread()._set_native_id()  # type: ignore[attr-defined]


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def _error(exc: BaseException, tb: types.TracebackType | None) -> dict[str, str]:
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
    }


def _call_handler(main: types.ModuleType, event: Any) -> tuple[dict[str, Any] | None, int]:
    """Call main.handler(event) if the code defined one. (result message, exit status)."""
    fn = main.__dict__.get("handler")
    if not callable(fn):
        return None, 0
    try:
        value = fn(event)
        if inspect.isawaitable(value):
            import asyncio

            value = asyncio.run(_await(value))
    except BaseException as exc:
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        traceback.print_exception(type(exc), exc, tb)
        return {"ok": False, "error": _error(exc, tb)}, 1
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        msg = f"the handler's return value cannot be serialized to JSON: {exc}"
        print(msg, file=sys.stderr)
        return {
            "ok": False,
            "error": {"type": type(exc).__name__, "message": msg, "traceback": ""},
        }, 1
    return {"ok": True, "value": value}, 0


async def _await(value: Any) -> Any:
    return await value


def _send_result(fd: int, msg: dict[str, Any]) -> None:
    data = memoryview(json.dumps(msg, allow_nan=False).encode())
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(fd, data) :]
    with contextlib.suppress(OSError):
        os.close(fd)


def prepare(filename: str = "<string>", argv: list[str] | None = None) -> types.ModuleType:
    """Everything that does not depend on the job, done while the sandbox waits in the
    pool: these first writes to inherited memory cost copy-on-write faults, which are
    better paid before a request than during it."""
    main = _install(filename, argv)
    reseed()
    return main


def _install(filename: str, argv: list[str] | None) -> types.ModuleType:
    stdin, stdout = _errors(sys.__stdin__, "strict"), _errors(sys.__stdout__, "strict")
    stderr = _errors(sys.__stderr__, "backslashreplace")
    sys.stdin = sys.__stdin__ = _stream(0, "r", False, stdin)
    sys.stdout = sys.__stdout__ = _stream(1, "w", False, stdout)
    sys.stderr = sys.__stderr__ = _stream(2, "w", True, stderr)
    sys.argv = argv or ["-c"]
    sys.path[0:0] = [""]
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = __builtins__
    main.__dict__["__file__"] = filename
    sys.modules["__main__"] = main
    return main


def prebuild() -> types.ModuleType:
    """What prepare() does that is the same in every sandbox, done once, in the process the
    sandboxes are cloned from: each sandbox then finds its std streams, argv, path and
    __main__ made, in memory it shares, instead of building them itself (measured: ~50
    copy-on-write faults and the io machinery's first run, in every sandbox). Only the
    reseeding, which must differ, is left to the sandbox (reseed).

    The streams are made on fds 0-2 while those are a pipe, as they are in a sandbox: what
    io learns of its fd when a stream is made (seekable or not, its position) is then true
    of the sandbox's own pipes too, which will take the same numbers. The caller's fds 0-2
    are put back after."""
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    r, w = os.pipe()
    try:
        for fd, end in ((0, r), (1, w), (2, w)):
            os.dup2(end, fd, inheritable=True)
        return _install("<string>", None)
    finally:
        for fd, old in enumerate(saved):
            os.dup2(old, fd, inheritable=True)
            os.close(old)
        os.close(r)
        os.close(w)


def run(
    code: str,
    main: types.ModuleType | None = None,
    filename: str = "<string>",
    handler: dict[str, Any] | None = None,
    result_fd: int = -1,
) -> int:
    """Run `code` as __main__ (then its handler(event), when asked) and return the exit
    status; never raises. The handler's result goes to `result_fd`, never to stdout."""
    main = main or prepare(filename)
    status = 0
    emfile = False
    result: dict[str, Any] | None = None
    try:
        compiled = compile(code, filename, "exec")
        exec(compiled, main.__dict__)
        if handler is not None:
            result, status = _call_handler(main, handler.get("event"))
    except SystemExit as exc:
        status = _exit_code(exc)
    except BaseException as exc:
        tb = exc.__traceback__
        # drop our own frame so the traceback starts at the user's code, as python -c does
        traceback.print_exception(type(exc), exc, tb.tb_next if tb else None)
        status = 1
        emfile = _caused_by_emfile(exc)
        if handler is not None:
            result = {"ok": False, "error": _error(exc, tb.tb_next if tb else None)}
    if handler is not None:
        _send_result(result_fd, result or {"ok": True, "value": None, "no_handler": True})
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]  # join non-daemon threads
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            if status == 0:
                status = 120  # what CPython exits with when it cannot flush stdout
    if emfile:
        # The kernel counts EMFILE nowhere. Keep the full fd table open a little longer,
        # so the zygote's 50 ms sampling sees it: that is the evidence of the fd limit.
        time.sleep(FD_EVIDENCE_S)
    return status


def _caused_by_emfile(exc: BaseException | None) -> bool:
    """Did the kernel refuse a file descriptor (EMFILE) anywhere in this exception chain?"""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def exit_with(status: int) -> None:
    os._exit(status)
