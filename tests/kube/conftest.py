"""Fixtures for tests against the real control plane (etcd + kube-apiserver from hack/control-plane/build.sh).

One control plane serves the whole session: it starts in about three seconds, but CRDs and RBAC objects
are cluster-wide, so tests keep to their own namespaces (the `namespace` fixture) and their own CRD groups.
Missing binaries fail the tests loudly instead of skipping them: a suite that silently ran nothing of the
operator's contract with Kubernetes would look green while proving nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.support.kube import BinariesMissing, ControlPlane

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/kube needs the control plane: mark it so `-m "not kube"` leaves it out."""
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.kube)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    try:
        plane = ControlPlane()
    except BinariesMissing as error:
        pytest.fail(str(error), pytrace=False)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    """The admin's kubeconfig file (CN=admin, O=system:masters)."""
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """A kubernetes ApiClient authenticated as the admin."""
    api = control_plane.api_client()
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def namespace(api_client: client.ApiClient) -> str:
    """A fresh namespace for one test; never deleted (without a namespace controller it stays Terminating)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name
