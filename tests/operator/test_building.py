"""The Deployment built from a StreamGroup, and the SG_ contract between operator and sidecar."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from streamgroup_core.spec import parse_resource
from streamgroup_operator.building import SIDECAR_NAME, build_deployment
from streamgroup_operator.config import SidecarDefaults
from streamgroup_sidecar.config import OPTIONS, parse_settings

DEFAULTS = SidecarDefaults(image="registry.example/streamgroup:1.2.3")


def streamgroup(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "redis": {"url": "redis://redis.data:6379/2", "passwordSecretRef": {"name": "redis-auth"}},
        "streams": ["orders", "refunds"],
        "group": "billing",
        "template": {
            "metadata": {"labels": {"team": "payments"}},
            "spec": {"containers": [{"name": "app", "image": "billing:7"}], "terminationGracePeriodSeconds": 60},
        },
    }
    base.update(spec)
    return {"apiVersion": "streamgroup.io/v1alpha1", "kind": "StreamGroup",
            "metadata": {"name": "billing", "namespace": "pay", "uid": "uid-1"}, "spec": base}


def deploy(sg: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
    """The Deployment the operator builds for resource ``sg``, its spec parsed as the handlers parse it."""
    return build_deployment(sg["metadata"], parse_resource(sg), replicas, DEFAULTS)


def sidecar_of(deployment: dict[str, Any]) -> dict[str, Any]:
    [sidecar] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == SIDECAR_NAME]
    return sidecar


def as_kubelet_would(env: list[dict[str, Any]], pod: str, secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """Resolve env the way the kubelet does: plain values, the pod's name, Secret keys."""
    resolved = {}
    for var in env:
        if "value" in var:
            resolved[var["name"]] = var["value"]
        elif "fieldRef" in var["valueFrom"]:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            resolved[var["name"]] = pod
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            resolved[var["name"]] = secrets[(ref["name"], ref["key"])]
    return resolved


