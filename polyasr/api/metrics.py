"""Prometheus metrics for one app: requests, decode latency, queues, models, memory.

Each app owns its own ``CollectorRegistry`` rather than the process-global one,
so several apps in one process (the in-process tests) never collide. Counters
and histograms are fed by events (the HTTP middleware, the WS route, the
manager's observer hooks); queue depth and memory are read from their sources
at scrape time, so they are never stale and cost nothing between scrapes.
No FastAPI in here: ``polyasr.api.app`` wires it in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psutil
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from polyasr.core.engine import UNITS
from polyasr.models.scheduler import Priority
from polyasr.models.unit import UnitObserver

MIB = 1_048_576
# A partial on a small model takes tens of ms; a long upload on a CPU, a minute.
DECODE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LOAD_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Clips per engine call: the CUDA fast loop's buckets.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 64)


ArchiveCounts = Callable[[], dict[str, tuple[int, int]]]


def _no_archive() -> dict[str, tuple[int, int]]:
    return {}


class _ReadAtScrape:
    """Series whose truth lives elsewhere: read from the source at each scrape."""

    def __init__(
        self,
        queue_depth: Callable[[str], int | None],
        engine_memory: Callable[[], dict[str, float]],
        engine_counters: Callable[[], dict[str, int]],
        archive_writes: ArchiveCounts,
    ) -> None:
        self.queue_depth = queue_depth
        self.engine_memory = engine_memory
        self.engine_counters = engine_counters
        self.archive_writes = archive_writes
        self.process = psutil.Process()

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "polyasr_queue_depth",
            "Jobs waiting on a unit's scheduler, not counting the running one",
            labels=["unit"],
        )
        for unit in UNITS:
            value = self.queue_depth(unit)
            if value is not None:
                depth.add_metric([unit], value)
        yield depth
        # The conventional name, from psutil so that it exists on macOS too
        # (prometheus_client's ProcessCollector reads /proc, Linux only).
        yield GaugeMetricFamily(
            "process_resident_memory_bytes",
            "Resident set size of the server process",
            value=self.process.memory_info().rss,
        )
        engine = GaugeMetricFamily(
            "polyasr_engine_memory_bytes",
            "Accelerator memory the engine reports (MLX: active, peak, cache; CUDA: allocated, reserved)",
            labels=["kind"],
        )
        for kind, mib in self.engine_memory().items():
            engine.add_metric([kind], mib * MIB)
        yield engine
        events = CounterMetricFamily(
            "polyasr_engine_events",
            "Decode events the engine counts (CUDA: long_clip_on_generate, a clip too long "
            "for the fast loop's static cache, decoded alone by generate)",
            labels=["event"],
        )
        for event, count in self.engine_counters().items():
            events.add_metric([event], count)
        yield events
        archive = CounterMetricFamily(
            "polyasr_archive_writes_lost",
            "Archive writes that did not reach the disk: failed (disk error) or skipped (byte budget)",
            labels=["kind", "outcome"],
        )
        for kind, (failed, skipped) in self.archive_writes().items():
            archive.add_metric([kind, "failed"], failed)
            archive.add_metric([kind, "skipped"], skipped)
        yield archive


class Metrics(UnitObserver):
    """One app's metrics; subscribed to the model units as their observer."""

    def __init__(
        self,
        queue_depth: Callable[[str], int | None],
        engine_memory: Callable[[], dict[str, float]],
        engine_counters: Callable[[], dict[str, int]] = dict,
        archive_writes: ArchiveCounts = _no_archive,
    ) -> None:
        """``engine_memory`` and ``engine_counters`` are the engine's
        :meth:`~polyasr.core.engine.Engine.memory_mib` and ``counters``;
        ``archive_writes`` the archive status's :meth:`~polyasr.archive.status.ArchiveStatus.counts`."""
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "polyasr_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=reg,
        )
        self.decode_seconds = Histogram(
            "polyasr_decode_seconds",
            "Engine time of one run on a unit's scheduler thread (a batch counts once), by priority",
            ["unit", "kind"],
            buckets=DECODE_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "polyasr_batch_size",
            "Jobs in one run on a unit's scheduler thread (clips per engine call), by priority",
            ["unit", "kind"],
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.ws_sessions = Gauge(
            "polyasr_ws_sessions_active", "Open dictation WebSocket connections", registry=reg
        )
        self.loop_cuts = Counter(
            "polyasr_loop_cuts",
            "Decoded pieces whose looping tail the repetition-loop guard cut, by priority",
            ["kind"],
            registry=reg,
        )
        self.loads = Counter("polyasr_model_loads", "Model unit loads", ["unit"], registry=reg)
        self.evictions = Counter("polyasr_model_evictions", "Model unit evictions", ["unit"], registry=reg)
        self.load_seconds = Histogram(
            "polyasr_model_load_seconds",
            "Time to load a model unit",
            ["unit"],
            buckets=LOAD_BUCKETS,
            registry=reg,
        )
        for unit in UNITS:  # every unit's series exists from the first scrape, at 0
            self.loads.labels(unit)
            self.evictions.labels(unit)
        for priority in Priority:
            if priority is not Priority.CONTROL:
                self.loop_cuts.labels(priority.name.lower())
        reg.register(_ReadAtScrape(queue_depth, engine_memory, engine_counters, archive_writes))

    def request(self, route: str, method: str, status: int) -> None:
        self.requests.labels(route, method, str(status)).inc()

    def loop_cut(self, kind: str) -> None:
        """One decoded piece had its looping tail cut (a transcriber listener)."""
        self.loop_cuts.labels(kind).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text format body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # -- UnitObserver ----------------------------------------------------

    def loaded(self, unit: str, seconds: float | None) -> None:
        self.loads.labels(unit).inc()
        if seconds is not None:
            self.load_seconds.labels(unit).observe(seconds)

    def evicted(self, unit: str) -> None:
        self.evictions.labels(unit).inc()

    def ran(self, unit: str, priority: Priority, seconds: float, size: int) -> None:
        if priority is not Priority.CONTROL:  # loads have their own histogram
            self.decode_seconds.labels(unit, priority.name.lower()).observe(seconds)
            self.batch_size.labels(unit, priority.name.lower()).observe(size)
