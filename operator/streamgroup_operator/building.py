"""From a StreamGroup to the Deployment that runs it: pure functions, no API calls.

The Deployment runs the user's pod template unchanged, plus one container: the
sidecar, configured only through ``SG_`` environment variables. Those variables are
the contract with the sidecar's option table; the operator does not import the sidecar,
so a test feeds what this module writes to the sidecar's own parser, and the two cannot
drift apart. Every value comes from the typed spec (:mod:`streamgroup_core.spec`), whose
defaults are the CRD's.

Secrets never appear in the Deployment: the Redis password is an ``env`` entry that
references the Secret, and TLS material is mounted from Secrets as read-only files. Which
versions of those Secrets the pods were made with is an annotation of the pod template
(:data:`SECRETS_VERSION`, from the Secrets' identities and versions, never their data), so a
changed Secret rolls the pods (:func:`secrets_version`).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streamgroup_core.spec import API_GROUP, API_VERSION, KIND, StreamGroupSpec

from .config import SidecarDefaults

SIDECAR_NAME = "streamgroup-sidecar"
NAME_LABEL = "streamgroup.io/name"
TLS_DIR = "/etc/streamgroup/tls"
SECRETS_VERSION = "streamgroup.io/secrets-version"
"""The pod template's annotation that changes exactly when a Secret the pods read changes (:func:`secrets_version`)."""

Body = dict[str, Any]


def selector_labels(name: str) -> dict[str, str]:
    return {NAME_LABEL: name}


def labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "streamgroup",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "streamgroup-operator",
        **selector_labels(name),
    }


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def _grace_seconds(template: Body) -> int:
    return int(template.get("spec", {}).get("terminationGracePeriodSeconds", 30))


def sidecar_env(spec: StreamGroupSpec, health_port: int) -> list[Body]:
    """The sidecar's ``SG_`` variables for this StreamGroup, in a stable order."""
    redis = spec.redis
    delivery = spec.delivery
    retry = delivery.retry
    claim = spec.claim
    batch = delivery.batch
    port = delivery.port
    values: list[tuple[str, str | None]] = [
        ("SG_REDIS_URL", redis.address),
        ("SG_REDIS_USERNAME", redis.username),
        ("SG_STREAMS", ",".join(spec.stream_keys)),
        ("SG_GROUP", spec.group),
        ("SG_START_FROM", spec.start_from),
        ("SG_APP_URL", f"http://127.0.0.1:{port}{delivery.path}"),
        ("SG_APP_HEALTH_URL", f"http://127.0.0.1:{port}{delivery.health_path}" if delivery.health_path else None),
        ("SG_APP_PROTOCOL", delivery.protocol if delivery.protocol != "streamgroup" else None),
        ("SG_DAPR_PUBSUB", delivery.dapr_pubsub),
        ("SG_BODY", delivery.body),
        ("SG_BODY_FIELD", delivery.body_field),
        ("SG_CONTENT_TYPE", delivery.content_type),
        ("SG_MAX_IN_FLIGHT", str(delivery.max_in_flight)),
        ("SG_REQUEST_TIMEOUT", delivery.timeout),
        ("SG_MAX_DELIVERIES", str(delivery.max_deliveries)),
        ("SG_DEAD_LETTER_STREAM", delivery.dead_letter_stream),
        ("SG_DEAD_LETTER_STATUSES", ",".join(str(s) for s in sorted(delivery.dead_letter_statuses))
         if delivery.dead_letter_statuses is not None else None),
        ("SG_ORDERING_FIELD", delivery.ordering_field),
        ("SG_RETRY_INITIAL", retry.initial),
        ("SG_RETRY_MAX", retry.max),
        ("SG_RETRY_MULTIPLIER", str(retry.multiplier)),
        ("SG_RETRY_JITTER", str(retry.jitter)),
        ("SG_CLAIM_MIN_IDLE", claim.min_idle),
        ("SG_CLAIM_INTERVAL", claim.interval),
        ("SG_HEALTH_PORT", str(health_port)),
        ("SG_SHUTDOWN_GRACE", f"{max(1, _grace_seconds(spec.template) - 5)}s"),
        ("SG_LOG_LEVEL", spec.sidecar.log_level),
        # Written only when set, so that Deployments of StreamGroups that do not use them stay as they were.
        ("SG_BATCH_SIZE", str(batch.size) if batch is not None else None),
        ("SG_BATCH_WAIT", batch.max_wait if batch is not None else None),
        ("SG_HTTP_CLIENT", spec.sidecar.http_client),
        ("SG_REDIS_MODE", redis.mode if redis.mode != "standalone" else None),
        ("SG_REDIS_SENTINEL_MASTER", redis.sentinel.master_name if redis.sentinel is not None else None),
        ("SG_REDIS_SENTINEL_USERNAME", redis.sentinel.username if redis.sentinel is not None else None),
    ]
    env: list[Body] = [{"name": k, "value": v} for k, v in values if v is not None]
    # The consumer name is the pod's name: stable for the pod's life, unique in the group.
    env.append({"name": "SG_CONSUMER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    if (password := redis.password_secret_ref) is not None:
        env.append({"name": "SG_REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {
            "name": password.name, "key": password.key}}})
    if redis.sentinel is not None and (sentinel := redis.sentinel.password_secret_ref) is not None:
        env.append({"name": "SG_REDIS_SENTINEL_PASSWORD", "valueFrom": {"secretKeyRef": {
            "name": sentinel.name, "key": sentinel.key}}})
    tls = redis.tls
    if tls.ca_secret_ref is not None:
        env.append({"name": "SG_REDIS_TLS_CA_FILE", "value": f"{TLS_DIR}/ca/{tls.ca_secret_ref.key}"})
    if tls.client_cert_secret_ref is not None:
        env.append({"name": "SG_REDIS_TLS_CERT_FILE", "value": f"{TLS_DIR}/client/tls.crt"})
        env.append({"name": "SG_REDIS_TLS_KEY_FILE", "value": f"{TLS_DIR}/client/tls.key"})
    if tls.server_name:
        env.append({"name": "SG_REDIS_TLS_SERVER_NAME", "value": tls.server_name})
    return env


