"""The interpreter's at-fork hooks, as far as a sandbox cloned from the cloner needs them.

A sandbox is a raw clone of the cloner, so the interpreter's after-fork work is run by
hand (cloner.py). Running all of it (PyOS_AfterFork_Child) cost ~40 copy-on-write faults
and ~0.1 ms of cpu per execution, for work that changes nothing in a clone of a process
with one thread, as the cloner is: no lock can be held by another thread, the thread's
identity is the same, and the hooks of threading and logging rebuild locks and records
that are already right. What does matter is state that must differ from sandbox to
sandbox: the random module reseeds itself through its hook.

CPython keeps the registered hooks out of reach, so `record` wraps os.register_at_fork
before anything registers one, and `plan` says, for the cloner's interpreter as it is,
which hooks a clone must run; or that one is not known, and a clone must run the
interpreter's whole after-fork work, as it did before.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

# the standard library's modules that register hooks: one imported before `record` may
# have registered a hook unseen
_REGISTRANTS = ("threading", "random", "logging", "concurrent.futures.thread")
# what the interpreter's start may import that is not in the standard library and
# registers no hook: site's customisation, setuptools' .pth hook, this package
_STARTUP = ("__main__", "sitecustomize", "_distutils_hack", "execbox")

_registered: list[Callable[[], object]] = []
_builtin: Callable[..., None] | None = None
_complete = False  # nothing could register a hook before record()


def record() -> None:
    """Keep every after_in_child hook registered from now on: the zygote's first step,
    before it imports anything else."""
    global _builtin, _complete
    if _builtin is not None:
        return
    # a module imported at the interpreter's start (a .pth file's, say) that is not known
    # may have registered a hook before this: a clone then runs all of them
    _complete = not any(name in sys.modules for name in _REGISTRANTS) and all(
        name.partition(".")[0] in sys.stdlib_module_names or name.partition(".")[0] in _STARTUP
        for name in list(sys.modules)
    )
    _builtin = os.register_at_fork

    def register_at_fork(**hooks: Any) -> None:
        assert _builtin is not None
        _builtin(**hooks)  # first: it checks the arguments
        child = hooks.get("after_in_child")
        if child is not None:
            _registered.append(child)

    os.register_at_fork = register_at_fork


def restore() -> None:
    """Put os.register_at_fork back as the interpreter made it (the cloner, before its
    first clone: a sandbox's code sees the builtin)."""
    global _builtin
    if _builtin is not None:
        os.register_at_fork = _builtin
        _builtin = None


def _unneeded() -> list[object]:
    """Hooks that only redo what a clone of a one-thread process already has right."""
    out: list[object] = []
    threading = sys.modules.get("threading")
    if threading is not None:
        # new locks for the threads that survived a fork, the caller as the main thread
        out.append(getattr(threading, "_after_fork", None))
    logging = sys.modules.get("logging")
    if logging is not None:
        # new locks for the handlers: held by no one in a one-thread process
        out.append(getattr(logging, "_after_at_fork_child_reinit_locks", None))
    return out


def _reseeds() -> list[object]:
    """Hooks that make the child's own state: a clone runs them."""
    random = sys.modules.get("random")
    inst = getattr(random, "_inst", None) if random is not None else None
    return [inst.seed] if inst is not None else []


def plan() -> list[Callable[[], object]] | None:
    """What a clone of this interpreter must run after the clone, in the order the hooks
    were registered; None when a hook is not known here (or nothing was recorded, so
    hooks may have been registered unseen): then the whole after-fork work."""
    if _builtin is None or not _complete:
        return None
    unneeded, reseeds = _unneeded(), _reseeds()
    run: list[Callable[[], object]] = []
    for hook in _registered:
        if any(hook == known for known in reseeds):
            run.append(hook)
        elif not any(hook is known for known in unneeded):
            return None
    return run
