"""Execution records on Redis, and what a node does without it, against a real
redis-server (a database of their own, apart from the cluster tests')."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from execbox.api.auth import Identity
from execbox.api.errors import ApiError
from execbox.api.ratelimit import RateLimiter
from execbox.cluster.link import RedisDown, RedisLink
from execbox.cluster.records import ClusterRecords, RedisRecords
from execbox.store.sqlite import FinishedRecord, Store
from tests.cluster.conftest import Redis, free_port


@pytest.fixture
def link(redis_server: Redis) -> Iterator[RedisLink]:
    if redis_server.proc is None:  # a cluster test restarts it; it is up again by then
        redis_server.start()
    lk = RedisLink(redis_server.url.rsplit("/", 1)[0] + "/3")
    lk.client.flushdb()
    yield lk
    lk.close()


def make(records: RedisRecords | ClusterRecords, exec_id: str, retention: float = 60):  # type: ignore[no-untyped-def]
    return records.create_execution(
        exec_id, dialect="executor", runtime="python", request={"code": "print(1)"},
        session_id="s1", status="running", retention_s=retention,
    )  # fmt: skip


def test_an_execution_id_is_created_once_and_updated_in_place(link: RedisLink) -> None:
    r = RedisRecords(link, "node-x")
    first, created = make(r, "e1")
    assert created and first["status"] == "running" and first["node"] == "node-x"
    again, created = make(r, "e1")
    assert not created and again["created_at"] == first["created_at"]
    r.update_execution("e1", status="completed", result={"stdout": "1\n"})
    got = r.get_execution("e1")
    assert got is not None
    assert (got["status"], got["result"], got["request"]) == (
        "completed", {"stdout": "1\n"}, {"code": "print(1)"},
    )  # fmt: skip
    assert got["finished_at"] >= got["created_at"]
    r.record_callback_attempt("e1", 1, 500, "boom")
    assert r.get_execution("e1")["callback_attempts"][0]["status_code"] == 500  # type: ignore[index]
    rows, total = r.list_session_executions("s1", 10, 0)
    assert total == 1 and rows[0]["id"] == "e1"


def test_pending_to_running_is_won_by_one_node(link: RedisLink) -> None:
    a, b = RedisRecords(link, "a"), RedisRecords(link, "b")
    a.create_execution("p1", dialect="executor", runtime="python", request={},
                       session_id=None, status="pending", retention_s=60)  # fmt: skip
    assert a.start("p1") is True
    assert b.start("p1") is False
    assert a.get_execution("p1")["node"] == "a"  # type: ignore[index]


def test_records_expire_with_their_retention(link: RedisLink) -> None:
    r = RedisRecords(link, "n")
    make(r, "short", retention=1)
    make(r, "long", retention=60)
    assert r.list_session_executions("s1", 10, 0)[1] == 2
    time.sleep(2.5)
    assert r.get_execution("short") is None
    rows, total = r.list_session_executions("s1", 10, 0)
    assert total == 1 and [x["id"] for x in rows] == ["long"]


def test_without_redis_records_stay_on_the_node_and_move_when_it_is_back(
    link: RedisLink, tmp_path
) -> None:
    local = Store(tmp_path / "local.db")
    dead = RedisLink(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    try:
        offline = ClusterRecords(RedisRecords(dead, "n"), local)
        exec_id = f"off-{uuid.uuid4().hex[:8]}"
        _, created = make(offline, exec_id)
        assert created
        offline.update_execution(exec_id, status="completed", result={"stdout": "x"})
        assert offline.get_execution(exec_id)["status"] == "completed"  # type: ignore[index]
        with pytest.raises(RedisDown):
            offline.get_execution("elsewhere")  # not here, and Redis cannot say
        back = ClusterRecords(RedisRecords(link, "n"), local)
        assert back.sync_back() == 1
        assert local.get_execution(exec_id) is None
        moved = RedisRecords(link, "other").get_execution(exec_id)
        assert moved is not None and moved["result"] == {"stdout": "x"}
    finally:
        dead.close()
        local.close()


def test_finished_runs_go_to_redis_or_stay_on_the_node_while_it_is_down(
    link: RedisLink, tmp_path
) -> None:
    local = Store(tmp_path / "local.db")
    dead = RedisLink(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    now = time.time()

    def finished(i: str) -> FinishedRecord:
        return FinishedRecord(
            id=i, dialect="zeroboot", runtime="python", session_id=None,
            request={"code": "print(1)"}, status="completed", result={"stdout": "1\n"},
            started_at=now - 1, finished_at=now, retention_s=60, node="n",
        )  # fmt: skip

    try:
        up, down = f"up-{uuid.uuid4().hex[:8]}", f"down-{uuid.uuid4().hex[:8]}"
        ClusterRecords(RedisRecords(link, "n"), local).record_finished([finished(up)])
        there = RedisRecords(link, "other").get_execution(up)
        assert there is not None and there["status"] == "completed"
        assert there["result"] == {"stdout": "1\n"} and local.get_execution(up) is None
        ClusterRecords(RedisRecords(dead, "n"), local).record_finished([finished(down)])
        here = local.get_execution(down)
        assert here is not None and here["status"] == "completed"
        assert ClusterRecords(RedisRecords(link, "n"), local).sync_back() == 1
        moved = RedisRecords(link, "other").get_execution(down)
        assert moved is not None and moved["result"] == {"stdout": "1\n"}
    finally:
        dead.close()
        local.close()


def test_rate_limits_fall_back_to_the_node_when_redis_is_down() -> None:
    limiter = RateLimiter("3/minute", f"redis://127.0.0.1:{free_port()}/0")
    who = Identity(key="k", client_ip="127.0.0.1")
    t0 = time.monotonic()
    for _ in range(3):
        assert limiter.hit(who, "zeroboot")["X-RateLimit-Limit"] == "3"
    with pytest.raises(ApiError) as err:
        limiter.hit(who, "zeroboot")
    assert err.value.status == 429
    assert time.monotonic() - t0 < 2  # one failed try, then the node counts alone