def _tls_volumes(spec: StreamGroupSpec) -> tuple[list[Body], list[Body]]:
    tls = spec.redis.tls
    volumes: list[Body] = []
    mounts: list[Body] = []
    if tls.ca_secret_ref is not None:
        volumes.append({"name": "streamgroup-redis-ca", "secret": {"secretName": tls.ca_secret_ref.name}})
        mounts.append({"name": "streamgroup-redis-ca", "mountPath": f"{TLS_DIR}/ca", "readOnly": True})
    if tls.client_cert_secret_ref is not None:
        volumes.append({"name": "streamgroup-redis-client",
                        "secret": {"secretName": tls.client_cert_secret_ref.name}})
        mounts.append({"name": "streamgroup-redis-client", "mountPath": f"{TLS_DIR}/client", "readOnly": True})
    return volumes, mounts


def sidecar_container(spec: StreamGroupSpec, defaults: SidecarDefaults) -> Body:
    overrides = spec.sidecar
    env = sidecar_env(spec, defaults.health_port)
    _, mounts = _tls_volumes(spec)
    container: Body = {
        "name": SIDECAR_NAME,
        "image": overrides.image or defaults.image,
        "imagePullPolicy": overrides.image_pull_policy or defaults.image_pull_policy,
        "command": ["streamgroup-sidecar"],
        "env": env,
        "ports": [{"name": "sg-metrics", "containerPort": defaults.health_port, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "sg-metrics"},
                          "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "sg-metrics"},
                           "periodSeconds": 5, "failureThreshold": 2},
        "resources": overrides.resources if overrides.resources is not None else {
            "requests": {"cpu": defaults.cpu_request, "memory": defaults.memory_request},
            "limits": {"memory": defaults.memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if mounts:
        container["volumeMounts"] = mounts
    return container


@dataclass(frozen=True)
class SecretVersion:
    """A Secret as the API server identifies it, and the keys it holds: nothing of its values.

    ``uid`` changes when the Secret is deleted and made again, ``resource_version`` on every
    write to it (data or metadata alike).
    """

    uid: str
    resource_version: str
    keys: frozenset[str]

    @classmethod
    def of(cls, secret: Mapping[str, Any]) -> SecretVersion:
        """The version of a Secret as the API server returns it (``data`` is only looked at for its key names)."""
        meta = secret.get("metadata") or {}
        return cls(str(meta.get("uid") or ""), str(meta.get("resourceVersion") or ""),
                   frozenset(secret.get("data") or {}))


def pod_secret_keys(spec: StreamGroupSpec) -> dict[str, frozenset[str]]:
    """The Secrets the pods read (by name, in the StreamGroup's namespace) and the keys they read of each.

    What :func:`sidecar_env` and :func:`_tls_volumes` reference: the password and the sentinel's
    password (``env`` ``secretKeyRef``), the TLS CA and client certificate (Secret volumes). Not
    ``operatorCredentials``: only the operator uses that one, and it reads it on every resync.
    """
    redis = spec.redis
    wanted: dict[str, set[str]] = {}
    if (password := redis.password_secret_ref) is not None:
        wanted.setdefault(password.name, set()).add(password.key)
    if redis.sentinel is not None and (sentinel := redis.sentinel.password_secret_ref) is not None:
        wanted.setdefault(sentinel.name, set()).add(sentinel.key)
    if (ca := redis.tls.ca_secret_ref) is not None:
        wanted.setdefault(ca.name, set()).add(ca.key)
    if (client := redis.tls.client_cert_secret_ref) is not None:
        wanted.setdefault(client.name, set()).update(("tls.crt", "tls.key"))
    return {name: frozenset(keys) for name, keys in wanted.items()}


def secrets_version(namespace: str, spec: StreamGroupSpec, versions: Mapping[str, SecretVersion | None],
                    current: str | None) -> str | None:
    """The :data:`SECRETS_VERSION` annotation of the pods: changes exactly when a Secret they read changes.

    ``versions``: each Secret of :func:`pod_secret_keys` by name, ``None`` when it does not exist;
    ``current``: the annotation the Deployment has now (``None`` without one, or without a Deployment).

    Made from each Secret's namespace/name, uid and resourceVersion, never from its data: a
    Deployment is readable by many more people than its Secrets, and an unsalted hash of a password
    there could be brute-forced offline (a short password in seconds). So any write to a Secret
    rolls the pods, a change of its labels or annotations too, and so does deleting and making it
    again (a new uid); a write to any other Secret does not.

    ``None`` (no annotation) when the pods read no Secret: nothing to roll for. When a Secret or a
    key the pods read is missing, ``current``: pods made now could not start (the kubelet refuses a
    missing ``secretKeyRef``), so the pods running are left alone, and the StreamGroup's
    ``SecretMissing`` condition and Event say why; the Secret made again rolls them (a new uid).
    """
    wanted = pod_secret_keys(spec)
    if not wanted:
        return None
    found = {name: versions.get(name) for name in wanted}
    lines = []
    for name, keys in sorted(wanted.items()):
        version = found[name]
        if version is None or not keys <= version.keys:
            return current
        lines.append(f"{namespace}/{name} {version.uid} {version.resource_version}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def secrets_version_of(deployment: Mapping[str, Any]) -> str | None:
    """The :data:`SECRETS_VERSION` of a Deployment as the API server returns it, ``None`` without one."""
    template = (deployment.get("spec") or {}).get("template") or {}
    value = ((template.get("metadata") or {}).get("annotations") or {}).get(SECRETS_VERSION)
    return str(value) if value is not None else None


def build_deployment(meta: Mapping[str, Any], spec: StreamGroupSpec, replicas: int, defaults: SidecarDefaults,
                     secrets: str | None = None) -> Body:
    """The Deployment of the StreamGroup with ``meta`` and ``spec``, with ``replicas`` (the caller decides).

    ``secrets``: the pod template's :data:`SECRETS_VERSION` (see :func:`secrets_version`), none if ``None``.
    """
    name = meta["name"]
    template = copy.deepcopy(spec.template)
    pod_meta = template.setdefault("metadata", {})
    pod_meta["labels"] = {**pod_meta.get("labels", {}), **labels(name)}
    pod_meta["annotations"] = {
        **pod_meta.get("annotations", {}),
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(defaults.health_port),
        "prometheus.io/path": "/metrics",
    }
    if secrets is not None:
        pod_meta["annotations"][SECRETS_VERSION] = secrets
    pod_spec = template["spec"]
    if any(c.get("name") == SIDECAR_NAME for c in pod_spec["containers"]):
        raise ValueError(f"the template already has a container named {SIDECAR_NAME!r}")
    pod_spec["containers"] = [*pod_spec["containers"], sidecar_container(spec, defaults)]
    volumes, _ = _tls_volumes(spec)
    if volumes:
        pod_spec["volumes"] = [*pod_spec.get("volumes", []), *volumes]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels(name),
            "ownerReferences": [{
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": name,
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(name)},
            "template": template,
        },
    }
