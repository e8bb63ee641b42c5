"""Three execbox nodes on one Redis act as one service. The tests run in this order, on
one cluster: the last ones kill a node and restart Redis."""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import httpx

from tests.cluster.conftest import KEYS, POLL_KEYS, Cluster, wait_until


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=5).json()


def run_exec(c: httpx.Client, url: str, session: str, code: str, **extra: Any) -> httpx.Response:
    body = {"execution_id": uid("x"), "session_id": session, "code": code,
            "language": "python", "timeout": 30, **extra}  # fmt: skip
    return c.post(f"{url}/execute", json=body)


def test_every_node_lists_the_cluster(cluster: Cluster) -> None:
    for node in cluster.nodes.values():
        h = health(node.url)
        assert h["cluster"]["node"] == node.name
        assert h["cluster"]["redis"]["up"] is True
        assert sorted(n["id"] for n in h["cluster"]["nodes"]) == sorted(cluster.nodes)
        assert h["cluster"]["capacity"]["total"] == 6
        zb = httpx.get(f"{node.url}/v1/health", timeout=5).json()
        assert zb["cluster"]["nodes_alive"] == 3
    out = subprocess.run(
        [sys.executable, "-m", "execbox.cli", "nodes", "--redis", cluster.redis.url, "--json"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    listed = json.loads(out.stdout)
    assert sorted(n["id"] for n in listed) == sorted(cluster.nodes)
    assert {n["url"] for n in listed} == {n.url for n in cluster.nodes.values()}
    table = subprocess.run(
        [sys.executable, "-m", "execbox.cli", "nodes", "--redis", cluster.redis.url],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert "3 node(s) alive" in table and "node-b" in table


def test_a_keys_rate_limit_holds_across_the_nodes(cluster: Cluster) -> None:
    urls = [n.url for n in cluster.nodes.values()]
    with cluster.client(KEYS[0]) as c:
        codes = [c.get(f"{urls[i % 3]}/executions/none-{i}").status_code for i in range(360)]
    # 300 a minute for the key in all, not 300 on each node
    assert codes.count(404) == 300, codes
    assert codes.count(429) == 60, codes
    # another key has its own budget
    with cluster.client(KEYS[1]) as c:
        assert c.get(f"{urls[0]}/executions/none").status_code == 404


def test_an_execution_run_on_one_node_is_found_through_another(cluster: Cluster) -> None:
    a, c_ = cluster.nodes["node-a"], cluster.nodes["node-c"]
    with cluster.client(KEYS[2]) as c:
        r = c.post(f"{a.url}/v1/exec", json={"code": "print(6*7)", "language": "python"})
        assert r.status_code == 200, r.text
        exec_id = r.json()["id"]
        # recorded off the request's path, as on a single node
        body = finished(c_.url, [exec_id], 10)[exec_id]
    assert body["status"] == "completed" and body["stdout"] == "42\n"


def test_an_execution_id_runs_once_in_the_whole_cluster(cluster: Cluster) -> None:
    a, c_ = cluster.nodes["node-a"], cluster.nodes["node-c"]
    exec_id = uid("once")
    with cluster.client(KEYS[12]) as c:
        body = {"execution_id": exec_id, "session_id": uid("s"), "language": "python",
                "code": "import random; print(random.random())"}  # fmt: skip
        first = c.post(f"{a.url}/execute", json=body)
        assert first.status_code == 200, first.text
        # the same id through another node, even for another session: the first record
        second = c.post(f"{c_.url}/execute", json={**body, "session_id": uid("s")})
        assert second.status_code == 200, second.text
    assert second.json()["stdout"] == first.json()["stdout"]
    assert second.json()["created_at"] == first.json()["created_at"]


def test_a_session_made_through_a_works_through_b(cluster: Cluster) -> None:
    a, b, c_ = (cluster.nodes[n] for n in ("node-a", "node-b", "node-c"))
    session = uid("s")
    wait_idle(a.url)
    with cluster.client(KEYS[3]) as c:
        r = run_exec(c, a.url, session, "open('note.txt', 'w').write('kept on A')")
        assert r.status_code == 200, r.text
        owner = r.headers.get("x-execbox-node", "node-a")  # absent: served where it arrived
        assert owner == "node-a"  # equal room everywhere: the receiving node keeps it
        r = run_exec(c, b.url, session, "print(open('note.txt').read())")
        assert r.status_code == 200, r.text
        assert r.json()["stdout"] == "kept on A\n"
        assert r.headers["x-execbox-node"] == "node-a"  # B forwarded it to A
        files = c.get(f"{c_.url}/sessions/{session}/files").json()["files"]
        assert [f["path"] for f in files] == ["note.txt"]
        assert c.get(f"{b.url}/sessions/{session}/files/note.txt").content == b"kept on A"
        listed = c.get(f"{b.url}/sessions/{session}/executions").json()
        assert listed["total"] == 2


def test_a_forwarded_request_keeps_its_auth_and_is_counted_once(cluster: Cluster) -> None:
    a = cluster.nodes["node-a"]
    session = uid("s")

    def remaining(r: httpx.Response) -> int:
        return int(r.headers["x-ratelimit-remaining"])

    with cluster.client(KEYS[4]) as c:
        made = run_exec(c, a.url, session, "print(1)")
        assert made.status_code == 200
        # the node with the most room holds it: usually A, which received it
        owner = cluster.nodes[made.headers.get("x-execbox-node", "node-a")]
        via = next(n for n in cluster.nodes.values() if n is not owner)
        # through another node: the shared count drops by one a request, not two
        first = c.get(f"{via.url}/sessions/{session}")
        second = c.get(f"{via.url}/sessions/{session}")
        assert first.status_code == second.status_code == 200
        assert second.headers["x-execbox-node"] == owner.name
        assert remaining(first) - remaining(second) == 1
        # a forged forwarding token does not spare a request its count
        forged = c.get(f"{owner.url}/sessions/{session}",
                       headers={"x-execbox-forwarded-by": "node-b",
                                "x-execbox-cluster-token": "guess"})  # fmt: skip
        assert forged.status_code == 200 and remaining(second) - remaining(forged) == 1
    with cluster.client("not-a-key") as bad:
        # the original auth travels with a forwarded request, and is checked
        r = run_exec(bad, via.url, session, "print(1)")
        assert r.status_code == 401
        r = bad.get(f"{owner.url}/sessions/{session}",
                    headers={"x-execbox-forwarded-by": "node-b",
                             "x-execbox-cluster-token": "guess"})  # fmt: skip
        assert r.status_code == 401


def _busy(url: str, key: str, seconds: float, n: int) -> list[threading.Thread]:
    def sleep() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            code = f"import time; time.sleep({seconds})"
            body = {"code": code, "language": "python", "timeout_seconds": 30}
            with contextlib.suppress(httpx.TransportError):  # its node may be killed
                c.post(f"{url}/v1/exec", json=body)

    threads = [threading.Thread(target=sleep) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def test_new_sessions_go_to_the_node_with_the_most_room(cluster: Cluster) -> None:
    b = cluster.nodes["node-b"]
    threads = _busy(b.url, KEYS[5], 4, 2)  # B's two slots are taken
    try:
        wait_until(
            lambda: any(n["id"] == "node-b" and n["free"] == 0
                        for n in health(b.url)["cluster"]["nodes"]),
            5, "B's heartbeat to show it full",
        )  # fmt: skip
        with cluster.client(KEYS[6]) as c:
            r = run_exec(c, b.url, uid("s"), "print('placed')")
        assert r.status_code == 200, r.text
        assert r.headers["x-execbox-node"] in ("node-a", "node-c")
    finally:
        for t in threads:
            t.join()


POLL = itertools.cycle(POLL_KEYS)


def record(url: str, exec_id: str) -> dict[str, Any]:
    """One record; polling spreads over keys of its own, not the test's rate budget."""
    r = httpx.get(f"{url}/executions/{exec_id}", headers={"Authorization": f"Bearer {next(POLL)}"})
    assert r.status_code == 200, r.text
    return r.json()


def submit(c: httpx.Client, url: str, session: str, code: str) -> str:
    exec_id = uid("q")
    body = {"execution_id": exec_id, "session_id": session, "code": code,
            "language": "python", "timeout": 30, "async": True}  # fmt: skip
    r = c.post(f"{url}/execute", json=body)
    assert r.status_code == 202, r.text
    return exec_id


def finished(url: str, ids: list[str], timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        recs = {i: record(url, i) for i in ids}
        return (
            recs if all(r["status"] not in ("pending", "running") for r in recs.values()) else None
        )

    return wait_until(done, timeout, "the async executions to finish", step=0.25)


def executions_run(url: str) -> float:
    text = httpx.get(f"{url}/v1/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("execbox_executions_total{")
    )


def wait_idle(url: str) -> None:
    """Every node's heartbeat shows all its slots free (so a tie keeps a new session on
    the node that receives it)."""
    wait_until(
        lambda: all(n["free"] == n["capacity"] for n in health(url)["cluster"]["nodes"]),
        30, "the cluster to be idle",
    )  # fmt: skip


def test_async_work_is_shared_through_the_queue(cluster: Cluster) -> None:
    a, b, c_ = (cluster.nodes[n] for n in ("node-a", "node-b", "node-c"))
    with cluster.client(KEYS[7]) as c:
        home = uid("s")
        assert run_exec(c, a.url, home, "open('f', 'w').write('x')").status_code == 200
        # a session that lives on A: submitted through B, run on A, in its workspace
        on_a = submit(c, b.url, home, "print(open('f').read())")
        # new sessions: whichever node has room takes them
        fresh = [submit(c, c_.url, uid("s"), "print('fresh')") for _ in range(4)]
        recs = finished(a.url, [on_a, *fresh], 30)
    assert recs[on_a]["status"] == "completed" and recs[on_a]["stdout"] == "x\n"
    assert all(recs[i]["stdout"] == "fresh\n" for i in fresh), recs


LEFT_ON_A: dict[str, str] = {}  # a session the next tests find again


def test_a_killed_node_loses_nothing_and_runs_nothing_twice(cluster: Cluster) -> None:
    a, b, c_ = (cluster.nodes[n] for n in ("node-a", "node-b", "node-c"))
    wait_idle(b.url)
    with cluster.client(KEYS[8]) as c:
        home, spare = uid("s"), uid("s")
        LEFT_ON_A["home"] = home
        r = run_exec(c, a.url, home, "open('kept', 'w').write('survives a restart of A')")
        assert r.status_code == 200 and "x-execbox-node" not in r.headers, r.headers
        assert run_exec(c, a.url, spare, "print(1)").status_code == 200
        # B and C full; A with one free slot
        busy = _busy(b.url, KEYS[9], 6, 2) + _busy(c_.url, KEYS[9], 6, 2)
        busy += _busy(a.url, KEYS[9], 6, 1)

        def room() -> bool:
            free = {n["id"]: n["free"] for n in health(b.url)["cluster"]["nodes"]}
            return free == {"node-a": 1, "node-b": 0, "node-c": 0}

        wait_until(room, 10, "the nodes' heartbeats to show them busy")
        before = executions_run(b.url) + executions_run(c_.url)
        fresh = [submit(c, a.url, uid("s"), "import time; time.sleep(3); print('ran')")
                 for _ in range(4)]  # fmt: skip
        # A takes one (its free slot); the others wait in the shared stream
        started = wait_until(
            lambda: [i for i in fresh if record(b.url, i)["status"] == "running"],
            10, "A to start one",
        )  # fmt: skip
        assert len(started) == 1
        # work for A's own session waits in A's stream, as A has no room
        queued_on_a = [submit(c, b.url, home, "print('never')") for _ in range(2)]
        time.sleep(0.5)
        assert all(record(b.url, i)["status"] == "pending" for i in queued_on_a)

        a.kill()

        # its session answers 410 once its heartbeat has lapsed, never a fresh workspace
        lost = wait_until(
            lambda: (r := run_exec(c, b.url, home, "print(1)")).status_code == 410 and r,
            10, "A's session to be reported lost",
        )  # fmt: skip
        assert "session_lost" in lost.json()["detail"]
        assert c.get(f"{c_.url}/sessions/{home}/files").status_code == 410
        # the node list follows the death
        wait_until(
            lambda: sorted(n["id"] for n in health(c_.url)["cluster"]["nodes"])
            == ["node-b", "node-c"],
            5, "the node list to drop A",
        )  # fmt: skip
        recs = finished(b.url, fresh + queued_on_a, 40)
        for t in busy:
            t.join()
        after = executions_run(b.url) + executions_run(c_.url)
        # a lost session may start again, empty, once the client deletes it
        assert c.delete(f"{b.url}/sessions/{spare}").status_code == 204
        r = run_exec(c, b.url, spare, "import os; print(os.listdir('.'))")
        assert r.status_code == 200 and r.json()["stdout"] == "[]\n", r.text

    (running_on_a,) = started
    assert recs[running_on_a]["status"] == "interrupted"
    assert "may already have had effects" in recs[running_on_a]["message"]
    waiting = [i for i in fresh if i != running_on_a]
    for i in waiting:  # never started on A: run once, by B or C
        assert recs[i]["status"] == "completed" and recs[i]["stdout"] == "ran\n", recs[i]
    # B and C ran exactly those three (and the four sleeps that kept them busy): none twice
    assert after - before == len(waiting) + 4
    for i in queued_on_a:
        assert recs[i]["status"] == "interrupted"
        assert "session_lost" in recs[i]["message"]


def test_a_restarted_node_rejoins_with_its_sessions(cluster: Cluster) -> None:
    a, b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    a.start()
    a.wait_ready()
    wait_until(
        lambda: sorted(n["id"] for n in health(b.url)["cluster"]["nodes"]) == sorted(cluster.nodes),
        5, "the node list to show A again",
    )  # fmt: skip
    home = LEFT_ON_A["home"]
    with cluster.client(KEYS[10]) as c:
        r = run_exec(c, b.url, home, "print(open('kept').read())")
        assert r.status_code == 200, r.text
        assert r.json()["stdout"] == "survives a restart of A\n"
        assert r.headers["x-execbox-node"] == "node-a"


def test_a_redis_restart_is_survived(cluster: Cluster) -> None:
    a, b, c_ = (cluster.nodes[n] for n in ("node-a", "node-b", "node-c"))
    home = LEFT_ON_A["home"]
    with cluster.client(KEYS[11]) as c:
        cluster.redis.stop()
        for node in cluster.nodes.values():
            h = wait_until(
                lambda n=node: (h := health(n.url))["cluster"]["redis"]["up"] is False and h,
                10, f"{node.name} to see Redis down",
            )  # fmt: skip
            assert h["status"] == "healthy"  # it still runs code
            assert h["cluster"]["redis"]["error"]
        # synchronous work goes on, each node counting rate limits alone
        r = c.post(f"{b.url}/v1/exec", json={"code": "print('no redis')", "language": "python"})
        assert r.status_code == 200 and r.json()["stdout"] == "no redis\n", r.text
        during = r.json()["id"]
        # a node serves the sessions it holds; one held elsewhere is not started over here
        r = run_exec(c, a.url, home, "print(open('kept').read())")
        assert r.status_code == 200, r.text
        assert r.json()["stdout"] == "survives a restart of A\n", r.text
        r = run_exec(c, b.url, home, "print(1)")
        assert r.status_code == 503 and "Redis" in r.json()["detail"], r.text
        # async work cannot be accepted: it says so, and nothing is half-accepted
        body = {"execution_id": uid("q"), "session_id": uid("s"), "code": "print(1)",
                "language": "python", "async": True}  # fmt: skip
        r = c.post(f"{c_.url}/execute", json=body)
        assert r.status_code == 503 and "Redis" in r.json()["detail"], r.text
        assert r.headers["retry-after"] == "1"

        cluster.redis.start()
        for node in cluster.nodes.values():
            wait_until(
                lambda n=node: health(n.url)["cluster"]["redis"]["up"] is True,
                10, f"{node.name} to reconnect",
            )  # fmt: skip
        wait_until(lambda: len(health(c_.url)["cluster"]["nodes"]) == 3, 5, "every node to rejoin")
        # the record made during the outage moved to Redis: found through another node
        rec = wait_until(
            lambda: (r := c.get(f"{c_.url}/executions/{during}")).status_code == 200 and r,
            10, "the outage's record to reach Redis",
        )  # fmt: skip
        assert rec.json()["stdout"] == "no redis\n"
        # and async work is accepted and run again
        exec_id = submit(c, c_.url, uid("s"), "print('after')")
        assert finished(a.url, [exec_id], 20)[exec_id]["stdout"] == "after\n"
