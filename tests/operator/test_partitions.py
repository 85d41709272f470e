"""A partitioned stream's numbers are summed over its partitions, in the status and in the metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from streamgroup_core.spec import parse_spec
from streamgroup_operator.grouping import GroupStats, StreamStats
from streamgroup_operator.handlers import partition_status
from streamgroup_operator.metrics import OperatorMetrics, Snapshot

SPEC = parse_spec({"redis": {"url": "redis://r"}, "group": "billing", "template": {}, "streams": ["refunds"],
                   "partitionedStreams": [{"name": "orders", "partitions": 3}]})


def stats(lags: dict[str, int | None]) -> GroupStats:
    return GroupStats([StreamStats(key, True, lag, 2, None, {}, 0) for key, lag in lags.items()])


class TestPartitionTotals:
    def test_lag_and_pending_are_summed_over_the_partitions_only(self) -> None:
        measured = stats({"refunds": 100, "orders:{0}": 1, "orders:{1}": 2, "orders:{2}": 3})
        assert partition_status(SPEC, measured) == [{"name": "orders", "partitions": 3, "lag": 6, "pending": 6}]

    def test_an_unknown_partition_lag_leaves_the_total_out_rather_than_undercount(self) -> None:
        measured = stats({"refunds": 1, "orders:{0}": 1, "orders:{1}": None, "orders:{2}": 3})
        assert partition_status(SPEC, measured) == [{"name": "orders", "partitions": 3, "pending": 6}]

    def test_the_metrics_carry_the_totals_by_partitioned_stream(self) -> None:
        metrics = OperatorMetrics(CollectorRegistry())
        measured = stats({"refunds": 100, "orders:{0}": 1, "orders:{1}": 2, "orders:{2}": 3})
        metrics.groups.snapshots[("shop", "billing")] = Snapshot("shop", "billing", "billing", measured, None, 1,
                                                                 SPEC.partitioned_streams)
        text = generate_latest(metrics.registry).decode()
        labels = 'group="billing",name="billing",namespace="shop",stream="orders"'
        assert f"streamgroup_partitioned_stream_lag{{{labels}}} 6.0" in text
        assert f"streamgroup_partitioned_stream_pending{{{labels}}} 6.0" in text
        assert 'stream="orders:{1}"' in text  # and each partition on its own, as any stream
