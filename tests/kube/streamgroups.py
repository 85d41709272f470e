"""StreamGroup test helpers: the CRD installed once, an operator process per test, polling helpers.

Registered as a pytest plugin by tests/conftest.py; the fixtures need the control plane of
tests/kube/conftest.py, so only tests under tests/kube can use them.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.kube import ControlPlane
from tests.support.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "streamgroup.io", "v1alpha1", "streamgroups"
T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy (and return it), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (ApiException, KeyError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout}s; last seen: {last!r}")


@pytest.fixture(scope="session")
def streamgroup_crd(control_plane: ControlPlane) -> None:
    kubectl = control_plane.kubectl_command()
    subprocess.run([*kubectl, "apply", "-f", str(REPO / "crds")], check=True, capture_output=True, timeout=60)
    subprocess.run([*kubectl, "wait", "--for=condition=established", "--timeout=30s",
                    "crd/streamgroups.streamgroup.io"], check=True, capture_output=True, timeout=60)


@pytest.fixture
def apis(api_client: client.ApiClient, streamgroup_crd: None) -> Any:
    class Apis:
        custom = client.CustomObjectsApi(api_client)
        apps = client.AppsV1Api(api_client)
        core = client.CoreV1Api(api_client)
    return Apis


@pytest.fixture
def operator(kubeconfig: Path, namespace: str, streamgroup_crd: None) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kubeconfig, [namespace], SG_OPERATOR_CONSUMER_IDLE_LIMIT="1").start()
    try:
        yield process
    finally:
        # pytest shows captured output only for a failed test: the operator's side of it.
        print("operator log (end):\n" + process.tail(100))
        process.stop()


def manifest(name: str, redis_url: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "redis": {"url": redis_url},
        "streams": ["orders"],
        "group": "billing",
        "startFrom": "0",
        "template": {"spec": {"containers": [{"name": "app", "image": "billing:1"}]}},
    }
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "StreamGroup", "metadata": {"name": name}, "spec": body}


def create(apis: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = apis.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    return result


def get_sg(apis: Any, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = apis.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return result


def condition(sg: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in sg.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def deployment(apis: Any, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = apis.apps.api_client.sanitize_for_serialization(
        apis.apps.read_namespaced_deployment(name, namespace))
    return result


def replicas(apis: Any, namespace: str, name: str) -> int:
    return int(deployment(apis, namespace, name)["spec"]["replicas"])


def play_kubelet_ready(apis: Any, namespace: str, name: str) -> None:
    """Report every replica ready, as the kubelet and the Deployment controller would."""
    wanted = replicas(apis, namespace, name)
    apis.apps.patch_namespaced_deployment_status(name, namespace, {"status": {
        "replicas": wanted, "readyReplicas": wanted, "availableReplicas": wanted, "updatedReplicas": wanted}})


def sidecar_env(deployment_body: dict[str, Any], pod_name: str, secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    [sidecar] = [c for c in deployment_body["spec"]["template"]["spec"]["containers"]
                 if c["name"] == "streamgroup-sidecar"]
    env = {}
    for var in sidecar["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = pod_name
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
    return env


