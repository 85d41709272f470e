"""The Helm chart: lint, render with default and other values, and the files generated from sources."""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "streamgroup"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(os.environ.get("STREAMGROUP_BIN_DIR", Path.home() / ".cache" / "streamgroup" / "bin"))
    binary = bin_dir / "helm"
    assert binary.exists(), f"{binary} is missing: run hack/control-plane/build.sh"
    result = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def render(*sets: str) -> list[dict[str, Any]]:
    args = ["template", "sg", str(CHART), "--namespace", "streamgroup-system"]
    for item in sets:
        args += ["--set", item]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(f"{d['kind']}/{d['metadata'].get('namespace', '')}" for d in docs)


NON_DEFAULT = [
    "operator.watchNamespaces={team-a,team-b}", "metrics.serviceMonitor.enabled=true",
    "metrics.podMonitor.enabled=true", "prometheusRule.enabled=true", "alerts.lagHigh=5000",
    "dashboard.enabled=false", "image.tag=9.9.9", "sidecar.image=mirror.example/streamgroup:9.9.9",
]


class TestLintAndRender:
    def test_the_chart_lints_with_default_and_other_values(self) -> None:
        helm("lint", str(CHART), "--strict")
        helm("lint", str(CHART), "--strict", *[arg for item in NON_DEFAULT for arg in ("--set", item)])

    def test_by_default_the_operator_watches_the_cluster_with_a_cluster_role(self) -> None:
        docs = render()
        assert kinds(docs) == sorted([
            "ClusterRole/", "ClusterRoleBinding/", "ConfigMap/streamgroup-system", "Deployment/streamgroup-system",
            "PodDisruptionBudget/streamgroup-system", "Role/streamgroup-system", "RoleBinding/streamgroup-system",
            "Service/streamgroup-system", "ServiceAccount/streamgroup-system"])
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["SG_OPERATOR_SIDECAR_IMAGE"] == "streamgroup/streamgroup:0.1.0-sidecar"
        assert env["SG_OPERATOR_NAMESPACES"] == ""

    def test_namespaced_mode_grants_roles_in_the_watched_namespaces_only(self) -> None:
        docs = render(*NON_DEFAULT)
        assert "ClusterRole/" not in kinds(docs) and "ClusterRoleBinding/" not in kinds(docs)
        roles = {d["metadata"]["namespace"] for d in docs if d["kind"] == "Role"}
        bindings = {d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding"}
        assert roles == bindings == {"team-a", "team-b", "streamgroup-system"}  # the last for the Lease alone
        assert {d["kind"] for d in docs} >= {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
        assert "ConfigMap" not in {d["kind"] for d in docs}
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert container["image"] == "streamgroup/streamgroup:9.9.9"
        assert env["SG_OPERATOR_SIDECAR_IMAGE"] == "mirror.example/streamgroup:9.9.9"
        assert env["SG_OPERATOR_NAMESPACES"] == "team-a,team-b"
        [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
        assert "(streamgroup_lag) > 5000" in yaml.safe_dump(rule)

    def test_two_operators_elect_a_leader_on_a_lease_and_roll_over_one_at_a_time(self) -> None:
        docs = render()
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        assert deployment["spec"]["replicas"] == 2
        assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                                  "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
        assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        assert env["SG_OPERATOR_LEADER_ELECT"] == "true"
        assert env["SG_OPERATOR_LEADER_ELECT_LEASE_NAME"] == "sg-streamgroup-operator"
        assert [env[f"SG_OPERATOR_LEADER_ELECT_{n}"] for n in ("LEASE_DURATION", "RENEW_DEADLINE", "RETRY_PERIOD")] == [
            "15", "10", "2"]
        [budget] = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
        assert budget["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}

    def test_the_lease_role_grants_get_and_update_on_its_lease_only_and_create_in_the_release_namespace(
        self
    ) -> None:
        docs = render("operator.watchNamespaces={team-a}")
        [role] = [d for d in docs if d["kind"] == "Role" and "coordination.k8s.io" in str(d["rules"])]
        assert role["metadata"]["namespace"] == "streamgroup-system"
        assert role["rules"] == [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "resourceNames": ["sg-streamgroup-operator"], "verbs": ["get", "update"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}]
        [binding] = [d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == role["metadata"]["name"]]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sg-streamgroup",
                                        "namespace": "streamgroup-system"}]

    def test_without_leader_election_one_operator_runs_alone(self) -> None:
        docs = render("operator.leaderElection.enabled=false", "operator.replicas=1")
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["SG_OPERATOR_LEADER_ELECT"] == "false"
        assert not [d for d in docs if "coordination.k8s.io" in str(d.get("rules", ""))]
        result = helm("template", "sg", str(CHART), "--set", "operator.leaderElection.enabled=false", check=False)
        assert result.returncode != 0 and "needs operator.leaderElection.enabled" in result.stderr

    def test_the_operator_role_grants_only_what_the_operator_uses(self) -> None:
        [role] = [d for d in render() if d["kind"] == "ClusterRole"]
        granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                   for v in rule["verbs"]}
        assert not any(v in ("*", "delete", "deletecollection", "escalate", "bind", "impersonate")
                       for _, _, v in granted)
        assert not any(g == "coordination.k8s.io" for g, _, _ in granted)  # the Lease: a Role in one namespace
        assert ("", "secrets", "get") in granted and ("", "secrets", "list") not in granted
        assert ("", "secrets", "watch") not in granted

    def test_the_dashboard_configmap_is_labelled_for_grafanas_sidecar(self) -> None:
        [config] = [d for d in render() if d["kind"] == "ConfigMap"]
        assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config["data"]["streamgroup.json"].strip() == (CHART / "files/dashboard.json").read_text().strip()

    @pytest.mark.parametrize("bad", ["operator.resyncInterval=soon", "operator.port=99999", "alerts.lagFor=later",
                                     "image.pullPolicy=Sometimes", "operator.unknownKey=1",
                                     "networkPolicy.apiServer.cidrs={10.0.0.10}", "networkPolicy.redis.ports={0}",
                                     "networkPolicy.metrics.from[0].podselector.matchLabels.app=prometheus",
                                     "networkPolicy.dns.to[0].ipBlock.except={10.0.0.0/8}"])
    def test_the_values_schema_rejects_wrong_values(self, bad: str) -> None:
        result = helm("template", "sg", str(CHART), "--set", bad, check=False)
        assert result.returncode != 0
        assert "schema" in result.stderr


def render_values(values: dict[str, Any], *sets: str) -> list[dict[str, Any]]:
    """The chart rendered with ``values`` as a values file (lists of selectors are unwieldy as --set)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values, file)
        file.flush()
        args = ["template", "sg", str(CHART), "--namespace", "streamgroup-system", "-f", file.name]
        for item in sets:
            args += ["--set", item]
        return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def network_policy(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [policy] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    spec: dict[str, Any] = policy["spec"]
    return spec


PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
REDIS_PODS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "data"}},
              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}}}
KUBE_DNS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
CLOSED = {"networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.10/32", "10.0.0.11/32"]},
                            "redis": {"cidrs": ["10.20.0.0/16"], "selectors": [REDIS_PODS]},
                            "metrics": {"from": [PROMETHEUS]}}}


def tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"port": port, "protocol": "TCP"} for port in ports]


class TestNetworkPolicy:
    def test_there_is_none_by_default(self) -> None:
        assert "NetworkPolicy" not in {d["kind"] for d in render()}

    def test_the_operator_may_reach_only_the_api_server_redis_and_dns_and_be_reached_only_by_the_scraper(
        self,
    ) -> None:
        docs = render_values(CLOSED)
        spec = network_policy(docs)
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert spec["podSelector"] == {"matchLabels": pod_labels}, "it selects the operator's pods"
        assert spec["policyTypes"] == ["Ingress", "Egress"], "both directions closed"
        assert spec["ingress"] == [{"from": [PROMETHEUS], "ports": tcp(8080)}]
        assert spec["egress"] == [
            {"to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}, {"ipBlock": {"cidr": "10.0.0.11/32"}}],
             "ports": tcp(443, 6443)},
            {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}, REDIS_PODS], "ports": tcp(6379)},
            {"to": [KUBE_DNS], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        ]

    def test_ports_and_peers_follow_the_values(self) -> None:
        spec = network_policy(render_values(
            {"networkPolicy": {**CLOSED["networkPolicy"], "redis": {"selectors": [REDIS_PODS], "ports": [6379, 26379]},
                               "dns": {"to": [], "ports": [5353]},
                               "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.9.9.9/32"}}], "ports": tcp(3128)}]}},
            "operator.port=9090", "networkPolicy.apiServer.ports={6443}"))
        assert spec["ingress"][0]["ports"] == tcp(9090)
        assert spec["egress"] == [
            {"to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}, {"ipBlock": {"cidr": "10.0.0.11/32"}}], "ports": tcp(6443)},
            {"to": [REDIS_PODS], "ports": tcp(6379, 26379)},
            {"ports": [{"port": 5353, "protocol": "UDP"}, {"port": 5353, "protocol": "TCP"}]},  # any DNS server
            {"to": [{"ipBlock": {"cidr": "10.9.9.9/32"}}], "ports": tcp(3128)},
        ]

    def test_without_a_scraper_no_one_may_connect_and_dns_can_be_left_out(self) -> None:
        spec = network_policy(render_values(CLOSED, "networkPolicy.metrics.from=null",
                                            "networkPolicy.dns.enabled=false"))
        assert "Ingress" in spec["policyTypes"] and spec["ingress"] == []
        assert [rule["ports"] for rule in spec["egress"]] == [tcp(443, 6443), tcp(6379)]

    @pytest.mark.parametrize(("missing", "named"), [("apiServer.cidrs", "networkPolicy.apiServer.cidrs"),
                                                    ("redis", "networkPolicy.redis")])
    def test_it_refuses_to_render_a_policy_open_to_any_address(self, missing: str, named: str) -> None:
        values = yaml.safe_load(yaml.safe_dump(CLOSED))
        section, _, key = missing.partition(".")
        if key:
            values["networkPolicy"][section][key] = []
        else:
            values["networkPolicy"][section] = {"cidrs": [], "selectors": []}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
            yaml.safe_dump(values, file)
            file.flush()
            result = helm("template", "sg", str(CHART), "-f", file.name, check=False)
        assert result.returncode != 0 and named in result.stderr


class TestGeneratedFilesAgreeWithTheirSources:
    """Regenerate with hack/generate.sh."""

    def test_the_chart_ships_the_same_crd_as_crds(self) -> None:
        assert filecmp.cmp(REPO / "crds/streamgroup.io_streamgroups.yaml",
                           CHART / "crds/streamgroup.io_streamgroups.yaml", shallow=False)

    def test_the_plain_rules_file_is_the_chart_rules_with_default_values(self) -> None:
        rendered = helm("template", "sg", str(CHART), "--set", "prometheusRule.enabled=true",
                        "--show-only", "templates/monitoring/prometheusrule.yaml").stdout
        plain = yaml.safe_load((REPO / "deploy/prometheus/alerts.yaml").read_text())
        assert yaml.safe_load(rendered)["spec"]["groups"] == plain["groups"]


class TestValuesDocumentation:
    def test_every_value_has_a_doc_comment(self) -> None:
        """Each leaf has a ``# --`` comment, or sits inside a map that has one (like resources)."""
        undocumented = []
        documented = False
        parents: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing maps
        for line in (CHART / "values.yaml").read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("# --"):
                documented = True
                continue
            if stripped.startswith("#") or not stripped or not re.match(r"^\s*[A-Za-z][\w-]*:", line):
                continue
            indent = len(line) - len(line.lstrip())
            while parents and parents[-1][0] >= indent:
                parents.pop()
            covered = documented or any(doc for _, doc in parents)
            key, _, value = stripped.partition(":")
            if value.strip() and not covered:
                undocumented.append(key)
            if not value.strip():
                parents.append((indent, documented))
            documented = False
        assert undocumented == []


class TestReferenceDocs:
    def test_the_reference_is_generated_from_the_crd_and_the_values(self) -> None:
        import sys

        result = subprocess.run([sys.executable, "hack/docs.py", "--check"], capture_output=True, text=True,
                                cwd=REPO, timeout=60)
        assert result.returncode == 0, result.stderr
        reference = (REPO / "docs/reference.md").read_text()
        assert "`spec.autoscaling.minReplicas`" in reference and "`operator.watchNamespaces`" in reference
