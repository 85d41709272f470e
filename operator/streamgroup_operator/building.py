"""From a StreamGroup to the Deployment that runs it: pure functions, no API calls.

The Deployment runs the user's pod template unchanged, plus one container: the
sidecar, configured only through ``SG_`` environment variables. Those variables are
the contract with :mod:`streamgroup_sidecar.config`; a test feeds what this module
writes to the sidecar's own parser, so the two cannot drift apart.

Secrets never appear in the Deployment: the Redis password is an ``env`` entry that
references the Secret, and TLS material is mounted from Secrets as read-only files.
"""

from __future__ import annotations

import copy
from typing import Any

from .config import SidecarDefaults

GROUP = "streamgroup.io"
VERSION = "v1alpha1"
PLURAL = "streamgroups"
KIND = "StreamGroup"
SIDECAR_NAME = "streamgroup-sidecar"
NAME_LABEL = "streamgroup.io/name"
TLS_DIR = "/etc/streamgroup/tls"

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


def redis_url(redis: Body) -> str:
    """The URL the sidecar and the operator connect to (never with a password in it)."""
    if "url" in redis:
        url = str(redis["url"])
        tls = bool(redis.get("tls", {}).get("enabled"))
        if tls and url.startswith("redis://"):
            url = "rediss://" + url[len("redis://"):]
        return url
    scheme = "rediss" if redis.get("tls", {}).get("enabled") else "redis"
    return f"{scheme}://{redis['host']}:{redis.get('port', 6379)}/{redis.get('db', 0)}"


def dead_letter_streams(spec: Body) -> list[str]:
    template = spec.get("delivery", {}).get("deadLetterStream", "{stream}:dead")
    return [template.replace("{stream}", stream) for stream in spec["streams"]]


def _grace_seconds(template: Body) -> int:
    return int(template.get("spec", {}).get("terminationGracePeriodSeconds", 30))


def sidecar_env(spec: Body, health_port: int) -> list[Body]:
    """The sidecar's ``SG_`` variables for this StreamGroup, in a stable order."""
    redis = spec["redis"]
    delivery = spec.get("delivery", {})
    retry = delivery.get("retry", {})
    claim = spec.get("claim", {})
    port = delivery.get("port", 8080)
    values: list[tuple[str, str | None]] = [
        ("SG_REDIS_URL", redis_url(redis)),
        ("SG_REDIS_USERNAME", redis.get("username")),
        ("SG_STREAMS", ",".join(spec["streams"])),
        ("SG_GROUP", spec["group"]),
        ("SG_START_FROM", spec.get("startFrom", "$")),
        ("SG_APP_URL", f"http://127.0.0.1:{port}{delivery.get('path', '/')}"),
        ("SG_APP_HEALTH_URL",
         f"http://127.0.0.1:{port}{delivery['healthPath']}" if "healthPath" in delivery else None),
        ("SG_BODY", delivery.get("body", "json")),
        ("SG_BODY_FIELD", delivery.get("bodyField")),
        ("SG_CONTENT_TYPE", delivery.get("contentType")),
        ("SG_MAX_IN_FLIGHT", str(delivery.get("maxInFlight", 32))),
        ("SG_REQUEST_TIMEOUT", delivery.get("timeout", "30s")),
        ("SG_MAX_DELIVERIES", str(delivery.get("maxDeliveries", 10))),
        ("SG_DEAD_LETTER_STREAM", delivery.get("deadLetterStream", "{stream}:dead")),
        ("SG_DEAD_LETTER_STATUSES",
         ",".join(str(s) for s in sorted(delivery["deadLetterStatuses"]))
         if "deadLetterStatuses" in delivery else None),
        ("SG_ORDERING_FIELD", delivery.get("orderingField")),
        ("SG_RETRY_INITIAL", retry.get("initial", "200ms")),
        ("SG_RETRY_MAX", retry.get("max", "30s")),
        ("SG_RETRY_MULTIPLIER", str(retry.get("multiplier", 2))),
        ("SG_RETRY_JITTER", str(retry.get("jitter", 0.2))),
        ("SG_CLAIM_MIN_IDLE", claim.get("minIdle", "30s")),
        ("SG_CLAIM_INTERVAL", claim.get("interval", "10s")),
        ("SG_HEALTH_PORT", str(health_port)),
        ("SG_SHUTDOWN_GRACE", f"{max(1, _grace_seconds(spec['template']) - 5)}s"),
        ("SG_LOG_LEVEL", spec.get("sidecar", {}).get("logLevel", "info")),
        # Written only when set, so that Deployments of StreamGroups that do not use them stay as they were.
        ("SG_BATCH_SIZE", str(delivery["batch"]["size"]) if "batch" in delivery else None),
        ("SG_BATCH_WAIT", delivery["batch"].get("maxWait", "5ms") if "batch" in delivery else None),
        ("SG_HTTP_CLIENT", spec.get("sidecar", {}).get("httpClient")),
    ]
    env: list[Body] = [{"name": k, "value": v} for k, v in values if v is not None]
    # The consumer name is the pod's name: stable for the pod's life, unique in the group.
    env.append({"name": "SG_CONSUMER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    secret = redis.get("passwordSecretRef")
    if secret:
        env.append({"name": "SG_REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {
            "name": secret["name"], "key": secret.get("key", "password")}}})
    tls = redis.get("tls", {})
    if tls.get("caSecretRef"):
        env.append({"name": "SG_REDIS_TLS_CA_FILE", "value": f"{TLS_DIR}/ca/{tls['caSecretRef'].get('key', 'ca.crt')}"})
    if tls.get("clientCertSecretRef"):
        env.append({"name": "SG_REDIS_TLS_CERT_FILE", "value": f"{TLS_DIR}/client/tls.crt"})
        env.append({"name": "SG_REDIS_TLS_KEY_FILE", "value": f"{TLS_DIR}/client/tls.key"})
    if tls.get("serverName"):
        env.append({"name": "SG_REDIS_TLS_SERVER_NAME", "value": tls["serverName"]})
    return env


