"""Fixtures for tests on a real node: a control plane of their own with the controllers and a kubelet.

One such cluster serves the session (:class:`Cluster`): its own etcd and API server (the shared one of
tests/kube has no controllers, and its tests rely on nothing acting on what they create), the
controller manager and scheduler, and a kubelet with containerd in a network namespace of its own
(:mod:`tests.support.node`), with the project's small sidecar image imported. Each test gets a
namespace, a redis-server the pods reach through the node's gateway, and an operator process running
in the node's network so that it uses the same address.

Nothing is skipped: a missing binary, containerd or kubelet that cannot start fails the tests with the
reason (a suite that quietly ran nothing would look green while proving nothing).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from kubernetes import client

from tests.support.images import Podman, ensure_image
from tests.support.kube import BinariesMissing, ControlPlane
from tests.support.node import Controllers, RealNode
from tests.support.operator_process import OperatorProcess
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.kube)
            item.add_marker(pytest.mark.node)


@dataclass
class Cluster:
    plane: ControlPlane
    controllers: Controllers
    node: RealNode
    api: client.ApiClient
    image: str
    """The small sidecar image, imported into the node: the sidecar and the tests' app run from it."""
    podman: Podman
    folder: Path
    _full: str = ""

    def full_image(self) -> str:
        """The default target (operator, CLI, sidecar), built if needed and imported on first use only."""
        if not self._full:
            tag = ensure_image(self.podman, "full")
            self.node.load(save(self.podman, "full", tag, self.folder / "full.tar"))
            self._full = tag
        return self._full

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        result = subprocess.run([*self.plane.kubectl_command(), *args], input=stdin, capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def diagnostics(self, namespace: str) -> str:
        """What a failed test shows: pods, events, the pods' logs, the node's and controllers' logs."""
        parts = []
        for args in (("get", "pods", "-o", "wide", "-n", namespace), ("get", "events", "-n", namespace)):
            try:
                parts.append(self.kubectl(*args))
            except AssertionError as exc:
                parts.append(str(exc))
        for pod in self.core.list_namespaced_pod(namespace).items:
            parts.append(self.node.pod_logs(namespace, pod.metadata.name))
        return "\n".join([*parts, self.node.logs(), self.controllers.logs()])


def save(podman: Podman, target: str, tag: str, archive: Path) -> Path:
    """The image as an OCI archive (hack/image.sh --save), for the node to import."""
    saved = subprocess.run(["bash", "hack/image.sh", "--target", target, "--tag", tag, "--no-build",
                            "--save", str(archive)], cwd=REPO, env=podman.env, capture_output=True, text=True,
                           timeout=900)
    assert saved.returncode == 0, f"saving {tag} failed: {saved.stderr[-3000:]}"
    return archive


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    podman = Podman.from_script()
    image = ensure_image(podman, "sidecar")
    folder = Path(tempfile.mkdtemp(prefix="sg-images-"))
    archive = save(podman, "sidecar", image, folder / "sidecar.tar")
    try:
        # Service accounts on: pods get their account's token, as the operator's own pods need.
        plane = ControlPlane(service_accounts=True)
    except BinariesMissing as error:
        pytest.fail(str(error), pytrace=False)
    plane.start()
    node: RealNode | None = None
    controllers: Controllers | None = None
    api = plane.api_client()
    try:
        subprocess.run([*plane.kubectl_command(), "apply", "-f", str(REPO / "crds")], check=True, capture_output=True,
                       timeout=60)
        controllers = Controllers(plane).start()
        node = RealNode(plane).start()
        node.load(archive)
        subprocess.run([*plane.kubectl_command(), "wait", "--for=condition=established", "--timeout=30s",
                        "crd/streamgroups.streamgroup.io"], check=True, capture_output=True, timeout=60)
        yield Cluster(plane, controllers, node, api, image, podman, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        api.close()  # type: ignore[no-untyped-call]
        if node is not None:
            node.stop()
        if controllers is not None:
            controllers.stop()
        plane.stop()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(cluster.diagnostics(name))
    # Pods go with their namespace (the namespace controller, then the kubelet): not waited for.
    cluster.core.delete_namespace(name)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


@dataclass
class ExposedRedis:
    """A redis-server on the host's loopback, and the address pods and the operator reach it at."""

    server: RedisServer
    address: str

    def client(self) -> redis.Redis:
        return self.server.client()


@contextlib.contextmanager
def exposed(cluster: Cluster, server: RedisServer) -> Iterator[ExposedRedis]:
    """``server`` (started) reachable from the node while the block runs; stopped and removed after it."""
    try:
        yield ExposedRedis(server, cluster.node.expose(server.port))
    finally:
        cluster.node.unexpose(server.port)
        server.cleanup()


@pytest.fixture
def redis_on_node(cluster: Cluster) -> Iterator[ExposedRedis]:
    with exposed(cluster, RedisServer().start()) as server:
        yield server


@pytest.fixture
def operator(cluster: Cluster, namespace: str) -> Iterator[OperatorProcess]:
    process = OperatorProcess(cluster.plane.kubeconfig, [namespace], netns=cluster.node.netns_name,
                              SG_OPERATOR_SIDECAR_IMAGE=cluster.image,
                              SG_OPERATOR_SIDECAR_IMAGE_PULL_POLICY="Never",
                              SG_OPERATOR_RESYNC_INTERVAL="1",
                              SG_OPERATOR_CONSUMER_IDLE_LIMIT="1",
                              SG_OPERATOR_LEADER_ELECT_NAMESPACE=namespace).start()
    try:
        yield process
    finally:
        print("operator log (end):\n" + process.tail(100))
        process.stop()
