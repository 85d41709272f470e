"""The Grafana dashboard and the alerts only use metrics that the sidecar and the operator export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamgroup_operator.grouping import GroupStats, StreamStats
from streamgroup_operator.metrics import OperatorMetrics, Snapshot
from streamgroup_sidecar.metrics import GroupSnapshot, Metrics

REPO = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\b(streamgroup_[a-z_]+)")


def exported_series_names() -> set[str]:
    """Every sample name the two processes expose once they have something to report."""
    sidecar = Metrics(CollectorRegistry())
    tally = sidecar.stream("s")
    tally.acked += 1
    tally.attempt("ok")
    tally.latency.observe(0.1)
    tally.age.observe(0.1)
    sidecar.retries.labels("s", "timeout").inc()
    sidecar.redis_errors.labels("xack").inc()
    sidecar.dead_letters.labels("s", "trimmed").inc()
    sidecar.reclaimed.labels("s").inc()
    sidecar.leases_lost.labels("s").inc()
    sidecar.handed_over.labels("s").inc()
    sidecar.groups.snapshots["s"] = GroupSnapshot("s", "g", 1, 1, 1.0)
    operator = OperatorMetrics(CollectorRegistry())
    operator.reconciles.labels("spec", "ok").inc()
    operator.redis_errors.labels("ns", "sg").inc()
    operator.scalings.labels("ns", "sg", "up").inc()
    operator.consumers_removed.labels("ns", "sg").inc()
    stats = GroupStats([StreamStats("s", True, 1, 1, 1.0, {"c": (1, 1)}, 1, entries_read=5)])
    operator.groups.snapshots[("ns", "sg")] = Snapshot("ns", "sg", "g", stats, 2, 1)
    names = set()
    for registry in (sidecar.registry, operator.registry):
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            names |= {sample.name for sample in family.samples}
    return names


class TestMetricReferences:
    def test_every_dashboard_query_uses_exported_metrics(self) -> None:
        dashboard = json.loads((REPO / "charts/streamgroup/files/dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
        used = {m for e in exprs for m in NAME.findall(e)}
        assert used, "the dashboard queries streamgroup metrics"
        assert used <= exported_series_names(), used - exported_series_names()

    def test_the_dashboard_shows_what_sres_look_at(self) -> None:
        dashboard = json.loads((REPO / "charts/streamgroup/files/dashboard.json").read_text())
        text = json.dumps(dashboard)
        for metric in ("streamgroup_sidecar_entries_total", "streamgroup_sidecar_delivery_duration_seconds_bucket",
                       "streamgroup_lag", "streamgroup_pending", "streamgroup_oldest_pending_age_seconds",
                       "streamgroup_replicas", "streamgroup_dead_letter_length"):
            assert metric in text, metric
        assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])

    def test_every_alert_uses_exported_metrics(self) -> None:
        rules = (REPO / "deploy/prometheus/alerts.yaml").read_text()
        exprs = "\n".join(line for line in rules.splitlines() if "summary" not in line and "description" not in line)
        used = set(NAME.findall(exprs)) - {"streamgroup"}
        assert used <= exported_series_names(), used - exported_series_names()
