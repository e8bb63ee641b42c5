"""Prometheus exposition: names, labels, and counters that move."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def sample(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_names_present(client: TestClient) -> None:
    r = client.get("/v1/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in (
        "zeroboot_total_executions",
        "zeroboot_concurrent_forks",
        "zeroboot_fork_time_milliseconds_bucket",
        "zeroboot_exec_time_milliseconds_bucket",
        "zeroboot_total_time_milliseconds_bucket",
        "execbox_queue_depth",
        "execbox_sandboxes_live",
    ):
        assert re.search(rf"^{name}[{{ ]", r.text, re.M), name
    assert 'zeroboot_fork_time_milliseconds_bucket{le="0.1"}' in r.text
    assert 'zeroboot_fork_time_milliseconds_bucket{le="1000.0"}' in r.text


def test_counters_move(client: TestClient) -> None:
    before = client.get("/v1/metrics").text
    client.post("/v1/exec", json={"code": "print(1)"})
    client.post("/v1/exec", json={"code": "import sys; sys.exit(1)"})
    client.post("/execute", json={"tasks": [{"command": "true"}]})
    client.post("/v1/exec", json={"code": "1", "language": "cobol"})
    after = client.get("/v1/metrics").text

    def delta(name: str, labels: str = "") -> float:
        return sample(after, name, labels) - sample(before, name, labels)

    assert delta("zeroboot_total_executions", '{status="success"}') == 2
    assert delta("zeroboot_total_executions", '{status="error"}') == 1
    assert delta("execbox_executions_total", '{runtime="command",status="success"}') == 1
    assert delta("execbox_executions_total", '{runtime="python",status="failure"}') == 1
    assert delta("zeroboot_exec_time_milliseconds_count") == 3
    assert delta("zeroboot_total_time_milliseconds_count") == 3
    assert delta("execbox_http_requests_total", '{code="200",method="POST",route="/v1/exec"}') == 2
    assert delta("execbox_http_requests_total", '{code="400",method="POST",route="/v1/exec"}') == 1
    assert delta("execbox_http_requests_total", '{code="200",method="POST",route="/execute"}') == 1


def test_pool_metrics_follow_the_pools(client: TestClient) -> None:
    before = client.get("/v1/metrics").text
    client.post("/v1/exec", json={"code": "print(1)"})
    after = client.get("/v1/metrics").text
    took = sum(
        sample(after, f"execbox_pool_{k}_total", '{zygote="python"}')
        - sample(before, f"execbox_pool_{k}_total", '{zygote="python"}')
        for k in ("hits", "misses")
    )
    assert took == 1
    assert sample(after, "execbox_pool_target", '{zygote="python"}') >= 1
    assert re.search(r'^execbox_pool_size\{zygote="node"\} \d', after, re.M)
    assert re.search(r'^execbox_pool_refill_milliseconds\{zygote="python"\} [\d.]+$', after, re.M)
    assert 'execbox_zygote_restarts_total{zygote="bash"}' in after
