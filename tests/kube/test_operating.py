"""The operator against a real kube-apiserver and real redis-server processes.

No kubelet runs here: Deployments are stored but no pod starts. Where a test needs what a
kubelet would do, it does it itself: it reports replicas ready on the Deployment's status,
creates Pod objects for live replicas, or starts sidecar processes with the env the operator
wrote into the Deployment.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from streamgroup_sidecar.config import parse_settings
from tests.kube.streamgroups import (
    GROUP,
    PLURAL,
    VERSION,
    condition,
    create,
    deployment,
    eventually,
    get_sg,
    manifest,
    play_kubelet_ready,
    replicas,
    sidecar_env,
)
from tests.support.apps import RecordingApp
from tests.support.kube import ControlPlane
from tests.support.operator_process import OperatorProcess
from tests.support.redis_server import RedisServer, make_tls
from tests.support.redis_topologies import RedisCluster, RedisSentinel
from tests.support.sidecar_process import SidecarProcess

REPO = Path(__file__).resolve().parents[2]


class TestReconciliation:
    def test_a_streamgroup_becomes_a_consumer_group_and_a_deployment_with_the_sidecar(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        redis_server.client().xadd("orders", {"k": "v"})
        created = create(apis, namespace, manifest("billing", redis_server.url, delivery={"maxInFlight": 7}))
        body = eventually(lambda: deployment(apis, namespace, "billing"), what="the Deployment")
        groups = redis_server.client().xinfo_groups("orders")
        assert [g["name"] for g in groups] == [b"billing"]
        [owner] = body["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("StreamGroup", "billing", created["metadata"]["uid"])
        containers = {c["name"]: c for c in body["spec"]["template"]["spec"]["containers"]}
        assert set(containers) == {"app", "streamgroup-sidecar"}
        settings = parse_settings([], sidecar_env(body, "billing-abc", {}))
        assert settings.group.streams == ("orders",) and settings.group.group == "billing"
        assert settings.delivery.max_in_flight == 7
        assert settings.group.consumer == "billing-abc"
        sg = eventually(lambda: (s := get_sg(apis, namespace, "billing")).get("status", {}).get(
            "observedGeneration") == 1 and s, what="observedGeneration")
        assert condition(sg, "RedisReachable")["status"] == "True"
        assert condition(sg, "GroupReady")["status"] == "True"
        assert sg["status"]["selector"] == "streamgroup.io/name=billing"

    def test_editing_the_spec_updates_the_deployment_and_the_observed_generation(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        create(apis, namespace, manifest("billing", redis_server.url))
        eventually(lambda: deployment(apis, namespace, "billing"), what="the Deployment")
        apis.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "billing",
                                                   {"spec": {"delivery": {"maxInFlight": 99, "path": "/in"}}})

        def updated() -> bool:
            env = sidecar_env(deployment(apis, namespace, "billing"), "p", {})
            return env["SG_MAX_IN_FLIGHT"] == "99" and env["SG_APP_URL"] == "http://127.0.0.1:8080/in"

        eventually(updated, what="the updated sidecar env")
        eventually(lambda: get_sg(apis, namespace, "billing")["status"].get("observedGeneration") == 2,
                   what="generation 2 observed")

    def test_an_existing_group_is_left_where_it_is(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        r = redis_server.client()
        r.xadd("orders", {"k": "v"}, id="5-0")
        r.xgroup_create("orders", "billing", id="$")
        create(apis, namespace, manifest("billing", redis_server.url, startFrom="0"))
        eventually(lambda: condition(get_sg(apis, namespace, "billing"), "GroupReady")["status"] == "True",
                   what="GroupReady")
        assert r.xinfo_groups("orders")[0]["last-delivered-id"] == b"5-0"

    def test_kubectl_scale_sets_replicas_when_autoscaling_is_off(
        self, apis: Any, control_plane: ControlPlane, namespace: str, operator: OperatorProcess,
        redis_server: RedisServer,
    ) -> None:
        create(apis, namespace, manifest("billing", redis_server.url, replicas=2))
        eventually(lambda: replicas(apis, namespace, "billing") == 2, what="2 replicas")
        subprocess.run([*control_plane.kubectl_command(), "-n", namespace, "scale", "streamgroup/billing",
                        "--replicas=5"], check=True, capture_output=True, timeout=30)
        eventually(lambda: replicas(apis, namespace, "billing") == 5, what="5 replicas")
        scale = apis.custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "billing")
        assert scale["spec"]["replicas"] == 5
        eventually(lambda: apis.custom.get_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, PLURAL, "billing")["status"].get("replicas") == 5, what="scale status")


class TestValidation:
    @pytest.mark.parametrize("change, message", [
        ({"redis": {"url": "redis://user:secret@r:6379/0"}}, "must not contain a password"),
        ({"redis": {"url": "redis://r:6379/0", "host": "r"}}, "exactly one of redis.url and redis.host"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "must not exceed"),
        ({"delivery": {"body": "raw"}}, "bodyField is required"),
        ({"startFrom": "yesterday"}, "startFrom must be"),
        ({"streams": []}, "give streams, partitionedStreams or both"),
        ({"partitionedStreams": [{"name": "orders", "partitions": 0}]}, "should be greater than or equal to 1"),
        ({"partitionedStreams": [{"name": "orders"}]}, "partitions: Required value"),
        ({"delivery": {"deadLetterStream": "dead"}}, "must contain {stream}"),
        ({"delivery": {"timeout": "soon"}}, "should match"),
        ({"deletionPolicy": "Shred"}, "Unsupported value"),
        ({"delivery": {"batch": {"size": 64}}}, "batch.size must not exceed delivery.maxInFlight"),
        ({"delivery": {"batch": {"size": 10}, "body": "raw", "bodyField": "p"}}, "batch needs delivery.body json"),
        ({"delivery": {"batch": {"size": 10, "maxWait": "a while"}}}, "should match"),
        ({"sidecar": {"httpClient": "curl"}}, "Unsupported value"),
        ({"redis": {"url": "redis://s:26379", "mode": "sentinel"}}, "goes with redis.mode sentinel"),
        ({"redis": {"url": "redis://r:6379", "sentinel": {"masterName": "m"}}}, "goes with redis.mode sentinel"),
        ({"redis": {"url": "redis://a:1,b:2"}}, "set redis.mode to cluster or sentinel"),
        ({"redis": {"host": "r", "db": 2, "mode": "cluster"}}, "only database 0"),
        ({"redis": {"url": "redis://r", "mode": "replicated"}}, "Unsupported value"),
    ])
    def test_invalid_specs_are_rejected_by_the_api_server_with_a_clear_message(
        self, apis: Any, namespace: str, change: dict[str, Any], message: str
    ) -> None:
        body = manifest("bad", "redis://r:6379/0")
        body["spec"].update(change)
        with pytest.raises(ApiException) as info:
            create(apis, namespace, body)
        assert info.value.status == 422
        assert message in info.value.body

    def test_the_group_cannot_be_renamed(self, apis: Any, namespace: str) -> None:
        create(apis, namespace, manifest("billing", "redis://r:6379/0"))
        with pytest.raises(ApiException) as info:
            apis.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "billing",
                                                       {"spec": {"group": "other"}})
        assert "group is immutable" in info.value.body

    def test_cluster_and_sentinel_set_ups_are_accepted(self, apis: Any, namespace: str) -> None:
        create(apis, namespace, manifest("on-cluster", "redis://r-0:6379,r-1:6379",
                                         redis={"url": "redis://r-0:6379,r-1:6379", "mode": "cluster"}))
        sg = create(apis, namespace, manifest("on-sentinel", "redis://s", redis={
            "host": "sentinels", "port": 26379, "mode": "sentinel",
            "sentinel": {"masterName": "main", "passwordSecretRef": {"name": "s"}}}))
        assert sg["spec"]["redis"]["sentinel"]["passwordSecretRef"]["key"] == "password"

    def test_defaults_are_filled_in_by_the_api_server(self, apis: Any, namespace: str) -> None:
        sg = create(apis, namespace, manifest("billing", "redis://r:6379/0", startFrom="$"))
        assert sg["spec"]["deletionPolicy"] == "Retain"
        assert sg["spec"]["replicas"] == 1

    def test_batch_mode_within_max_in_flight_is_accepted_with_its_wait_defaulted(
        self, apis: Any, namespace: str
    ) -> None:
        sg = create(apis, namespace, manifest("billing", "redis://r:6379/0",
                                              delivery={"maxInFlight": 400, "batch": {"size": 100}}))
        assert sg["spec"]["delivery"]["batch"] == {"size": 100, "maxWait": "5ms"}


    def test_a_spec_the_schema_lets_through_but_that_cannot_work_is_reported_and_builds_nothing(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        # The schema's pattern lets a 13th month through; parsing the time is the core's job.
        create(apis, namespace, manifest("billing", redis_server.url, startFrom="2024-13-01T00:00:00Z"))
        sg = eventually(lambda: (s := get_sg(apis, namespace, "billing")).get("status", {}).get("conditions")
                        and condition(s, "Ready")["status"] == "False" and s, what="the spec refused")
        ready = condition(sg, "Ready")
        assert ready["reason"] == "InvalidSpec"
        assert "spec.startFrom" in ready["message"] and "2024-13-01" in ready["message"]
        with pytest.raises(ApiException) as missing:
            apis.apps.read_namespaced_deployment("billing", namespace)
        assert missing.value.status == 404
        assert not redis_server.client().exists("orders")  # no group made, so no stream either


class TestTLS:
    def test_mutual_tls_from_secrets_leaves_the_operators_temporary_folder_empty(
        self, apis: Any, namespace: str, kubeconfig: Path, streamgroup_crd: None, tmp_path: Path
    ) -> None:
        tls = make_tls(tmp_path / "tls", "redis.test")
        server = RedisServer(tls=tls).start()
        scratch = tmp_path / "operator-tmp"
        scratch.mkdir()
        operator = OperatorProcess(kubeconfig, [namespace], TMPDIR=str(scratch)).start()
        try:
            apis.core.create_namespaced_secret(namespace, client.V1Secret(
                metadata=client.V1ObjectMeta(name="redis-ca"),
                data={"ca.crt": base64.b64encode((tls / "ca.crt").read_bytes()).decode()}))
            apis.core.create_namespaced_secret(namespace, client.V1Secret(
                metadata=client.V1ObjectMeta(name="redis-client"), type="kubernetes.io/tls",
                data={"tls.crt": base64.b64encode((tls / "client.crt").read_bytes()).decode(),
                      "tls.key": base64.b64encode((tls / "client.key").read_bytes()).decode()}))
            url = f"rediss://127.0.0.1:{server.port}/0"
            create(apis, namespace, manifest("billing", url, redis={"url": url, "tls": {
                "enabled": True, "caSecretRef": {"name": "redis-ca"}, "clientCertSecretRef": {"name": "redis-client"},
                "serverName": "redis.test"}}))
            sg = eventually(lambda: (s := get_sg(apis, namespace, "billing")).get("status", {}).get("conditions")
                            and condition(s, "GroupReady")["status"] == "True" and s, what="the group over TLS")
            assert condition(sg, "RedisReachable")["status"] == "True"
            assert [g["name"] for g in server.client().xinfo_groups("orders")] == [b"billing"]
            # Nothing at all: the Redis client's key stays in memory, and so do the kubeconfig's embedded
            # certificate and key (the kubernetes client would write those to files here).
            assert sorted(str(path) for path in scratch.rglob("*")) == []
        finally:
            print("operator log (end):\n" + operator.tail(100))
            operator.stop()
            server.cleanup()


class TestRedisTopologies:
    def test_on_a_cluster_the_group_is_made_on_every_partition_and_lag_sums_them_for_autoscaling(
        self, apis: Any, namespace: str, operator: OperatorProcess
    ) -> None:
        cluster = RedisCluster().start()
        try:
            url = f"redis://{cluster.seeds}"
            create(apis, namespace, manifest("billing", url, redis={"url": url, "mode": "cluster"},
                                             streams=["refunds"],
                                             partitionedStreams=[{"name": "orders", "partitions": 6}],
                                             autoscaling={"minReplicas": 1, "maxReplicas": 5,
                                                          "targetLagPerReplica": 10}))
            eventually(lambda: condition(get_sg(apis, namespace, "billing"), "GroupReady").get("status") == "True",
                       what="groups on the cluster")
            keys = ["refunds"] + [f"orders:{{{n}}}" for n in range(6)]
            data = cluster.client()
            try:
                for key in keys:
                    assert [g["name"] for g in data.xinfo_groups(key)] == [b"billing"], key
                for n, key in enumerate(keys):  # refunds 7, then 6 + 5 + ... + 1 = 21 over the partitions
                    for _ in range(7 - n):
                        data.xadd(key, {"n": str(n)})
            finally:
                data.close()
            assert len({cluster.primary_of(key).port for key in keys}) > 1
            status = eventually(lambda: (s := get_sg(apis, namespace, "billing").get("status", {})).get("lag") == 28
                                and s, what="lag 28")
            assert status["partitionedStreams"] == [{"name": "orders", "partitions": 6, "lag": 21, "pending": 0}]
            eventually(lambda: replicas(apis, namespace, "billing") == 3, what="3 replicas for a total lag of 28")
            env = sidecar_env(deployment(apis, namespace, "billing"), "p", {})
            assert env["SG_STREAMS"] == ",".join(keys) and env["SG_REDIS_MODE"] == "cluster"
            _, metrics = operator.get("/metrics")
            assert 'streamgroup_partitioned_stream_lag{group="billing",name="billing",namespace="' in metrics
        finally:
            cluster.cleanup()

    def test_behind_sentinels_the_operator_finds_the_primary_with_the_sentinels_own_password(
        self, apis: Any, namespace: str, operator: OperatorProcess
    ) -> None:
        sentinel = RedisSentinel(password="data-pw", sentinel_password="sentinel-pw").start()
        try:
            for name, password in (("data", "data-pw"), ("watch", "sentinel-pw")):
                apis.core.create_namespaced_secret(namespace, client.V1Secret(
                    metadata=client.V1ObjectMeta(name=name),
                    data={"password": base64.b64encode(password.encode()).decode()}))
            url = f"redis://{sentinel.sentinel_addresses}"
            create(apis, namespace, manifest("billing", url, redis={
                "url": url, "mode": "sentinel", "passwordSecretRef": {"name": "data"},
                "sentinel": {"masterName": sentinel.master_name, "passwordSecretRef": {"name": "watch"}}}))
            eventually(lambda: condition(get_sg(apis, namespace, "billing"), "GroupReady").get("status") == "True",
                       what="the group on the primary")
            primary = sentinel.data_client(sentinel.node(sentinel.primary_port()))
            assert [g["name"] for g in primary.xinfo_groups("orders")] == [b"billing"]
            # GroupReady may come from the resync timer before the change handler applied the Deployment.
            body = eventually(lambda: deployment(apis, namespace, "billing"), what="the Deployment")
            env = sidecar_env(body, "p", {("data", "password"): "data-pw", ("watch", "password"): "sentinel-pw"})
            assert env["SG_REDIS_MODE"] == "sentinel" and env["SG_REDIS_SENTINEL_PASSWORD"] == "sentinel-pw"
            assert "sentinel-pw" not in operator.logs() and "data-pw" not in operator.logs()
        finally:
            sentinel.cleanup()


class TestAutoscaling:
    def test_replicas_follow_lag_up_to_max_and_back_to_min_after_the_window(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        r = redis_server.client()
        create(apis, namespace, manifest("billing", redis_server.url, autoscaling={
            "minReplicas": 1, "maxReplicas": 3, "targetLagPerReplica": 10,
            "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 3}))
        eventually(lambda: replicas(apis, namespace, "billing") == 1, what="min replicas")
        pipe = r.pipeline()
        for n in range(25):
            pipe.xadd("orders", {"n": str(n)})
        pipe.execute()
        eventually(lambda: replicas(apis, namespace, "billing") == 3, what="3 replicas for lag 25")
        eventually(lambda: (s := get_sg(apis, namespace, "billing")["status"]).get("lag") == 25
                   and s["desiredReplicas"] == 3, what="lag and decision in status")
        r.xadd("orders", {"n": "more"})
        for _ in range(5):  # far above the target: still capped at max
            r.xadd("orders", {"n": "more"})
        eventually(lambda: get_sg(apis, namespace, "billing")["status"]["lag"] == 31, what="lag 31")
        assert replicas(apis, namespace, "billing") == 3
        # Consume and acknowledge everything, as the replicas would.
        for _, entries in r.xreadgroup("billing", "worker", {"orders": ">"}):
            r.xack("orders", "billing", *[entry_id for entry_id, _ in entries])
        drained = time.monotonic()
        eventually(lambda: get_sg(apis, namespace, "billing")["status"]["lag"] == 0, what="lag 0")
        eventually(lambda: replicas(apis, namespace, "billing") == 1, timeout=20, what="back to min")
        assert time.monotonic() - drained >= 2.5, "the scale-down waited for its stabilization window"

    def test_a_group_scaled_to_zero_wakes_up_on_the_first_entry(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        create(apis, namespace, manifest("billing", redis_server.url, autoscaling={
            "minReplicas": 0, "maxReplicas": 4, "targetLagPerReplica": 100, "scaleDownStabilizationSeconds": 0}))
        eventually(lambda: deployment(apis, namespace, "billing"), what="the Deployment")
        eventually(lambda: condition(get_sg(apis, namespace, "billing"), "DeploymentReady")["reason"]
                   == "ScaledToZero", what="scaled to zero")
        assert replicas(apis, namespace, "billing") == 0
        redis_server.client().xadd("orders", {"first": "1"})
        eventually(lambda: replicas(apis, namespace, "billing") == 1, what="activation")

    def test_unknown_lag_falls_back_to_a_bounded_count(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        r = redis_server.client()
        ids = [r.xadd("orders", {"n": str(n)}) for n in range(30)]
        r.xgroup_create("orders", "billing", id="0")
        r.xdel("orders", ids[3])  # Redis cannot compute lag after a deletion inside the range
        assert r.xinfo_groups("orders")[0]["lag"] is None
        create(apis, namespace, manifest("billing", redis_server.url, autoscaling={
            "minReplicas": 1, "maxReplicas": 5, "targetLagPerReplica": 10}))
        eventually(lambda: get_sg(apis, namespace, "billing")["status"].get("lag") == 29, what="counted lag")
        eventually(lambda: replicas(apis, namespace, "billing") == 3, what="scaled on the counted lag")


class TestDeletion:
    def test_retain_keeps_the_group_and_delete_destroys_it_unless_shared(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        r = redis_server.client()
        create(apis, namespace, manifest("kept", redis_server.url, streams=["a"], group="g1"))
        create(apis, namespace, manifest("gone", redis_server.url, streams=["b"], group="g2",
                                         deletionPolicy="Delete"))
        create(apis, namespace, manifest("shared-1", redis_server.url, streams=["c"], group="g3",
                                         deletionPolicy="Delete"))
        create(apis, namespace, manifest("shared-2", redis_server.url, streams=["c"], group="g3"))
        for stream in "abc":
            eventually(lambda s=stream: r.exists(s) and r.xinfo_groups(s), what=f"group on {stream}")
        for name in ("kept", "gone", "shared-1"):
            apis.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

        def deleted(name: str) -> bool:
            try:
                get_sg(apis, namespace, name)
            except ApiException as exc:
                return exc.status == 404
            return False

        for name in ("kept", "gone", "shared-1"):
            eventually(lambda n=name: deleted(n), what=f"{name} deleted (finalizer released)")
        assert [g["name"] for g in r.xinfo_groups("a")] == [b"g1"]
        assert r.xinfo_groups("b") == []
        assert [g["name"] for g in r.xinfo_groups("c")] == [b"g3"], "another StreamGroup still uses it"


class TestRedisFaults:
    def test_redis_down_is_reported_and_recovery_brings_ready_back(
        self, apis: Any, namespace: str, operator: OperatorProcess
    ) -> None:
        server = RedisServer(appendonly=True, password="s3cr3t-pw").start()
        try:
            apis.core.create_namespaced_secret(namespace, client.V1Secret(
                metadata=client.V1ObjectMeta(name="redis-auth"),
                data={"password": base64.b64encode(b"s3cr3t-pw").decode()}))
            url = f"redis://127.0.0.1:{server.port}/0"
            create(apis, namespace, manifest("billing", url, redis={"url": url,
                                                                    "passwordSecretRef": {"name": "redis-auth"}}))
            eventually(lambda: deployment(apis, namespace, "billing"), what="the Deployment")
            play_kubelet_ready(apis, namespace, "billing")
            eventually(lambda: condition(get_sg(apis, namespace, "billing"), "Ready")["status"] == "True",
                       what="Ready")
            server.stop()
            sg = eventually(lambda: (s := get_sg(apis, namespace, "billing")) and
                            condition(s, "RedisReachable")["status"] == "False" and s, what="RedisReachable False")
            assert condition(sg, "RedisReachable")["reason"] == "Unreachable"
            assert condition(sg, "Ready")["status"] == "False"
            assert "s3cr3t-pw" not in str(sg)
            server.start()
            eventually(lambda: condition(get_sg(apis, namespace, "billing"), "Ready")["status"] == "True",
                       what="Ready again")
        finally:
            server.cleanup()

    def test_a_wrong_password_is_reported_without_revealing_it(
        self, apis: Any, namespace: str, operator: OperatorProcess
    ) -> None:
        server = RedisServer(password="right-one").start()
        try:
            apis.core.create_namespaced_secret(namespace, client.V1Secret(
                metadata=client.V1ObjectMeta(name="redis-auth"),
                data={"password": base64.b64encode(b"wrong-one").decode()}))
            url = f"redis://127.0.0.1:{server.port}/0"
            create(apis, namespace, manifest("billing", url, redis={"url": url,
                                                                    "passwordSecretRef": {"name": "redis-auth"}}))
            sg = eventually(lambda: (s := get_sg(apis, namespace, "billing")).get("status", {}).get("conditions")
                            and condition(s, "RedisReachable")["status"] == "False" and s, what="auth failure")
            assert condition(sg, "RedisReachable")["reason"] == "AuthenticationFailed"
            assert "wrong-one" not in str(sg) and "right-one" not in str(sg)
            events = apis.core.list_namespaced_event(namespace)
            assert all("wrong-one" not in (e.message or "") for e in events.items)
            assert "wrong-one" not in operator.logs()
        finally:
            server.cleanup()


class TestConsumerHygiene:
    def test_consumers_of_no_live_replica_are_removed_after_their_entries_are_handed_over(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        r = redis_server.client()
        for n in range(5):
            r.xadd("orders", {"n": str(n)})
        r.xgroup_create("orders", "billing", id="0")
        r.xreadgroup("billing", "billing-old-pod", {"orders": ">"}, count=3)   # crashed with 3 in hand
        r.xreadgroup("billing", "billing-live-pod", {"orders": ">"}, count=2)  # alive
        create(apis, namespace, manifest("billing", redis_server.url))
        eventually(lambda: deployment(apis, namespace, "billing"), what="the Deployment")
        apis.core.create_namespaced_pod(namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(name="billing-live-pod", labels={"streamgroup.io/name": "billing"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="billing:1")])))
        time.sleep(1.2)  # the old consumer is idle beyond the limit (1s in this test)

        def cleaned() -> bool:
            return [c["name"] for c in r.xinfo_consumers("orders", "billing")] == [b"billing-live-pod"]

        eventually(cleaned, what="the dead consumer removed")
        summary = r.xpending("orders", "billing")
        assert summary["pending"] == 5, "no pending entry was lost"
        assert {c["name"]: c["pending"] for c in summary["consumers"]} == {b"billing-live-pod": 5}


class TestOperatorMetrics:
    def test_metrics_report_each_group_and_pass_promtool(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        r = redis_server.client()
        create(apis, namespace, manifest("billing", redis_server.url))
        eventually(lambda: get_sg(apis, namespace, "billing").get("status", {}).get("lag") == 0, what="status")
        for n in range(4):
            r.xadd("orders", {"n": str(n)})
        labels = f'group="billing",name="billing",namespace="{namespace}",stream="orders"'
        text = eventually(lambda: (t := operator.get("/metrics")[1]) and f"streamgroup_lag{{{labels}}} 4.0" in t and t,
                          what="lag in metrics")
        assert f"streamgroup_pending{{{labels}}} 0.0" in text
        assert f"streamgroup_dead_letter_length{{{labels}}} 0.0" in text
        assert 'streamgroup_operator_reconciles_total{kind="resync",result="ok"}' in text
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr


class TestEndToEnd:
    async def test_sidecars_started_from_the_deployment_deliver_and_status_shows_lag_falling_to_zero(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        app = await RecordingApp().start()
        sidecars: list[SidecarProcess] = []
        try:
            r = redis_server.client()
            for n in range(300):
                r.xadd("orders", {"n": str(n)})
            create(apis, namespace, manifest("billing", redis_server.url, replicas=2,
                                             delivery={"port": app.port, "path": "/events"}))
            body = await asyncio.to_thread(eventually, lambda: deployment(apis, namespace, "billing"))
            await asyncio.to_thread(eventually, lambda: get_sg(apis, namespace, "billing")["status"].get("lag") == 300,
                                    what="lag 300 before any replica runs")
            # Play the kubelet: one sidecar per replica, with the env the operator wrote.
            for index in range(body["spec"]["replicas"]):
                pod = f"billing-{index}"
                apis.core.create_namespaced_pod(namespace, client.V1Pod(
                    metadata=client.V1ObjectMeta(name=pod, labels={"streamgroup.io/name": "billing"}),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="billing:1")])))
                env = sidecar_env(body, pod, {})
                env.update({"SG_HEALTH_HOST": "127.0.0.1"})
                process = SidecarProcess(env)
                process.env["SG_HEALTH_PORT"] = str(process.health_port)
                sidecars.append(process.start())
            for process in sidecars:
                await asyncio.to_thread(process.wait_ready)
            await app.wait_until(lambda: len({r.id for r in app.succeeded()}) >= 300, timeout=60)
            # Both replicas joined the group (a consumer exists from its first read, even if idle).
            await asyncio.to_thread(
                eventually, lambda: (s := get_sg(apis, namespace, "billing")["status"]).get("lag") == 0
                and s.get("pending") == 0 and s.get("consumers") == 2, what="lag and pending 0, 2 consumers")
            assert {r.headers["streamgroup-consumer"] for r in app.received} <= {"billing-0", "billing-1"}
        finally:
            for process in sidecars:
                process.terminate()
            for process in sidecars:
                process.wait(30)
                process.cleanup()
            await app.stop()


    async def test_a_batch_mode_streamgroup_delivers_arrays_from_the_env_the_operator_wrote(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        app = await RecordingApp().start()
        process: SidecarProcess | None = None
        try:
            r = redis_server.client()
            for n in range(500):
                r.xadd("orders", {"n": str(n)})
            create(apis, namespace, manifest("billing", redis_server.url, delivery={
                "port": app.port, "path": "/events", "maxInFlight": 200, "batch": {"size": 50, "maxWait": "20ms"}}))
            body = await asyncio.to_thread(eventually, lambda: deployment(apis, namespace, "billing"))
            env = sidecar_env(body, "billing-0", {})
            env.update({"SG_HEALTH_HOST": "127.0.0.1"})
            process = SidecarProcess(env)
            process.env["SG_HEALTH_PORT"] = str(process.health_port)
            process.start()
            await asyncio.to_thread(process.wait_ready)
            await app.wait_until(lambda: sum(len(got.json()) for got in app.succeeded()) >= 500, timeout=60)
            await asyncio.to_thread(
                eventually, lambda: (s := get_sg(apis, namespace, "billing")["status"]).get("lag") == 0
                and s.get("pending") == 0, what="lag and pending 0")
            sizes = [len(got.json()) for got in app.received]
            assert sum(sizes) == 500 and max(sizes) <= 50 and len(sizes) <= 50, sizes
            assert {got.headers["streamgroup-batch-size"] for got in app.received} == {str(n) for n in sizes}
        finally:
            if process is not None:
                process.terminate()
                process.wait(30)
                process.cleanup()
            await app.stop()


class TestSamples:
    def test_the_sample_streamgroup_is_accepted_by_the_api_server(
        self, control_plane: ControlPlane, namespace: str, streamgroup_crd: None
    ) -> None:
        result = subprocess.run([*control_plane.kubectl_command(), "apply", "-n", namespace, "--dry-run=server",
                                 "-f", str(REPO / "crds/samples/streamgroup.yaml")],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "streamgroup.streamgroup.io/billing created (server dry run)" in result.stdout
