"""Kubernetes API calls of the operator, each a thin blocking call run in a thread.

The Deployment is written with server-side apply under one field manager, so fields that
other controllers own (an HPA on the Deployment would conflict: use the StreamGroup's scale
subresource instead) are reported as conflicts rather than silently overwritten, and fields
the operator stops setting are removed.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from streamgroup_core.spec import API_GROUP, API_VERSION, PLURAL

from .building import selector_string

FIELD_MANAGER = "streamgroup-operator"


def _plain(obj: Any) -> dict[str, Any]:
    """A client model as the plain dict the API server would send."""
    plain: dict[str, Any] = k8s.ApiClient().sanitize_for_serialization(obj)
    return plain


async def apply_deployment(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]

    def call() -> dict[str, Any]:
        api = k8s.AppsV1Api()
        result = api.patch_namespaced_deployment(
            meta["name"], meta["namespace"], body, field_manager=FIELD_MANAGER, force=True,
            _content_type="application/apply-patch+yaml",
        )
        return _plain(result)

    return await asyncio.to_thread(call)


async def read_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    def call() -> dict[str, Any] | None:
        try:
            result = k8s.AppsV1Api().read_namespaced_deployment(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _plain(result)

    return await asyncio.to_thread(call)


async def scale_deployment(namespace: str, name: str, replicas: int) -> None:
    """Set replicas only (through the Deployment's scale subresource), leaving the rest alone."""
    def call() -> None:
        k8s.AppsV1Api().patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})

    await asyncio.to_thread(call)


async def live_pod_names(namespace: str, name: str) -> set[str]:
    """Names of the StreamGroup's pods that exist and are not finished (their consumers are alive)."""
    def call() -> set[str]:
        pods: Any = k8s.CoreV1Api().list_namespaced_pod(namespace, label_selector=selector_string(name))
        return {str(p.metadata.name) for p in pods.items
                if (p.status is None or p.status.phase not in ("Succeeded", "Failed"))
                and p.metadata.deletion_timestamp is None}

    return await asyncio.to_thread(call)


async def read_secret_data(namespace: str, name: str) -> dict[str, bytes] | None:
    """The decoded data of a Secret, or ``None`` if it does not exist."""
    def call() -> dict[str, bytes] | None:
        try:
            secret = k8s.CoreV1Api().read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}

    return await asyncio.to_thread(call)


async def list_streamgroups(namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every StreamGroup the operator watches (to know whether a consumer group is shared)."""
    def call() -> list[dict[str, Any]]:
        api: Any = k8s.CustomObjectsApi()
        if not namespaces:
            return list(api.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL).get("items", []))
        return [item for ns in namespaces
                for item in api.list_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL).get("items", [])]

    return await asyncio.to_thread(call)
