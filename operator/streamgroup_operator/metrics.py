"""The operator's Prometheus metrics: per-StreamGroup group state, and its own work.

Group state lives in Redis; the resync timer measures it and stores a snapshot here, and
a custom collector exposes the snapshots on scrape (no Redis call per scrape). A value
Redis cannot report (unknown lag) is left out rather than made up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streamgroup_core.spec import PartitionedStream

from .grouping import GroupStats


@dataclass
class Snapshot:
    namespace: str
    name: str
    group: str
    stats: GroupStats
    desired_replicas: int | None
    replicas: int
    partitioned: tuple[PartitionedStream, ...] = ()
    """The StreamGroup's partitioned streams, summed over their partitions as well."""


class StreamGroupCollector(Collector):
    def __init__(self) -> None:
        self.snapshots: dict[tuple[str, str], Snapshot] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        stream_labels = ["namespace", "name", "stream", "group"]
        families = {
            "lag": GaugeMetricFamily("streamgroup_lag", "Entries not yet read by the group (XINFO GROUPS lag).",
                                     labels=stream_labels),
            "pending": GaugeMetricFamily("streamgroup_pending", "Entries read by the group but not acknowledged.",
                                         labels=stream_labels),
            "oldest": GaugeMetricFamily("streamgroup_oldest_pending_age_seconds",
                                        "Age, from its ID, of the oldest pending entry.", labels=stream_labels),
            "consumers": GaugeMetricFamily("streamgroup_consumers", "Consumers registered in the group.",
                                           labels=stream_labels),
            "dead": GaugeMetricFamily("streamgroup_dead_letter_length", "Entries in the dead-letter stream.",
                                      labels=stream_labels),
            "read": GaugeMetricFamily("streamgroup_entries_read",
                                      "Entries the group has read so far (XINFO GROUPS entries-read; 0 for a group "
                                      "that has delivered nothing); its rate is the group's read throughput.",
                                      labels=stream_labels),
            "group_ready": GaugeMetricFamily("streamgroup_group_exists",
                                             "1 when the consumer group exists on the stream.", labels=stream_labels),
        }
        partitioned_lag = GaugeMetricFamily(
            "streamgroup_partitioned_stream_lag", "Lag summed over a partitioned stream's partitions.",
            labels=stream_labels)
        partitioned_pending = GaugeMetricFamily(
            "streamgroup_partitioned_stream_pending", "Pending entries summed over a partitioned stream's partitions.",
            labels=stream_labels)
        replicas = GaugeMetricFamily("streamgroup_replicas", "Replicas of the StreamGroup's Deployment.",
                                     labels=["namespace", "name"])
        desired = GaugeMetricFamily("streamgroup_desired_replicas", "The autoscaler's last decision.",
                                    labels=["namespace", "name"])
        for snap in self.snapshots.values():
            for stream in snap.stats.streams:
                values = [snap.namespace, snap.name, stream.stream, snap.group]
                families["group_ready"].add_metric(values, 1 if stream.exists else 0)
                families["dead"].add_metric(values, stream.dead_letters)
                if not stream.exists:
                    continue
                if stream.lag is not None:
                    families["lag"].add_metric(values, stream.lag)
                families["pending"].add_metric(values, stream.pending)
                families["consumers"].add_metric(values, len(stream.consumers))
                if stream.entries_read is not None:
                    families["read"].add_metric(values, stream.entries_read)
                if stream.oldest_pending_age_seconds is not None:
                    families["oldest"].add_metric(values, stream.oldest_pending_age_seconds)
            for partitioned in snap.partitioned:
                values = [snap.namespace, snap.name, partitioned.name, snap.group]
                lag, pending = snap.stats.subtotal(partitioned.keys)
                if lag is not None:
                    partitioned_lag.add_metric(values, lag)
                partitioned_pending.add_metric(values, pending)
            replicas.add_metric([snap.namespace, snap.name], snap.replicas)
            if snap.desired_replicas is not None:
                desired.add_metric([snap.namespace, snap.name], snap.desired_replicas)
        yield from families.values()
        yield partitioned_lag
        yield partitioned_pending
        yield replicas
        yield desired

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.groups = StreamGroupCollector()
        registry.register(self.groups)
        self.reconciles = Counter("streamgroup_operator_reconciles", "Reconciliations, by kind and result.",
                                  ["kind", "result"], registry=registry)
        self.redis_errors = Counter("streamgroup_operator_redis_errors",
                                    "Failed Redis operations, by StreamGroup.", ["namespace", "name"],
                                    registry=registry)
        self.scalings = Counter("streamgroup_operator_scalings", "Replica changes made by the autoscaler.",
                                ["namespace", "name", "direction"], registry=registry)
        self.consumers_removed = Counter("streamgroup_operator_consumers_removed",
                                         "Consumers of no live replica removed from their group.",
                                         ["namespace", "name"], registry=registry)
        self.leader = Gauge("streamgroup_operator_leader",
                            "1 while this operator holds the Lease and acts (or acts alone, without leader "
                            "election); 0 while it stands by.", registry=registry)
