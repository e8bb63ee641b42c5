"""Shared fixtures: one real engine (real zygotes, real sandboxes) for the whole session,
driven from synchronous tests through a background event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from execbox.config import Settings
from execbox.engine import Engine
from execbox.jobs import Job, Limits, Outcome
from execbox.sessions import SessionConfig, Sessions
from execbox.store.sqlite import Store
from tests.mounts import unmount_below


class EngineRunner:
    """Runs an Engine on its own loop thread; tests call it synchronously."""

    def __init__(self, settings: Settings, state_dir: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store = Store(os.path.join(state_dir, "execbox.db"))
        self.sessions = Sessions(
            self.store,
            SessionConfig(
                root=os.path.join(state_dir, "sessions"),
                uid_base=3_000_000 + (os.getpid() % 1000) * 1000,
                uid_count=1000,
                quota_bytes=8 << 20,
                idle_ttl_s=3600,
            ),
        )
        self.sessions.prepare()  # before the zygotes start, so they see its mounts
        self.engine = Engine(settings, self.sessions)
        self.call(self.engine.start())

    def call(self, coro, timeout: float = 120):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, job: Job) -> Outcome:
        return self.call(self.engine.run(job))

    def py(self, code: str, **limits: object) -> Outcome:
        return self.run(Job(runtime="python", code=code, limits=make_limits(**limits)))

    def many(self, jobs: list[Job]) -> list[Outcome]:
        with ThreadPoolExecutor(len(jobs)) as pool:
            return list(pool.map(self.run, jobs))

    def close(self) -> None:
        self.call(self.engine.close())
        for sid in self.store.all_sessions():
            self.sessions.delete(sid)
        unmount_below(self.sessions.root)
        self.store.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def nice_of(pid: int) -> int:
    """A process's (main thread's) nice value, from the host's /proc."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def make_limits(**kw: object) -> Limits:
    return dataclasses.replace(Limits(wall_time_s=20, cpu_time_s=20), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineRunner]:
    if os.geteuid() != 0:
        pytest.fail("the sandbox tests need root, as execbox itself does")
    state = str(tmp_path_factory.mktemp("engine-state"))
    runner = EngineRunner(Settings.from_env(pool_size=2, max_concurrency=16), state)
    try:
        yield runner
    finally:
        runner.close()
