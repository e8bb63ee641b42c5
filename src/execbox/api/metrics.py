"""Prometheus metrics, one registry per app. Executions are counted from the engine's
listeners, so every dialect counts alike."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from execbox.engine import Engine
from execbox.jobs import Job, Outcome, Status

BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000)


def zeroboot_status(status: Status) -> str:
    if status is Status.SUCCESS:
        return "success"
    if status is Status.TIMEOUT:
        return "timeout"
    return "error"


class ExecutionsCollector:
    """zeroboot_total_executions under exactly that name: prometheus_client's Counter would
    expose it as zeroboot_total_executions_total, which ZeroBoot dashboards do not query.
    Untyped, because the text format names every counter family with a _total suffix."""

    name = "zeroboot_total_executions"

    def __init__(self) -> None:
        self.counts: Tally[str] = Tally()

    def inc(self, status: str) -> None:
        self.counts[status] += 1

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, "Executions by outcome (a counter)", "unknown")
        for status in ("success", "error", "timeout"):
            metric.add_sample(self.name, {"status": status}, float(self.counts[status]))
        yield metric


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.executions = ExecutionsCollector()
        r.register(self.executions)
        self.forks = Gauge("zeroboot_concurrent_forks", "Sandboxes running a job", registry=r)
        self.fork_ms = Histogram(
            "zeroboot_fork_time_milliseconds", "Time to obtain a sandbox", buckets=BUCKETS_MS,
            registry=r,
        )  # fmt: skip
        self.exec_ms = Histogram(
            "zeroboot_exec_time_milliseconds", "Time the code ran", buckets=BUCKETS_MS, registry=r
        )
        self.total_ms = Histogram(
            "zeroboot_total_time_milliseconds", "Time from admission to outcome",
            buckets=BUCKETS_MS, registry=r,
        )  # fmt: skip
        self.http = Counter(
            "execbox_http_requests", "HTTP requests", ["route", "method", "code"], registry=r
        )
        self.queue = Gauge("execbox_queue_depth", "Jobs waiting for a slot", registry=r)
        self.live = Gauge("execbox_sandboxes_live", "Sandboxes running a job", registry=r)
        self.by_runtime = Counter(
            "execbox_executions", "Executions by runtime and status", ["runtime", "status"],
            registry=r,
        )  # fmt: skip

    def attach(self, engine: Engine) -> None:
        self.forks.set_function(lambda: engine.stats.running)
        self.live.set_function(lambda: engine.stats.running)
        self.queue.set_function(lambda: engine.stats.queued)
        engine.listeners.append(self.on_outcome)

    def detach(self, engine: Engine) -> None:
        if self.on_outcome in engine.listeners:
            engine.listeners.remove(self.on_outcome)

    def on_outcome(self, job: Job, outcome: Outcome) -> None:
        self.executions.inc(zeroboot_status(outcome.status))
        self.by_runtime.labels(job.runtime, outcome.status.value).inc()
        t = outcome.timings
        self.fork_ms.observe(t.fork_ms)
        self.exec_ms.observe(t.exec_ms)
        self.total_ms.observe(t.total_ms)

    def request(self, route: str, method: str, code: int) -> None:
        self.http.labels(route, method, str(code)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
