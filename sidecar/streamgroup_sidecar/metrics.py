"""Prometheus metrics of one sidecar, on a registry the caller owns.

Counters and histograms describe what this process did. The group's lag, pending
count and oldest pending age describe state that lives in Redis: a custom collector
exposes the latest snapshot that the stats loop read (collectors are synchronous,
Redis calls are not, so the snapshot is refreshed on a timer, never on scrape).
A value Redis cannot report (lag is nil after XDEL/XSETID or trimming) is left out
rather than exported as a made-up number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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
        for snap in self.snapshots.values():
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


@dataclass
class StreamChildren:
    """The labelled metrics one stream touches per entry, looked up once (``labels()`` is not free)."""

    acked: Any
    latency: Any
    end_to_end: Any
    attempts: dict[str, Any] = field(default_factory=dict)


class Metrics:
    """All metrics of one sidecar, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.entries = Counter(
            "streamgroup_sidecar_entries", "Entries finished, by outcome: acked or dead_lettered.",
            ["stream", "outcome"], registry=registry)
        self.attempts = Counter(
            "streamgroup_sidecar_delivery_attempts",
            "HTTP delivery attempts, by result (ok, status-<code>, timeout, connection, ...).",
            ["stream", "result"], registry=registry)
        self.retries = Counter(
            "streamgroup_sidecar_retries", "Attempts that will be retried, by reason.",
            ["stream", "reason"], registry=registry)
        self.latency = Histogram(
            "streamgroup_sidecar_delivery_duration_seconds",
            "Duration of one HTTP delivery attempt, request sent to reply read.",
            ["stream"], buckets=LATENCY_BUCKETS, registry=registry)
        self.end_to_end = Histogram(
            "streamgroup_sidecar_entry_age_at_ack_seconds",
            "Time from the entry's ID timestamp (when it was added) to its acknowledgement.",
            ["stream"], buckets=(*LATENCY_BUCKETS, 60.0, 300.0, 900.0, 3600.0), registry=registry)
        self.in_flight = Gauge(
            "streamgroup_sidecar_in_flight", "Entries held by this sidecar: being delivered or waiting to retry.",
            registry=registry)
        self.redis_errors = Counter(
            "streamgroup_sidecar_redis_errors", "Failed Redis operations, by operation.",
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
            "streamgroup_sidecar_ready", "1 when Redis, the group and the app are all reachable.",
            registry=registry)
        self.groups = GroupCollector()
        registry.register(self.groups)
        self._streams: dict[str, StreamChildren] = {}

    def stream(self, stream: str) -> StreamChildren:
        children = self._streams.get(stream)
        if children is None:
            children = self._streams[stream] = StreamChildren(
                acked=self.entries.labels(stream, "acked"), latency=self.latency.labels(stream),
                end_to_end=self.end_to_end.labels(stream))
        return children

    def attempt(self, stream: str, result: str) -> None:
        attempts = self.stream(stream).attempts
        child = attempts.get(result)
        if child is None:
            child = attempts[result] = self.attempts.labels(stream, result)
        child.inc()