class TestTheSidecarContract:
    def test_the_env_the_operator_writes_is_what_the_sidecar_parses(self) -> None:
        sg = streamgroup(
            startFrom="2024-05-01T00:00:00Z",
            delivery={"port": 9000, "path": "/events", "healthPath": "/health", "maxInFlight": 64,
                      "timeout": "5s", "maxDeliveries": 4, "deadLetterStream": "dlq:{stream}",
                      "deadLetterStatuses": [422, 400], "orderingField": "account",
                      "retry": {"initial": "100ms", "max": "10s", "multiplier": 3, "jitter": 0.1},
                      "batch": {"size": 16, "maxWait": "20ms"}},
            claim={"minIdle": "45s", "interval": "5s"},
            sidecar={"logLevel": "debug", "httpClient": "pyreqwest"},
        )
        sg["spec"]["redis"]["username"] = "billing-svc"
        env = sidecar_of(deploy(sg, 2))["env"]
        settings = parse_settings([], as_kubelet_would(env, "billing-7d9f-abc", {("redis-auth", "password"): "pw"}))
        assert settings.redis.url == "redis://redis.data:6379/2"
        assert (settings.redis.username, settings.redis.password) == ("billing-svc", "pw")
        assert settings.group.streams == ("orders", "refunds")
        assert settings.group.group == "billing"
        assert settings.group.consumer == "billing-7d9f-abc"
        assert settings.group.start_from.startswith("1714521599999-")
        assert settings.delivery.app_url == "http://127.0.0.1:9000/events"
        assert settings.delivery.app_health_url == "http://127.0.0.1:9000/health"
        assert settings.delivery.max_in_flight == 64
        assert settings.delivery.request_timeout == 5.0
        assert settings.delivery.max_deliveries == 4
        assert settings.delivery.dead_letter_stream == "dlq:{stream}"
        assert settings.delivery.dead_letter_statuses == {400, 422}
        assert settings.delivery.ordering_field == "account"
        assert (settings.retry.initial, settings.retry.maximum) == (0.1, 10.0)
        assert (settings.retry.multiplier, settings.retry.jitter) == (3.0, 0.1)
        assert (settings.claim.min_idle, settings.claim.interval) == (45.0, 5.0)
        assert settings.server.port == DEFAULTS.health_port
        assert settings.shutdown.grace == 55.0, "terminationGracePeriodSeconds minus a margin"
        assert settings.log_level == "debug"
        assert (settings.delivery.batch_size, settings.delivery.batch_wait) == (16, 0.02)
        assert settings.delivery.http_client == "pyreqwest"

    def test_a_sentinel_set_up_reaches_the_sidecar_with_the_sentinels_password_from_its_secret(self) -> None:
        sg = streamgroup(redis={"url": "redis://s-0:26379,s-1:26379", "mode": "sentinel",
                                "passwordSecretRef": {"name": "redis-auth"},
                                "sentinel": {"masterName": "main", "username": "watcher",
                                             "passwordSecretRef": {"name": "sentinel-auth", "key": "pw"}}})
        env = sidecar_of(deploy(sg))["env"]
        assert "sentinel-auth" not in str([e for e in env if "value" in e])  # only a reference, never a value
        settings = parse_settings([], as_kubelet_would(env, "p", {("redis-auth", "password"): "data-pw",
                                                                  ("sentinel-auth", "pw"): "watch-pw"}))
        redis = settings.redis
        assert (redis.mode, redis.url, redis.sentinel_master) == ("sentinel", "redis://s-0:26379,s-1:26379", "main")
        assert (redis.sentinel_username, redis.sentinel_password, redis.password) == ("watcher", "watch-pw", "data-pw")

    def test_a_cluster_reaches_the_sidecar_as_its_seed_list(self) -> None:
        env = sidecar_of(deploy(streamgroup(redis={"url": "redis://r-0:6379,r-1:6379", "mode": "cluster"})))["env"]
        settings = parse_settings([], as_kubelet_would(env, "p", {}))
        assert (settings.redis.mode, settings.redis.url) == ("cluster", "redis://r-0:6379,r-1:6379")

    def test_batch_mode_the_client_and_the_redis_mode_are_written_only_when_asked_for(self) -> None:
        # So an operator upgrade does not roll every existing Deployment.
        plain = {e["name"] for e in sidecar_of(deploy(streamgroup(), 1))["env"]}
        assert not plain & {"SG_BATCH_SIZE", "SG_BATCH_WAIT", "SG_HTTP_CLIENT", "SG_REDIS_MODE"}
        env = sidecar_of(deploy(streamgroup(delivery={"batch": {"size": 8}}), 1))["env"]
        settings = parse_settings([], as_kubelet_would(env, "p", {("redis-auth", "password"): "pw"}))
        assert (settings.delivery.batch_size, settings.delivery.batch_wait) == (8, 0.005)

    def test_a_dapr_app_reaches_the_sidecar_as_the_dapr_protocol_and_its_pubsub(self) -> None:
        plain = {e["name"] for e in sidecar_of(deploy(streamgroup(), 1))["env"]}
        assert not plain & {"SG_APP_PROTOCOL", "SG_DAPR_PUBSUB"}  # the default protocol rolls nothing
        env = sidecar_of(deploy(streamgroup(delivery={"protocol": "dapr", "daprPubsub": "orders-pubsub"})))["env"]
        settings = parse_settings([], as_kubelet_would(env, "p", {("redis-auth", "password"): "pw"}))
        assert (settings.delivery.protocol, settings.delivery.dapr_pubsub) == ("dapr", "orders-pubsub")

    def test_defaults_on_both_sides_agree(self) -> None:
        env = sidecar_of(deploy(streamgroup(), 1))["env"]
        settings = parse_settings([], as_kubelet_would(env, "pod-1", {("redis-auth", "password"): "pw"}))
        plain = parse_settings([], {"SG_STREAMS": "orders,refunds", "SG_GROUP": "billing",
                                    "SG_CONSUMER": "pod-1", "SG_REDIS_URL": "redis://redis.data:6379/2",
                                    "SG_REDIS_PASSWORD": "pw", "SG_HEALTH_PORT": "9400",
                                    "SG_SHUTDOWN_GRACE": "55s"})
        assert settings == plain

    def test_every_variable_written_is_one_the_sidecar_knows(self) -> None:
        sg = streamgroup(delivery={"body": "raw", "bodyField": "payload", "contentType": "application/x-protobuf"})
        sg["spec"]["redis"]["tls"] = {"enabled": True, "caSecretRef": {"name": "ca"},
                                      "clientCertSecretRef": {"name": "client"}}
        known = {o.env for o in OPTIONS}
        written = {e["name"] for e in sidecar_of(deploy(sg, 1))["env"]}
        assert written <= known, written - known

    def test_tls_material_is_mounted_from_secrets_and_pointed_to(self) -> None:
        sg = streamgroup(redis={"host": "redis", "port": 6380, "db": 1,
                                "tls": {"enabled": True, "caSecretRef": {"name": "redis-ca", "key": "bundle.pem"},
                                        "clientCertSecretRef": {"name": "redis-client"},
                                        "serverName": "redis.data.svc"}})
        deployment = deploy(sg, 1)
        sidecar = sidecar_of(deployment)
        env = {e["name"]: e.get("value") for e in sidecar["env"]}
        assert env["SG_REDIS_URL"] == "rediss://redis:6380/1"
        assert env["SG_REDIS_TLS_CA_FILE"] == "/etc/streamgroup/tls/ca/bundle.pem"
        assert env["SG_REDIS_TLS_CERT_FILE"] == "/etc/streamgroup/tls/client/tls.crt"
        volumes = {v["name"]: v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes == {"streamgroup-redis-ca": "redis-ca", "streamgroup-redis-client": "redis-client"}
        assert all(m["readOnly"] for m in sidecar["volumeMounts"])
        settings = parse_settings([], as_kubelet_would(sidecar["env"], "p", {}))
        assert settings.redis.tls_ca_file == "/etc/streamgroup/tls/ca/bundle.pem"
        assert settings.redis.tls_server_name == "redis.data.svc"
        assert (settings.redis.tls_cert_file, settings.redis.tls_key_file) == (
            "/etc/streamgroup/tls/client/tls.crt", "/etc/streamgroup/tls/client/tls.key")


class TestTheDeployment:
    def test_the_app_template_is_kept_and_the_sidecar_added_with_a_locked_down_security_context(self) -> None:
        sg = streamgroup()
        original = copy.deepcopy(sg)
        deployment = deploy(sg, 3)
        assert sg == original, "the StreamGroup is not modified"
        pod = deployment["spec"]["template"]
        assert pod["spec"]["containers"][0] == {"name": "app", "image": "billing:7"}
        assert pod["metadata"]["labels"]["team"] == "payments"
        assert deployment["spec"]["selector"]["matchLabels"] == {"streamgroup.io/name": "billing"}
        assert pod["metadata"]["labels"]["streamgroup.io/name"] == "billing"
        assert deployment["spec"]["replicas"] == 3
        sidecar = sidecar_of(deployment)
        assert sidecar["image"] == "registry.example/streamgroup:1.2.3"
        assert sidecar["securityContext"]["runAsNonRoot"] is True
        assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
        assert sidecar["securityContext"]["allowPrivilegeEscalation"] is False
        assert sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"

    def test_it_is_owned_by_its_streamgroup(self) -> None:
        [owner] = deploy(streamgroup(), 1)["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "streamgroup.io/v1alpha1", "kind": "StreamGroup", "name": "billing",
                         "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}

    def test_no_secret_value_is_ever_written_into_the_deployment(self) -> None:
        env = sidecar_of(deploy(streamgroup(), 1))["env"]
        [password] = [e for e in env if e["name"] == "SG_REDIS_PASSWORD"]
        assert password == {"name": "SG_REDIS_PASSWORD",
                             "valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}}

    def test_the_sidecar_image_and_resources_can_be_overridden(self) -> None:
        sg = streamgroup(sidecar={"image": "mine:1", "resources": {"limits": {"memory": "1Gi"}}})
        sidecar = sidecar_of(deploy(sg, 1))
        assert sidecar["image"] == "mine:1"
        assert sidecar["resources"] == {"limits": {"memory": "1Gi"}}

    def test_a_template_that_already_has_a_container_with_the_sidecars_name_is_refused(self) -> None:
        sg = streamgroup()
        sg["spec"]["template"]["spec"]["containers"].append({"name": SIDECAR_NAME, "image": "x"})
        with pytest.raises(ValueError, match=SIDECAR_NAME):
            deploy(sg, 1)
