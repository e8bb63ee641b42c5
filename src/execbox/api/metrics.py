"""Prometheus metrics, one registry per app. Executions are counted from the engine's
listeners, so every dialect counts alike."""

from __future__ import annotations

import contextlib
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
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


class PoolCollector:
    """The warm pools, read from the zygotes' supervisors at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("execbox_pool_size", "Pooled sandboxes, ready or starting",
                                 labels=["zygote"])  # fmt: skip
        target = GaugeMetricFamily("execbox_pool_target", "Pool size the zygote aims for",
                                   labels=["zygote"])  # fmt: skip
        hits = CounterMetricFamily("execbox_pool_hits", "Takes served by a ready sandbox",
                                   labels=["zygote"])  # fmt: skip
        misses = CounterMetricFamily("execbox_pool_misses", "Takes that waited for a sandbox",
                                     labels=["zygote"])  # fmt: skip
        refill = GaugeMetricFamily("execbox_pool_refill_milliseconds",
                                   "Median clone-to-ready time of recent sandboxes",
                                   labels=["zygote"])  # fmt: skip
        restarts = CounterMetricFamily("execbox_zygote_restarts", "Zygotes restarted after dying",
                                       labels=["zygote"])  # fmt: skip
        for name, z in self.engine.zygotes.items():
            size.add_metric([name], z.pool_size)
            target.add_metric([name], z.pool_target)
            hits.add_metric([name], z.stats["hits"])
            misses.add_metric([name], z.stats["misses"])
            recent = sorted(z.refill_ms[-64:])
            if recent:
                refill.add_metric([name], recent[len(recent) // 2])
            restarts.add_metric([name], z.restarts)
        yield from (size, target, hits, misses, refill, restarts)


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
        self.pools = PoolCollector(engine)
        self.registry.register(self.pools)
        self.forks.set_function(lambda: engine.stats.running)
        self.live.set_function(lambda: engine.stats.running)
        self.queue.set_function(lambda: engine.stats.queued)
        engine.listeners.append(self.on_outcome)

    def detach(self, engine: Engine) -> None:
        with contextlib.suppress(KeyError, AttributeError):
            self.registry.unregister(self.pools)
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
