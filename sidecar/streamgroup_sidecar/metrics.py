"""Prometheus metrics of one sidecar, on a registry the caller owns.

Counters and histograms describe what this process did. The group's lag, pending
count and oldest pending age describe state that lives in Redis: a custom collector
exposes the latest snapshot that the stats loop read (collectors are synchronous,
Redis calls are not, so the snapshot is refreshed on a timer, never on scrape).
A value Redis cannot report (lag is nil after XDEL/XSETID or trimming) is left out
rather than exported as a made-up number.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
AGE_BUCKETS = (*LATENCY_BUCKETS, 60.0, 300.0, 900.0, 3600.0)


@dataclass
class GroupSnapshot:
    stream: str
    group: str
    lag: int | None
    pending: int
    oldest_pending_age_seconds: float | None


class GroupCollector(Collector):
    def __init__(self) -> None:
        self.snapshots: dict[str, GroupSnapshot] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        labels = ["stream", "group"]
        lag = GaugeMetricFamily("streamgroup_sidecar_group_lag",
                                "Entries in the stream not yet read by the group (XINFO GROUPS lag).",
                                labels=labels)
        pending = GaugeMetricFamily("streamgroup_sidecar_group_pending",
                                    "Entries read by the group but not acknowledged (the PEL).",
                                    labels=labels)
        oldest = GaugeMetricFamily("streamgroup_sidecar_group_oldest_pending_age_seconds",
                                   "Age, from its ID, of the oldest entry pending in the group.",
                                   labels=labels)
        for snap in list(self.snapshots.values()):  # a copy: scrapes run in the health server's thread
            values = [snap.stream, snap.group]
            if snap.lag is not None:
                lag.add_metric(values, snap.lag)
            pending.add_metric(values, snap.pending)
            if snap.oldest_pending_age_seconds is not None:
                oldest.add_metric(values, snap.oldest_pending_age_seconds)
        yield lag
        yield pending
        yield oldest

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class Buckets:
    """A histogram's state without locks: the sidecar updates it from its event loop only."""

    __slots__ = ("bounds", "counts", "labels", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.labels = [floatToGoString(b) for b in (*bounds, float("inf"))]  # type: ignore[no-untyped-call]
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs in that bound's bucket (le is "<=").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        out: list[tuple[str, float]] = []
        for label, count in zip(self.labels, self.counts, strict=True):
            running += count
            out.append((label, running))
        return out


class StreamTally:
    """What happened to one stream's entries: plain numbers, updated per entry on the hot path."""

    __slots__ = ("acked", "age", "attempts", "dead_lettered", "latency")

    def __init__(self) -> None:
        self.acked = 0
        self.dead_lettered = 0
        self.attempts: dict[str, int] = {}
        """Attempts by result: ``ok``, ``status-<code>``, ``timeout``, ``connection``..."""
        self.latency = Buckets(LATENCY_BUCKETS)
        self.age = Buckets(AGE_BUCKETS)

    def attempt(self, result: str, n: int = 1) -> None:
        self.attempts[result] = self.attempts.get(result, 0) + n


class DeliveryCollector(Collector):
    """Exports the per-entry counters and histograms from :class:`StreamTally` objects.

    Why not prometheus_client's ``Counter`` and ``Histogram``: each ``inc``/``observe`` takes a
    lock and each ``labels()`` a dict look-up, several times per entry, a large share of the
    sidecar's CPU in batch mode (docs/performance.md); plain integers cost almost nothing,
    and the numbers are only turned into metric families when Prometheus scrapes.
    """

    def __init__(self) -> None:
        self.streams: dict[str, StreamTally] = {}

    def stream(self, stream: str) -> StreamTally:
        tally = self.streams.get(stream)
        if tally is None:
            tally = self.streams[stream] = StreamTally()
        return tally

    def collect(self) -> Iterable[CounterMetricFamily | HistogramMetricFamily]:
        entries = CounterMetricFamily(
            "streamgroup_sidecar_entries", "Entries finished, by outcome: acked or dead_lettered.",
            labels=["stream", "outcome"])
        attempts = CounterMetricFamily(
            "streamgroup_sidecar_delivery_attempts",
            "HTTP delivery attempts, by result (ok, status-<code>, timeout, connection, ...).",
            labels=["stream", "result"])
        latency = HistogramMetricFamily(
            "streamgroup_sidecar_delivery_duration_seconds",
            "Duration of one HTTP delivery attempt, request sent to reply read.", labels=["stream"])
        age = HistogramMetricFamily(
            "streamgroup_sidecar_entry_age_at_ack_seconds",
            "Time from the entry's ID timestamp (when it was added) to its acknowledgement.", labels=["stream"])
        # Copies: scrapes run in the health server's thread while the event loop adds keys.
        for stream, tally in list(self.streams.items()):
            entries.add_metric([stream, "acked"], tally.acked)
            entries.add_metric([stream, "dead_lettered"], tally.dead_lettered)
            for result, count in list(tally.attempts.items()):
                attempts.add_metric([stream, result], count)
            latency.add_metric([stream], tally.latency.cumulative(), tally.latency.total)
            age.add_metric([stream], tally.age.cumulative(), tally.age.total)
        yield entries
        yield attempts
        yield latency
        yield age

    def describe(self) -> Iterable[CounterMetricFamily]:
        return []


class Metrics:
    """All metrics of one sidecar, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.retries = Counter(
            "streamgroup_sidecar_retries", "Attempts that will be retried, by reason.",
            ["stream", "reason"], registry=registry)
        self.in_flight = Gauge(
            "streamgroup_sidecar_in_flight",
            "Entries held by this sidecar: queued, waiting for their key, being delivered or waiting to retry.",
            registry=registry)
        self.redis_errors = Counter(
            "streamgroup_sidecar_redis_errors", "Failed Redis operations, by operation.",
            ["operation"], registry=registry)
        self.permission_denied = Gauge(
            "streamgroup_sidecar_redis_permission_denied",
            "1 while Redis refuses this operation's command or keys to the sidecar's ACL user (NOPERM), else 0.",
            ["operation"], registry=registry)
        self.dead_letters = Counter(
            "streamgroup_sidecar_dead_letters",
            "Entries moved to the dead-letter stream, by reason (status-<code>, max-deliveries, dropped, "
            "trimmed, missing-body-field).", ["stream", "reason"], registry=registry)
        self.reclaimed = Counter(
            "streamgroup_sidecar_reclaimed_entries",
            "Entries taken over from consumers that left them pending too long (XAUTOCLAIM).",
            ["stream"], registry=registry)
        self.leases_lost = Counter(
            "streamgroup_sidecar_leases_lost",
            "Entries this sidecar held that another consumer took over; it stopped working on them.",
            ["stream"], registry=registry)
        self.handed_over = Counter(
            "streamgroup_sidecar_handed_over_entries",
            "Pending entries handed to a live peer at shutdown.", ["stream"], registry=registry)
        self.group_recreated = Counter(
            "streamgroup_sidecar_group_recreated",
            "Times the consumer group was found deleted and created again.", registry=registry)
        self.reconnects = Counter(
            "streamgroup_sidecar_redis_reconnects",
            "Times every Redis connection was dropped because a replica answered (READONLY: failover).",
            registry=registry)
        self.acks = Counter(
            "streamgroup_sidecar_ack_batches", "XACK round trips (each acknowledges a batch of entries).",
            registry=registry)
        self.ready = Gauge(
            "streamgroup_sidecar_ready",
            "1 when Redis, the group and the app are all reachable and Redis refuses no command it needs.",
            registry=registry)
        self.groups = GroupCollector()
        registry.register(self.groups)
        self.deliveries = DeliveryCollector()
        registry.register(self.deliveries)

    def stream(self, stream: str) -> StreamTally:
        """The per-entry numbers of ``stream`` (entries, attempts, durations, ages)."""
        return self.deliveries.stream(stream)