def _tls_volumes(spec: Body) -> tuple[list[Body], list[Body]]:
    tls = spec["redis"].get("tls", {})
    volumes: list[Body] = []
    mounts: list[Body] = []
    if tls.get("caSecretRef"):
        volumes.append({"name": "streamgroup-redis-ca", "secret": {"secretName": tls["caSecretRef"]["name"]}})
        mounts.append({"name": "streamgroup-redis-ca", "mountPath": f"{TLS_DIR}/ca", "readOnly": True})
    if tls.get("clientCertSecretRef"):
        volumes.append({"name": "streamgroup-redis-client",
                        "secret": {"secretName": tls["clientCertSecretRef"]["name"]}})
        mounts.append({"name": "streamgroup-redis-client", "mountPath": f"{TLS_DIR}/client", "readOnly": True})
    return volumes, mounts


def sidecar_container(spec: Body, defaults: SidecarDefaults) -> Body:
    overrides = spec.get("sidecar", {})
    env = sidecar_env(spec, defaults.health_port)
    _, mounts = _tls_volumes(spec)
    container: Body = {
        "name": SIDECAR_NAME,
        "image": overrides.get("image", defaults.image),
        "imagePullPolicy": overrides.get("imagePullPolicy", defaults.image_pull_policy),
        "command": ["streamgroup-sidecar"],
        "env": env,
        "ports": [{"name": "sg-metrics", "containerPort": defaults.health_port, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "sg-metrics"},
                          "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "sg-metrics"},
                           "periodSeconds": 5, "failureThreshold": 2},
        "resources": overrides.get("resources", {
            "requests": {"cpu": defaults.cpu_request, "memory": defaults.memory_request},
            "limits": {"memory": defaults.memory_limit},
        }),
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


def build_deployment(sg: Body, replicas: int, defaults: SidecarDefaults) -> Body:
    """The Deployment for StreamGroup ``sg`` with ``replicas`` replicas (the caller decides how many)."""
    meta = sg["metadata"]
    name = meta["name"]
    spec = sg["spec"]
    template = copy.deepcopy(spec["template"])
    pod_meta = template.setdefault("metadata", {})
    pod_meta["labels"] = {**pod_meta.get("labels", {}), **labels(name)}
    pod_meta["annotations"] = {
        **pod_meta.get("annotations", {}),
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(defaults.health_port),
        "prometheus.io/path": "/metrics",
    }
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
                "apiVersion": f"{GROUP}/{VERSION}",
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
