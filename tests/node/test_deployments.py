"""A StreamGroup's Deployment under the real controllers: rolling updates, scaling, a killed sidecar,
garbage collection and autoscaling, with a producer writing and the app counting what reached it."""

from __future__ import annotations

import os
import signal

import pytest
from kubernetes.client.exceptions import ApiException

from tests.kube.streamgroups import GROUP, PLURAL, VERSION
from tests.node.conftest import Cluster, ExposedRedis
from tests.node.test_pods import container_pid, ready_pods, running_pods
from tests.node.workloads import (
    Producer,
    Record,
    create,
    eventually,
    patch,
    pending,
    pending_by_consumer,
    produce,
    streamgroup,
)
from tests.support.operator_process import OperatorProcess


def deployment_settled(cluster: Cluster, namespace: str, name: str, replicas: int) -> bool:
    """The Deployment rolled out: every replica of the newest template, ready, and no other pod left."""
    found = cluster.apps.read_namespaced_deployment(name, namespace)
    status = found.status
    return bool(found.spec.replicas == replicas and status.observed_generation == found.metadata.generation
                and (status.updated_replicas or 0) == replicas and (status.ready_replicas or 0) == replicas
                and (status.replicas or 0) == replicas
                and len(cluster.core.list_namespaced_pod(
                    namespace, label_selector=f"app.kubernetes.io/instance={name}").items) == replicas)


class TestWithAProducerWritingThroughout:
    def test_an_edit_rolls_the_three_replicas_without_losing_or_leaving_anything_pending(
            self, cluster: Cluster, namespace: str, redis_on_node: ExposedRedis, operator: OperatorProcess) -> None:
        store = redis_on_node.client()
        create(cluster, namespace, streamgroup("orders", cluster.image, redis_on_node.address, prefix="r",
                                               app_delay=0.02, replicas=3))
        before = {pod.metadata.name for pod in eventually(lambda: ready_pods(cluster, namespace, "orders", 3), 180,
                                                          "three Ready pods", cluster, namespace)}
        record = Record(store, "r")
        with Producer(store) as producer:
            eventually(lambda: len(record.pods()) == 3, 60, "every pod delivering", cluster, namespace)
            # Any edit of the template's pod spec rolls; a longer delivery timeout is an edit users make.
            patch(cluster, namespace, "orders", {"delivery": {"timeout": "20s"}})
            eventually(lambda: cluster.apps.read_namespaced_deployment("orders", namespace).metadata.generation > 1,
                       30, "the operator applied the edit", cluster, namespace)
            eventually(lambda: deployment_settled(cluster, namespace, "orders", 3), 300, "the rollout done",
                       cluster, namespace)
            eventually(lambda: len(set(record.pods()) - before) == 3, 60, "the new pods delivering",
                       cluster, namespace)
        written = set(producer.ids)
        after = {pod.metadata.name for pod in running_pods(cluster, namespace, "orders")}
        assert not after & before, "every pod was replaced"
        eventually(lambda: written <= record.ids(), 120, f"all {len(written)} entries delivered", cluster, namespace)
        eventually(lambda: pending(store) == 0, 60, "nothing pending", cluster, namespace)
        assert record.ids() == written

    def test_scaling_three_to_one_hands_the_stopped_pods_entries_to_the_survivor_at_once(
            self, cluster: Cluster, namespace: str, redis_on_node: ExposedRedis, operator: OperatorProcess) -> None:
        store = redis_on_node.client()
        # Reclaiming by idle time is pushed out of reach: only the handover can move entries in time.
        create(cluster, namespace, streamgroup("orders", cluster.image, redis_on_node.address, prefix="s",
                                               app_delay=0.2, replicas=3, claim={"minIdle": "10m"}))
        eventually(lambda: ready_pods(cluster, namespace, "orders", 3), 180, "three Ready pods", cluster, namespace)
        record = Record(store, "s")
        with Producer(store, per_second=20) as producer:
            eventually(lambda: len(record.pods()) == 3, 60, "every pod delivering", cluster, namespace)
            eventually(lambda: len([n for n in pending_by_consumer(store).values() if n]) == 3, 30,
                       "entries in flight on every pod", cluster, namespace)
            patch(cluster, namespace, "orders", {"replicas": 1})
            eventually(lambda: deployment_settled(cluster, namespace, "orders", 1), 120, "one replica left",
                       cluster, namespace)
            [survivor] = running_pods(cluster, namespace, "orders")
            stopped = set(record.pods()) - {survivor.metadata.name}
            assert len(stopped) == 2
            held = pending_by_consumer(store)
            assert all(held.get(name, 0) == 0 for name in stopped), f"the stopped pods still hold entries: {held}"
        written = set(producer.ids)
        # Well inside claim.minIdle (10 minutes): handed over, not reclaimed.
        eventually(lambda: written <= record.ids(), 120, f"all {len(written)} entries delivered", cluster, namespace)
        eventually(lambda: pending(store) == 0, 60, "nothing pending", cluster, namespace)

    def test_a_sidecar_killed_with_sigkill_in_one_of_three_pods_is_reclaimed_and_nothing_is_lost(
            self, cluster: Cluster, namespace: str, redis_on_node: ExposedRedis, operator: OperatorProcess) -> None:
        store = redis_on_node.client()
        create(cluster, namespace, streamgroup("orders", cluster.image, redis_on_node.address, prefix="x",
                                               app_delay=0.1, replicas=3, claim={"minIdle": "3s", "interval": "1s"}))
        pods = eventually(lambda: ready_pods(cluster, namespace, "orders", 3), 180, "three Ready pods",
                          cluster, namespace)
        record = Record(store, "x")
        victim = pods[0].metadata.name
        with Producer(store) as producer:
            eventually(lambda: pending_by_consumer(store).get(victim, 0) > 0, 60, f"entries in flight on {victim}",
                       cluster, namespace)
            os.kill(container_pid(cluster, namespace, victim, "streamgroup-sidecar"), signal.SIGKILL)
            eventually(lambda: ready_pods(cluster, namespace, "orders", 3), 120, "all three Ready again",
                       cluster, namespace)
        written = set(producer.ids)
        eventually(lambda: written <= record.ids(), 120, f"all {len(written)} entries delivered", cluster, namespace)
        eventually(lambda: pending(store) == 0, 60, "nothing pending", cluster, namespace)


