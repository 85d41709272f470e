"""Kubernetes API calls of the operator, each a thin blocking call run in a thread.

The Deployment is written with server-side apply under one field manager, so fields that
other controllers own (an HPA on the Deployment would conflict: use the StreamGroup's scale
subresource instead) are reported as conflicts rather than silently overwritten, and fields
the operator stops setting are removed.

Every call goes through one shared client (one pool of kept-alive connections: a client per
call meant a TLS handshake per call) and reads the reply as plain JSON: the kubernetes client's
models cost more CPU than the rest of a resync together, for dicts the operator uses anyway. The
calls run in the operator's own threads (:data:`THREADS`), not asyncio's default few, which a
thousand StreamGroups created at once would keep waiting behind each other.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from streamgroup_core.spec import API_GROUP, API_VERSION, PLURAL

from .building import SecretVersion, selector_string

FIELD_MANAGER = "streamgroup-operator"
THREADS = 32
"""API calls under way at once (each blocks a thread while it waits for the API server)."""
POOL_SIZE = THREADS
"""Kept-alive connections to the API server: one per thread."""

MERGE_PATCH = "application/merge-patch+json"

_shared: Any = None
_lock = threading.Lock()
_threads = ThreadPoolExecutor(THREADS, thread_name_prefix="kubernetes")
_under_way = 0
_settled = threading.Condition()
T = TypeVar("T")


def _done(_: Any) -> None:
    global _under_way
    with _settled:
        _under_way -= 1
        _settled.notify_all()


async def _run(call: Callable[[], T]) -> T:
    global _under_way
    with _settled:
        _under_way += 1
    future = _threads.submit(call)
    # Counted until the thread has finished with it (or it was cancelled before it started), not until its
    # caller stopped waiting: a call whose caller was cancelled may still be writing.
    future.add_done_callback(_done)
    return await asyncio.wrap_future(future)


def settle(timeout: float) -> bool:
    """Wait (blocking) until no API call is under way; ``False`` if some still is after ``timeout`` seconds.

    A leader that stops releases its Lease only then (:mod:`.electing`): a write of its own must not land
    after the next leader has started.
    """
    with _settled:
        return _settled.wait_for(lambda: _under_way == 0, timeout)


def api() -> Any:
    """The one ApiClient, made on first use from the configuration :func:`.authenticating.load` set."""
    global _shared
    with _lock:
        if _shared is None:
            config: Any = k8s.Configuration.get_default_copy()
            config.connection_pool_maxsize = POOL_SIZE
            _shared = k8s.ApiClient(config)
        return _shared


def _json(response: Any) -> dict[str, Any]:
    """The body of a raw (``_preload_content=False``) reply."""
    parsed: dict[str, Any] = orjson.loads(response.data)
    return parsed


async def apply_deployment(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]

    def call() -> dict[str, Any]:
        return _json(k8s.AppsV1Api(api()).patch_namespaced_deployment(
            meta["name"], meta["namespace"], body, field_manager=FIELD_MANAGER, force=True,
            _content_type="application/apply-patch+yaml", _preload_content=False,
        ))

    return await _run(call)


async def read_deployment(namespace: str, name: str) -> dict[str, Any] | None:
    def call() -> dict[str, Any] | None:
        try:
            return _json(k8s.AppsV1Api(api()).read_namespaced_deployment(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    return await _run(call)


async def scale_deployment(namespace: str, name: str, replicas: int) -> None:
    """Set replicas only (through the Deployment's scale subresource), leaving the rest alone."""
    def call() -> None:
        k8s.AppsV1Api(api()).patch_namespaced_deployment_scale(
            name, namespace, {"spec": {"replicas": replicas}}, _content_type=MERGE_PATCH, _preload_content=False)

    await _run(call)


async def patch_status(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
    """Merge-patch the StreamGroup's status (``None`` values remove fields); ``None`` if it is gone."""
    def call() -> dict[str, Any] | None:
        try:
            return _json(k8s.CustomObjectsApi(api()).patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE_PATCH,
                _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    return await _run(call)


async def live_pod_names(namespace: str, name: str) -> set[str]:
    """Names of the StreamGroup's pods that exist and are not finished (their consumers are alive)."""
    def call() -> set[str]:
        pods = _json(k8s.CoreV1Api(api()).list_namespaced_pod(
            namespace, label_selector=selector_string(name), _preload_content=False))
        return {str(p["metadata"]["name"]) for p in pods.get("items") or []
                if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                and not p["metadata"].get("deletionTimestamp")}

    return await _run(call)


async def pod_count(namespace: str, name: str) -> int:
    """How many of the StreamGroup's pods exist, terminating ones included (their sidecars may still run)."""
    def call() -> int:
        pods = _json(k8s.CoreV1Api(api()).list_namespaced_pod(
            namespace, label_selector=selector_string(name), _preload_content=False))
        return len(pods.get("items") or [])

    return await _run(call)


@dataclass(frozen=True)
class Secret:
    """A Secret read: its decoded data (kept in memory only, never shown) and its :class:`.SecretVersion`."""

    data: dict[str, bytes] = field(repr=False)
    version: SecretVersion


async def read_secret(namespace: str, name: str) -> Secret | None:
    """A Secret's decoded data and version, or ``None`` if it does not exist."""
    def call() -> Secret | None:
        try:
            secret = _json(k8s.CoreV1Api(api()).read_namespaced_secret(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
        return Secret(data, SecretVersion.of(secret))

    return await _run(call)


async def list_streamgroups(namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every StreamGroup the operator watches (to know whether a consumer group is shared)."""
    def call() -> list[dict[str, Any]]:
        custom: Any = k8s.CustomObjectsApi(api())
        if not namespaces:
            return list(custom.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL).get("items", []))
        return [item for ns in namespaces
                for item in custom.list_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL).get("items", [])]

    return await _run(call)


async def create_event(body: dict[str, Any]) -> None:
    def call() -> None:
        events: Any = k8s.CoreV1Api(api())
        events.create_namespaced_event(body["metadata"]["namespace"], body, _preload_content=False)

    await _run(call)


async def patch_event(namespace: str, name: str, patch: dict[str, Any]) -> None:
    def call() -> None:
        k8s.CoreV1Api(api()).patch_namespaced_event(name, namespace, patch, _content_type=MERGE_PATCH,
                                                    _preload_content=False)

    await _run(call)
