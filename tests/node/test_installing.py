"""The Helm chart on the real node: two operator pods of the real image, one leading, the other taking over.

What `helm install` gives a platform team, run for real: the operator's pods under Pod Security's
restricted profile with their service account's token (the chart's RBAC is all they may do), ready
through their probes, electing a leader on the chart's Lease, and the StreamGroups they reconcile
delivering. Then the leader's process is killed with SIGKILL right after a change was asked for: the
standby takes the Lease once it expires and carries the change out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.node.conftest import Cluster, ExposedRedis
from tests.node.test_deployments import deployment_settled
from tests.node.test_pods import container_pid, ready_pods
from tests.node.workloads import Record, create, eventually, patch, pending, produce, streamgroup

REPO = Path(__file__).resolve().parents[2]
LEASE_DURATION = 6


@pytest.fixture
def release(cluster: Cluster, namespace: str) -> Iterator[str]:
    """The chart installed in its own namespace, watching the test's, with its images and a short lease."""
    system = f"sg-system-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=system, labels={"pod-security.kubernetes.io/enforce": "restricted"})))
    full = cluster.full_image()
    repository, tag = full.rsplit(":", 1)
    name = "sg"
    helm = [*cluster.plane.helm_command(), "install", name, str(REPO / "charts/streamgroup"), "-n", system,
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", "image.pullPolicy=Never", "--set", f"sidecar.image={cluster.image}",
            "--set", "sidecar.pullPolicy=Never", "--set", f"operator.watchNamespaces={{{namespace}}}",
            "--set", "operator.resyncInterval=1", "--set", "operator.consumerIdleLimit=5",
            "--set", f"operator.leaderElection.leaseDuration={LEASE_DURATION}",
            "--set", "operator.leaderElection.renewDeadline=4", "--set", "operator.leaderElection.retryPeriod=1",
            "--set", "dashboard.enabled=false", "--wait", "--timeout", "4m"]
    result = subprocess.run(helm, capture_output=True, text=True, timeout=400)
    try:
        assert result.returncode == 0, f"helm install failed: {result.stderr}\n{cluster.diagnostics(system)}"
        yield system
    finally:
        print(cluster.diagnostics(system)[-12000:])
        subprocess.run([*cluster.plane.helm_command(), "uninstall", name, "-n", system, "--wait"],
                       capture_output=True, timeout=300)
        cluster.core.delete_namespace(system)


def operator_pods(cluster: Cluster, system: str) -> list[Any]:
    return [pod for pod in cluster.core.list_namespaced_pod(
        system, label_selector="app.kubernetes.io/component=operator").items if pod.metadata.deletion_timestamp is None]


def holder(cluster: Cluster, system: str) -> str:
    lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease("sg-streamgroup-operator", system)
    return str(lease.spec.holder_identity or "")


def leader_pod(cluster: Cluster, system: str) -> str:
    """The operator pod whose process holds the Lease now (identities are the pod's name and a suffix)."""
    current = holder(cluster, system)
    names = [pod.metadata.name for pod in operator_pods(cluster, system) if current.startswith(pod.metadata.name + "_")]
    return names[0] if names else ""


def restarts(cluster: Cluster, system: str, pod: str) -> int:
    statuses = cluster.core.read_namespaced_pod(pod, system).status.container_statuses or []
    return sum(status.restart_count for status in statuses)


@pytest.mark.timeout(600)  # helm waits for both operator pods (the full image's first copy included)
class TestTheChartOnARealNode:
    def test_two_operator_pods_run_restricted_one_leads_and_a_streamgroup_delivers(
            self, cluster: Cluster, namespace: str, release: str, redis_on_node: ExposedRedis) -> None:
        pods = operator_pods(cluster, release)
        assert len(pods) == 2 and all(
            any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions) for pod in pods)
        assert all(pod.spec.security_context.run_as_non_root for pod in pods)
        leader = eventually(lambda: leader_pod(cluster, release), 60, "a leader among the pods", cluster, release)
        store = redis_on_node.client()
        create(cluster, namespace, streamgroup("orders", cluster.image, redis_on_node.address, prefix="h"))
        eventually(lambda: ready_pods(cluster, namespace, "orders", 1), 180, "the StreamGroup's pod Ready",
                   cluster, namespace)
        written = produce(store, 20)
        eventually(lambda: Record(store, "h").ids() == set(written), 60, "delivered", cluster, namespace)
        eventually(lambda: pending(store) == 0, 30, "nothing pending", cluster, namespace)
        assert leader_pod(cluster, release) == leader, "the leadership stayed where it was"

    def test_the_leader_killed_right_after_a_change_is_replaced_by_the_standby_which_completes_it(
            self, cluster: Cluster, namespace: str, release: str, redis_on_node: ExposedRedis) -> None:
        create(cluster, namespace, streamgroup("orders", cluster.image, redis_on_node.address, prefix="f"))
        eventually(lambda: ready_pods(cluster, namespace, "orders", 1), 180, "one replica Ready", cluster, namespace)
        leader = eventually(lambda: leader_pod(cluster, release), 60, "a leader", cluster, release)
        [standby] = [pod.metadata.name for pod in operator_pods(cluster, release) if pod.metadata.name != leader]
        process = container_pid(cluster, release, leader, "operator")
        patch(cluster, namespace, "orders", {"replicas": 2})
        os.kill(process, signal.SIGKILL)
        killed = time.monotonic()
        eventually(lambda: leader_pod(cluster, release) == standby, LEASE_DURATION + 20,
                   "the standby holding the Lease", cluster, release)
        took = time.monotonic() - killed
        assert took < LEASE_DURATION + 10, f"took the Lease {took:.1f}s after the kill (lease {LEASE_DURATION}s)"
        eventually(lambda: deployment_settled(cluster, namespace, "orders", 2), 180, "the change carried out",
                   cluster, namespace)
        # The killed container is restarted by the kubelet and comes back as a standby, Ready again.
        eventually(lambda: restarts(cluster, release, leader) >= 1 and len(
            [p for p in operator_pods(cluster, release)
             if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions)]) == 2, 120,
            "the old leader back as a Ready standby", cluster, release)
        assert leader_pod(cluster, release) == standby
