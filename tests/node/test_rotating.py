"""A rotated Redis password on the real node: the Secret changes, the pods roll, no entry is lost."""

from __future__ import annotations

import base64

import redis
from kubernetes import client

from tests.node.conftest import Cluster, ExposedRedis, exposed
from tests.node.test_deployments import deployment_settled
from tests.node.test_pods import ready_pods, running_pods
from tests.node.workloads import Producer, Record, create, eventually, pending, streamgroup
from tests.support.operator_process import OperatorProcess
from tests.support.redis_server import RedisServer


def test_a_new_password_in_redis_and_the_secret_rolls_the_pods_and_loses_no_entry(
        cluster: Cluster, namespace: str, operator: OperatorProcess, redis_on_node: ExposedRedis) -> None:
    # The app records in its own Redis (redis_on_node), so what it records does not depend on the rotation.
    with exposed(cluster, RedisServer(password="first-password").start()) as source:
        server, address, store = source.server, source.address, source.client()
        cluster.core.create_namespaced_secret(namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name="redis-auth"),
            data={"password": base64.b64encode(b"first-password").decode()}))
        create(cluster, namespace, streamgroup(
            "orders", cluster.image, address, prefix="rot", record_address=redis_on_node.address,
            app_delay=0.02, replicas=2,
            redis={"url": f"redis://{address}/0", "passwordSecretRef": {"name": "redis-auth"}}))
        before = {p.metadata.name for p in eventually(lambda: ready_pods(cluster, namespace, "orders", 2), 180,
                                                       "two Ready pods", cluster, namespace)}
        template = cluster.apps.read_namespaced_deployment("orders", namespace).spec.template
        version = template.metadata.annotations["streamgroup.io/secrets-version"]
        record = Record(redis_on_node.client(), "rot")
        with Producer(store) as producer:
            eventually(lambda: len(record.pods()) == 2, 60, "both pods delivering", cluster, namespace)
            # Redis accepts both passwords while the pods roll, then only the new one.
            store.execute_command("ACL", "SETUSER", "default", ">second-password")
            cluster.core.patch_namespaced_secret("redis-auth", namespace, {
                "data": {"password": base64.b64encode(b"second-password").decode()}})
            eventually(lambda: cluster.apps.read_namespaced_deployment("orders", namespace).spec.template.metadata
                       .annotations["streamgroup.io/secrets-version"] != version, 60, "the template's new version",
                       cluster, namespace)
            eventually(lambda: deployment_settled(cluster, namespace, "orders", 2), 300, "the rollout done",
                       cluster, namespace)
            eventually(lambda: len(set(record.pods()) - before) == 2, 60, "the new pods delivering",
                       cluster, namespace)
        store.execute_command("ACL", "SETUSER", "default", "<first-password")
        store.execute_command("CLIENT", "KILL", "TYPE", "normal")
        store = redis.Redis(host="127.0.0.1", port=server.port, password="second-password")
        assert not {p.metadata.name for p in running_pods(cluster, namespace, "orders")} & before
        written = set(producer.ids)
        eventually(lambda: written <= record.ids(), 120, f"all {len(written)} entries delivered", cluster, namespace)
        eventually(lambda: pending(store) == 0, 60, "nothing pending", cluster, namespace)
        # Only the new password is left, and the new pods still hold connections authenticated with it.
        eventually(lambda: any(c.get("name", "").startswith("streamgroup-sidecar:billing:")
                               for c in store.client_list()), 60, "the new sidecars reconnected", cluster, namespace)
