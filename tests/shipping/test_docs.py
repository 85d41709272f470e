"""What the docs tell people to type, and what they say the code exports, agree with the code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry

from streamgroup_core.spec import PartitionedStream
from streamgroup_operator.grouping import GroupStats, StreamStats
from streamgroup_operator.metrics import OperatorMetrics, Snapshot
from streamgroup_sidecar.metrics import GroupSnapshot, Metrics
from tests.shipping.test_chart import CHART, helm

REPO = Path(__file__).resolve().parents[2]
PROSE = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "tests" / "README.md",
         CHART / "templates" / "NOTES.txt", CHART / "values.yaml"]

# `--set` and the shell word after it, as written (quotes included); a backtick ends inline code.
HELM_SET = re.compile(r"--set(?:\s+|=)((?:'[^']*'|\"[^\"]*\"|[^\s`'\"])+)")


def documented_sets() -> list[tuple[str, str]]:
    """(file, word) for every `--set WORD` in the docs."""
    return [(path.relative_to(REPO).as_posix(), word)
            for path in PROSE for word in HELM_SET.findall(path.read_text())]


def shell_words(word: str) -> list[str]:
    """The arguments bash makes of ``word`` (brace expansion, quote removal): what helm would receive."""
    result = subprocess.run(["bash", "-c", f"printf '%s\\0' {word}"], capture_output=True, text=True,
                            timeout=10, check=True)
    return result.stdout.split("\0")[:-1]


class TestHelmCommandsInTheDocs:
    def test_every_documented_set_reaches_helm_as_one_argument(self) -> None:
        sets = documented_sets()
        assert any("watchNamespaces" in word for _, word in sets), "the namespaced install is documented"
        split = {f"{where}: --set {word}": shell_words(word) for where, word in sets if len(shell_words(word)) != 1}
        assert not split, f"the shell splits these (quote them): {split}"

    def test_the_chart_renders_with_every_documented_set_as_the_shell_passes_it(self) -> None:
        args = [arg for _, word in documented_sets() for arg in ("--set", *shell_words(word))]
        rendered = helm("template", "sg", str(CHART), "--namespace", "streamgroup-system", *args).stdout
        for namespace in ("team-a", "team-b"):
            assert re.search(rf"kind: Role\n(?:.*\n)*?  namespace: {namespace}\n", rendered), namespace


# A row of a metrics table: | `name` | type | `label`, `label` | meaning |
METRIC_ROW = re.compile(r"^\| `(streamgroup_\w+)` \| (counter|gauge|histogram) \|([^|]*)\|", re.MULTILINE)
MODULES = {"streamgroup_core", "streamgroup_sidecar", "streamgroup_operator", "streamgroup_cli"}


def populated_registries() -> list[CollectorRegistry]:
    """The sidecar's and the operator's registries with a sample in every family, so that labels show."""
    sidecar = Metrics(CollectorRegistry())
    tally = sidecar.stream("s")
    tally.acked += 1
    tally.attempt("ok")
    tally.latency.observe(0.1)
    tally.age.observe(0.1)
    sidecar.retries.labels("s", "timeout").inc()
    sidecar.redis_errors.labels("xack").inc()
    sidecar.permission_denied.labels("xack").set(0)
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
    partitioned = PartitionedStream("p", 2)
    stats = GroupStats([StreamStats(key, True, 1, 1, 1.0, {"c": (1, 1)}, 1, entries_read=5)
                        for key in ("s", *partitioned.keys)])
    operator.groups.snapshots[("ns", "sg")] = Snapshot("ns", "sg", "g", stats, 2, 1, (partitioned,))
    return [sidecar.registry, operator.registry]


def exported() -> dict[str, tuple[str, set[str]]]:
    """Metric name as Prometheus shows it (counters with ``_total``) → (type, label names)."""
    metrics: dict[str, tuple[str, set[str]]] = {}
    for registry in populated_registries():
        for family in registry.collect():
            assert family.samples, f"{family.name} has no sample: give it one in populated_registries()"
            name = f"{family.name}_total" if family.type == "counter" else family.name
            labels = {label for sample in family.samples for label in sample.labels} - {"le"}
            metrics[name] = (family.type, labels)
    return metrics


def documented() -> dict[str, tuple[str, set[str]]]:
    """Every metric in the README's metrics tables → (type, label names)."""
    text = (REPO / "README.md").read_text()
    rows = METRIC_ROW.findall(text)
    metrics = {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}
    assert len(metrics) == len(rows), "a metric is listed twice"
    return metrics


class TestMetricsInTheDocs:
    def test_the_metric_tables_list_every_exported_metric_with_its_type_and_labels(self) -> None:
        assert documented() == exported()

    def test_every_metric_named_anywhere_in_the_docs_is_exported(self) -> None:
        names = set(exported())
        known = names | {name.removesuffix("_total") for name in names} | {
            f"{name}_{suffix}" for name, (kind, _) in exported().items() if kind == "histogram"
            for suffix in ("bucket", "sum", "count")}
        for path in PROSE:
            mentioned = set(re.findall(r"\b(streamgroup_[a-z_]+[a-z])\b", path.read_text())) - MODULES
            assert mentioned <= known, f"{path.relative_to(REPO)}: {sorted(mentioned - known)}"
