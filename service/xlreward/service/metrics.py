"""Prometheus metrics, one registry per app so that several servers can live in one process (tests)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from xlreward.service.scheduler import BatchStats

POWERS_OF_TWO = tuple(float(2**i) for i in range(13))  # 1 .. 4096
TOKEN_BUCKETS = tuple(float(2**i) for i in range(6, 21))  # 64 .. 1M
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The standard process_* (memory, CPU, open files), python_info and python_gc_* families that the
        # default registry has and dashboards expect; each registry needs its own, as ours is not the default.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.queue_items = Gauge("xlreward_queue_items", "items waiting to be scored", registry=r)
        by_model = ["model"]
        self.batch_items = Histogram(
            "xlreward_batch_items", "sequences per batch", by_model, buckets=POWERS_OF_TWO, registry=r
        )
        self.batch_padded_tokens = Histogram(
            "xlreward_batch_padded_tokens",
            "positions a batch ran through each model side's backbone, padding included",
            by_model,
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "xlreward_batch_requests",
            "requests contributing to a batch",
            by_model,
            buckets=POWERS_OF_TWO,
            registry=r,
        )
        self.batch_tenants = Histogram(
            "xlreward_batch_tenants",
            "tenants contributing to a batch",
            by_model,
            buckets=POWERS_OF_TWO,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "xlreward_batch_seconds",
            "time the models spent on a batch",
            by_model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_latency = Histogram(
            "xlreward_request_latency_seconds",
            "request latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "xlreward_requests",
            "requests by endpoint, tenant and status",
            ["endpoint", "tenant", "status"],
            registry=r,
        )
        self.scored_items = Counter(
            "xlreward_scored_items", "items scored, by tenant and model", ["tenant", "model"], registry=r
        )
        self.rejected = Counter("xlreward_rejected", "requests ended without results", ["reason"], registry=r)

    def track_queue(self, depth: Callable[[], float]) -> None:
        self.queue_items.set_function(depth)

    def observe_batch(self, stats: BatchStats) -> None:
        model = stats.model
        self.batch_items.labels(model=model).observe(stats.items)
        self.batch_padded_tokens.labels(model=model).observe(stats.padded_tokens)
        self.batch_requests.labels(model=model).observe(stats.requests)
        self.batch_tenants.labels(model=model).observe(len(stats.tenants))
        self.batch_seconds.labels(model=model).observe(stats.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
