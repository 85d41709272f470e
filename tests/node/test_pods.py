"""A StreamGroup's pod on the real node: ready through its probe, deleted and killed without a loss."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from tests.node.conftest import Cluster, ExposedRedis
from tests.node.workloads import Record, create, eventually, pending, pending_by_consumer, produce, streamgroup
from tests.support.operator_process import OperatorProcess


def running_pods(cluster: Cluster, namespace: str, name: str) -> list[Any]:
    pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={name}").items
    return [pod for pod in pods if pod.metadata.deletion_timestamp is None]


def ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def ready_pods(cluster: Cluster, namespace: str, name: str, count: int) -> list[Any]:
    pods = [pod for pod in running_pods(cluster, namespace, name) if ready(pod)]
    return pods if len(pods) == count else []


def container_pid(cluster: Cluster, namespace: str, pod: str, container: str) -> int:
    """The host pid of a container's main process, from containerd's own record of it."""
    for line in cluster.node._ctr("tasks", "list").splitlines()[1:]:
        task, pid, status = line.split()
        if status != "RUNNING":
            continue
        labels = json.loads(cluster.node._ctr("containers", "info", task)).get("Labels") or {}
        if (labels.get("io.kubernetes.pod.namespace"), labels.get("io.kubernetes.pod.name"),
                labels.get("io.kubernetes.container.name")) == (namespace, pod, container):
            return int(pid)
    raise AssertionError(f"no running container {container} in {namespace}/{pod}")


class TestAPodOnTheRealNode:
    def test_it_becomes_ready_through_the_sidecars_probe_and_delivers_every_entry(
            self, cluster: Cluster, namespace: str, redis_on_node: ExposedRedis, operator: OperatorProcess) -> None:
        store = redis_on_node.client()
        create(cluster, namespace, streamgroup("orders", cluster.image, redis_on_node.address, prefix="p"))
        [pod] = eventually(lambda: ready_pods(cluster, namespace, "orders", 1), 120, "one Ready pod",
                           cluster, namespace)
        sidecar = next(c for c in pod.spec.containers if c.name == "streamgroup-sidecar")
        assert sidecar.readiness_probe.http_get.path == "/readyz"
        written = produce(store, 30)
        record = Record(store, "p")
        eventually(lambda: record.ids() == set(written), 60, "30 entries delivered", cluster, namespace)
        eventually(lambda: pending(store) == 0, 30, "nothing pending", cluster, namespace)
        assert record.pods() == {pod.metadata.name: record.count()}

    def test_kubectl_delete_pod_stops_it_within_its_grace_period_and_leaves_nothing_pending_on_it(
            self, cluster: Cluster, namespace: str, redis_on_node: ExposedRedis, operator: OperatorProcess) -> None:
        store = redis_on_node.client()
        # Slow deliveries, so the pod has entries in flight and pending when it is deleted.
        create(cluster, namespace, streamgroup("orders", cluster.image, redis_on_node.address, prefix="d",
                                               app_delay=0.2, grace=20))
        [first] = eventually(lambda: ready_pods(cluster, namespace, "orders", 1), 120, "one Ready pod",
                             cluster, namespace)
        written = produce(store, 200)
        record = Record(store, "d")
        eventually(lambda: record.count() >= 5, 60, "deliveries started", cluster, namespace)
        started = time.monotonic()
        cluster.kubectl("delete", "pod", "-n", namespace, first.metadata.name, "--wait=true", timeout=120)
        took = time.monotonic() - started
        assert took < 20, f"the pod took {took:.1f}s to stop, more than its 20 s grace period"
        # Its consumer holds nothing: what it had read but not delivered went to the group (handover).
        assert pending_by_consumer(store).get(first.metadata.name, 0) == 0
        eventually(lambda: ready_pods(cluster, namespace, "orders", 1), 120, "a replacement pod", cluster, namespace)
        eventually(lambda: record.ids() == set(written), 120, "every entry delivered", cluster, namespace)
        eventually(lambda: pending(store) == 0, 30, "nothing pending", cluster, namespace)

    def test_a_sidecar_killed_inside_the_pod_is_restarted_by_the_kubelet_and_nothing_is_lost(
            self, cluster: Cluster, namespace: str, redis_on_node: ExposedRedis, operator: OperatorProcess) -> None:
        store = redis_on_node.client()
        create(cluster, namespace, streamgroup("orders", cluster.image, redis_on_node.address, prefix="k",
                                               app_delay=0.05, claim={"minIdle": "2s"}))
        [pod] = eventually(lambda: ready_pods(cluster, namespace, "orders", 1), 120, "one Ready pod",
                           cluster, namespace)
        written = produce(store, 300)
        record = Record(store, "k")
        eventually(lambda: record.count() >= 10, 60, "deliveries started", cluster, namespace)
        os.kill(container_pid(cluster, namespace, pod.metadata.name, "streamgroup-sidecar"), signal.SIGKILL)

        def restarted() -> bool:
            now = cluster.core.read_namespaced_pod(pod.metadata.name, namespace)
            [status] = [s for s in now.status.container_statuses if s.name == "streamgroup-sidecar"]
            return bool(status.restart_count >= 1 and status.ready)

        eventually(restarted, 120, "the sidecar restarted in the same pod and Ready", cluster, namespace)
        eventually(lambda: record.ids() == set(written), 120, "every entry delivered", cluster, namespace)
        eventually(lambda: pending(store) == 0, 30, "nothing pending", cluster, namespace)
        assert running_pods(cluster, namespace, "orders")[0].metadata.name == pod.metadata.name
