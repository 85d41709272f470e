"""Credential rotation: the pod template's Secrets version, and what it is made of (never a Secret's data).

The pods read the Redis password when they start, so a changed Secret reaches them only through new
pods: the builder writes ``streamgroup.io/secrets-version`` into the pod template, and it changes
exactly when a Secret the pods read gets a new version, which makes the Deployment controller roll
them. The resync that notices it runs against a real API server in ``tests/kube/test_rotating.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from streamgroup_core.spec import parse_resource
from streamgroup_operator.applying import Secret
from streamgroup_operator.building import (
    SECRETS_VERSION,
    SecretVersion,
    build_deployment,
    pod_secret_keys,
    secrets_version,
    secrets_version_of,
)
from streamgroup_operator.config import SidecarDefaults
from streamgroup_operator.indexing import Index, Replicas

DEFAULTS = SidecarDefaults(image="registry.example/streamgroup:1.2.3")
PASSWORD = "correct horse battery staple"
CA = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUcaCAmaterial\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"


def streamgroup(**redis: Any) -> dict[str, Any]:
    spec = {
        "redis": {"url": "redis://redis.data:6379/0", "passwordSecretRef": {"name": "redis-auth"}, **redis},
        "streams": ["orders"],
        "group": "billing",
        "template": {"metadata": {"annotations": {"team": "payments"}},
                     "spec": {"containers": [{"name": "app", "image": "billing:7"}]}},
    }
    return {"apiVersion": "streamgroup.io/v1alpha1", "kind": "StreamGroup",
            "metadata": {"name": "billing", "namespace": "pay", "uid": "sg-uid"}, "spec": spec}


def secret(name: str, version: str, uid: str | None = None, **data: str) -> dict[str, Any]:
    """A Secret as the API server returns it."""
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "pay", "uid": uid or f"uid-{name}", "resourceVersion": version},
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}}


def tls_streamgroup() -> dict[str, Any]:
    return streamgroup(url="redis://s-0:26379,s-1:26379", mode="sentinel", sentinel={
        "masterName": "main", "passwordSecretRef": {"name": "sentinel-auth"}}, tls={
        "enabled": True, "caSecretRef": {"name": "redis-ca"}, "clientCertSecretRef": {"name": "redis-client"}},
        operatorCredentials={"username": "sg-operator", "passwordSecretRef": {"name": "operator-auth"}})


SECRETS = {
    "redis-auth": secret("redis-auth", "100", password=PASSWORD),
    "sentinel-auth": secret("sentinel-auth", "101", password="sentinel-pw"),
    "redis-ca": secret("redis-ca", "102", **{"ca.crt": CA}),
    "redis-client": secret("redis-client", "103", **{"tls.crt": "CERT", "tls.key": KEY}),
    "operator-auth": secret("operator-auth", "104", password="operator-pw"),
    "unrelated": secret("unrelated", "105", password="other"),
}


def version_of(sg: dict[str, Any], secrets: dict[str, dict[str, Any] | None], current: str | None = None) -> str | None:
    """The annotation, from the Secrets as read (``None``: missing), as the operator works it out."""
    versions = {name: SecretVersion.of(body) if body is not None else None for name, body in secrets.items()}
    return secrets_version("pay", parse_resource(sg), versions, current)


def deploy(sg: dict[str, Any], secrets: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    return build_deployment(sg["metadata"], parse_resource(sg), 1, DEFAULTS, secrets=version_of(sg, secrets))


def annotations(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["annotations"])


class TestTheAnnotation:
    def test_the_pod_template_carries_the_secrets_version_beside_the_apps_own_annotations(self) -> None:
        deployment = deploy(streamgroup(), SECRETS)
        assert annotations(deployment)[SECRETS_VERSION] == version_of(streamgroup(), SECRETS)
        assert annotations(deployment)["team"] == "payments"
        assert SECRETS_VERSION not in deployment["metadata"].get("annotations", {})  # the pods', not the Deployment's
        assert secrets_version_of(deployment) == version_of(streamgroup(), SECRETS)

    def test_pods_that_read_no_secret_get_no_annotation(self) -> None:
        sg = streamgroup()
        del sg["spec"]["redis"]["passwordSecretRef"]
        assert version_of(sg, SECRETS) is None
        assert SECRETS_VERSION not in annotations(deploy(sg, SECRETS))

    def test_the_secrets_it_covers_are_exactly_those_the_pod_template_references(self) -> None:
        deployment = deploy(tls_streamgroup(), SECRETS)
        pod = deployment["spec"]["template"]["spec"]
        referenced = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        referenced |= {e["valueFrom"]["secretKeyRef"]["name"] for c in pod["containers"] for e in c.get("env", [])
                       if "secretKeyRef" in e.get("valueFrom", {})}
        assert set(pod_secret_keys(parse_resource(tls_streamgroup()))) == referenced
        assert referenced == {"redis-auth", "sentinel-auth", "redis-ca", "redis-client"}

    def test_the_watch_cache_remembers_it_with_the_deployments_replicas(self) -> None:
        index = Index()
        deployment = deploy(streamgroup(), SECRETS)
        index.deployment_seen("ADDED", deployment)
        assert index.deployments[("pay", "billing")] == Replicas(1, 0, version_of(streamgroup(), SECRETS))
        assert Replicas.of(deploy(tls_streamgroup(), {})).secrets is None


class TestWhenItChanges:
    @pytest.mark.parametrize("name", ["redis-auth", "sentinel-auth", "redis-ca", "redis-client"])
    def test_a_new_resource_version_of_any_secret_the_pods_read_changes_it(self, name: str) -> None:
        before = version_of(tls_streamgroup(), SECRETS)
        meta = {**SECRETS[name]["metadata"], "resourceVersion": "200"}
        written = {**SECRETS, name: {**SECRETS[name], "metadata": meta}}
        assert version_of(tls_streamgroup(), written) != before

    def test_a_secret_deleted_and_made_again_with_the_same_data_changes_it(self) -> None:
        again = {**SECRETS, "redis-auth": secret("redis-auth", "100", uid="another-uid", password=PASSWORD)}
        assert version_of(streamgroup(), again) != version_of(streamgroup(), SECRETS)

    def test_a_change_to_an_unrelated_secret_or_to_the_operators_own_leaves_it_as_it_is(self) -> None:
        before = version_of(tls_streamgroup(), SECRETS)
        for name in ("unrelated", "operator-auth"):
            written = {**SECRETS, name: secret(name, "300", password="rotated")}
            assert version_of(tls_streamgroup(), written) == before, name

    def test_the_same_versions_read_again_in_another_order_give_the_same_value(self) -> None:
        assert version_of(tls_streamgroup(), dict(reversed(SECRETS.items()))) == version_of(tls_streamgroup(), SECRETS)

    def test_it_depends_on_the_versions_not_on_the_data(self) -> None:
        other_data = {**SECRETS, "redis-auth": secret("redis-auth", "100", password="something else")}
        assert version_of(streamgroup(), other_data) == version_of(streamgroup(), SECRETS)

    def test_it_names_the_namespace_so_a_same_named_secret_elsewhere_is_another_secret(self) -> None:
        versions = {"redis-auth": SecretVersion.of(SECRETS["redis-auth"])}
        spec = parse_resource(streamgroup())
        assert secrets_version("pay", spec, versions, None) != secrets_version("ops", spec, versions, None)


class TestAMissingSecret:
    def test_a_missing_secret_keeps_the_version_the_pods_run_with(self) -> None:
        """Pods made now could not start (a missing secretKeyRef): the running ones are left alone."""
        current = version_of(streamgroup(), SECRETS)
        assert version_of(streamgroup(), {**SECRETS, "redis-auth": None}, current) == current
        assert version_of(streamgroup(), {}, current) == current

    def test_a_missing_key_keeps_it_too(self) -> None:
        current = version_of(tls_streamgroup(), SECRETS)
        no_key = {**SECRETS, "redis-client": secret("redis-client", "400", **{"tls.crt": "CERT"})}
        assert version_of(tls_streamgroup(), no_key, current) == current

    def test_without_a_deployment_yet_there_is_none_and_the_secret_made_later_sets_one(self) -> None:
        assert version_of(streamgroup(), {"redis-auth": None}, None) is None
        assert version_of(streamgroup(), SECRETS, None) is not None


def digests(value: str) -> list[str]:
    raw = value.encode()
    return [hashlib.new(algorithm, raw).hexdigest() for algorithm in ("sha256", "sha1", "md5")]


class TestNoKeyMaterial:
    @pytest.mark.parametrize("value", [PASSWORD, "sentinel-pw", CA, KEY, "operator-pw"])
    def test_no_secret_value_or_digest_of_it_is_anywhere_in_the_built_deployment(self, value: str) -> None:
        text = json.dumps(deploy(tls_streamgroup(), SECRETS))
        assert value not in text
        assert base64.b64encode(value.encode()).decode() not in text
        for digest in digests(value):
            # Whole, or cut to the annotation's length or shorter, as a careless implementation might.
            assert not any(digest[:n] in text for n in (8, 12, 16, 32, len(digest))), digest

    def test_a_secret_read_shows_its_version_and_never_its_data(self) -> None:
        body = SECRETS["redis-auth"]
        read = Secret({"password": PASSWORD.encode()}, SecretVersion.of(body))
        assert PASSWORD not in repr(read) and PASSWORD not in str(read)
        assert read.version == SecretVersion("uid-redis-auth", "100", frozenset({"password"}))