class TestDeletingAStreamGroup:
    @pytest.mark.parametrize("policy", ["Retain", "Delete"])
    def test_its_deployment_and_pods_go_by_garbage_collection_and_the_group_as_its_policy_says(
            self, cluster: Cluster, namespace: str, redis_on_node: ExposedRedis, operator: OperatorProcess,
            policy: str) -> None:
        store = redis_on_node.client()
        create(cluster, namespace, streamgroup("orders", cluster.image, redis_on_node.address, prefix="g",
                                               deletionPolicy=policy))
        eventually(lambda: ready_pods(cluster, namespace, "orders", 1), 120, "one Ready pod", cluster, namespace)
        written = produce(store, 10)
        eventually(lambda: Record(store, "g").ids() == set(written), 60, "delivered", cluster, namespace)
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "orders")

        def gone() -> bool:
            try:
                cluster.apps.read_namespaced_deployment("orders", namespace)
            except ApiException as exc:
                return exc.status == 404 and not cluster.core.list_namespaced_pod(namespace).items
            return False

        eventually(gone, 120, "Deployment and pods removed", cluster, namespace)
        groups = [g["name"].decode() for g in store.xinfo_groups("orders")]
        assert groups == (["billing"] if policy == "Retain" else [])


class TestAutoscalingUnderTheDeploymentController:
    def test_a_group_at_zero_starts_a_pod_on_the_first_entry_and_returns_to_zero_after_the_window(
            self, cluster: Cluster, namespace: str, redis_on_node: ExposedRedis, operator: OperatorProcess) -> None:
        store = redis_on_node.client()
        create(cluster, namespace, streamgroup("orders", cluster.image, redis_on_node.address, prefix="z",
                                               autoscaling={"minReplicas": 0, "maxReplicas": 2,
                                                            "targetLagPerReplica": 100,
                                                            "scaleDownStabilizationSeconds": 5}))
        eventually(lambda: cluster.apps.read_namespaced_deployment("orders", namespace).spec.replicas == 0, 60,
                   "scaled to zero", cluster, namespace)
        assert not running_pods(cluster, namespace, "orders")
        [first] = produce(store, 1)
        eventually(lambda: ready_pods(cluster, namespace, "orders", 1), 120, "a pod for the first entry",
                   cluster, namespace)
        eventually(lambda: Record(store, "z").ids() == {first}, 60, "the first entry delivered", cluster, namespace)
        eventually(lambda: deployment_settled(cluster, namespace, "orders", 0), 120, "back to zero pods",
                   cluster, namespace)
        assert pending(store) == 0

    def test_replicas_rise_under_lag_deliver_it_and_fall_back_after_the_window(
            self, cluster: Cluster, namespace: str, redis_on_node: ExposedRedis, operator: OperatorProcess) -> None:
        store = redis_on_node.client()
        create(cluster, namespace, streamgroup("orders", cluster.image, redis_on_node.address, prefix="u",
                                               app_delay=0.1, delivery={"maxInFlight": 4},
                                               autoscaling={"minReplicas": 1, "maxReplicas": 3,
                                                            "targetLagPerReplica": 20,
                                                            "scaleDownStabilizationSeconds": 5}))
        eventually(lambda: ready_pods(cluster, namespace, "orders", 1), 120, "one Ready pod", cluster, namespace)
        written = produce(store, 600)
        eventually(lambda: ready_pods(cluster, namespace, "orders", 3), 180, "three Ready pods under lag",
                   cluster, namespace)
        record = Record(store, "u")
        eventually(lambda: len(record.pods()) == 3, 120, "all three delivering", cluster, namespace)
        eventually(lambda: record.ids() == set(written), 300, "the lag delivered", cluster, namespace)
        eventually(lambda: deployment_settled(cluster, namespace, "orders", 1), 120, "back to one replica",
                   cluster, namespace)
        eventually(lambda: pending(store) == 0, 60, "nothing pending", cluster, namespace)
