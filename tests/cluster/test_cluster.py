"""Three execbox nodes on one Redis act as one service. The tests run in this order, on
one cluster: the last ones kill a node and restart Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from typing import Any

import httpx

from tests.cluster.conftest import KEYS, Cluster, wait_until


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
        codes = [c.get(f"{urls[i % 3]}/executions/none-{i}").status_code for i in range(120)]
    # 100 a minute for the key in all, not 100 on each node
    assert codes.count(404) == 100, codes
    assert codes.count(429) == 20, codes
    # another key has its own budget
    with cluster.client(KEYS[1]) as c:
        assert c.get(f"{urls[0]}/executions/none").status_code == 404


def test_an_execution_run_on_one_node_is_found_through_another(cluster: Cluster) -> None:
    a, c_ = cluster.nodes["node-a"], cluster.nodes["node-c"]
    with cluster.client(KEYS[2]) as c:
        r = c.post(f"{a.url}/v1/exec", json={"code": "print(6*7)", "language": "python"})
        assert r.status_code == 200, r.text
        exec_id = r.json()["id"]
        rec = wait_until(
            lambda: (g := c.get(f"{c_.url}/executions/{exec_id}")).status_code == 200 and g,
            10, "the record on node C",
        )  # fmt: skip
    body = rec.json()
    assert body["status"] == "completed" and body["stdout"] == "42\n"


def test_a_session_made_through_a_works_through_b(cluster: Cluster) -> None:
    a, b, c_ = (cluster.nodes[n] for n in ("node-a", "node-b", "node-c"))
    session = uid("s")
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


def test_a_forwarded_request_keeps_its_auth(cluster: Cluster) -> None:
    a, b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    session = uid("s")
    with cluster.client(KEYS[4]) as c:
        assert run_exec(c, a.url, session, "print(1)").status_code == 200
    with cluster.client("not-a-key") as bad:
        r = run_exec(bad, b.url, session, "print(1)")
        assert r.status_code == 401
        # a forged forwarding header gets no further
        r = bad.get(f"{a.url}/sessions/{session}",
                    headers={"x-execbox-forwarded-by": "node-b",
                             "x-execbox-cluster-token": "guess"})  # fmt: skip
        assert r.status_code == 401


def _busy(url: str, key: str, seconds: float, n: int) -> list[threading.Thread]:
    def sleep() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            code = f"import time; time.sleep({seconds})"
            body = {"code": code, "language": "python", "timeout_seconds": 30}
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
