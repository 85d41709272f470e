"""The images, built for real (hack/image.sh: podman and runc on a local Debian base) and run locked down.

Every container runs as a pod of the chart or the operator would: user 65532, a read-only root filesystem
without even podman's default tmpfs mounts, every capability dropped, no new privileges. It reaches the
servers this test starts on loopback through the host's network. The images are built once per tree
(tests/support/images.py tags them with a digest of their inputs), so a second run on an unchanged tree
only runs them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import threading
import time
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.kube.streamgroups import GROUP, PLURAL, manifest
from tests.shipping.test_image import LOCK, locking
from tests.support.images import REPO, Container, Podman, ensure_image
from tests.support.kube import ControlPlane
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow

USER = "65532:65532"
# podman itself bind-mounts /etc/hosts, /etc/hostname and /etc/resolv.conf into every container, making their
# mount points in /etc before the root goes read-only: what `podman diff` may show that no process wrote.
PODMAN_MOUNT_POINTS = {"C /etc", "A /etc/hosts", "A /etc/hostname", "A /etc/resolv.conf"}
# --passwd=false: podman would add the user to the image's /etc/passwd; containerd (a real kubelet) does not,
# and the operator once crashed on that (kopf asked getpass.getuser()).
LOCKED_DOWN = ("--read-only", "--read-only-tmpfs=false", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", "--user", USER, "--passwd=false")


@pytest.fixture(scope="session")
def podman() -> Podman:
    return Podman.from_script()


@pytest.fixture(scope="session")
def full_image(podman: Podman) -> str:
    return ensure_image(podman, "full")


@pytest.fixture(scope="session")
def sidecar_image(podman: Podman) -> str:
    return ensure_image(podman, "sidecar")


@pytest.fixture(params=["full", "sidecar"])
def any_image(request: pytest.FixtureRequest) -> str:
    """Both images run the sidecar: the full one as its default command, the small one as its only one."""
    return str(request.getfixturevalue(f"{request.param}_image"))


class Recorder(ThreadingHTTPServer):
    """A tiny app on loopback in a thread of its own: records each delivery's body, answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with recorder.lock:
                    recorder.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def count(self) -> int:
        with self.lock:
            return len(self.bodies)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    app = Recorder()
    app.thread.start()
    try:
        yield app
    finally:
        app.shutdown()
        app.server_close()


@pytest.fixture
def containers(podman: Podman) -> Iterator[list[Container]]:
    made: list[Container] = []
    try:
        yield made
    finally:
        for container in made:
            container.cleanup()


def eventually(check: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; last seen {result!r}")
        time.sleep(0.1)


def host_status(pid: int) -> dict[str, str]:
    """The container's main process as the host's kernel sees it (/proc/PID/status)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


class TestTheSidecarInAnImage:
    def test_it_delivers_every_entry_as_65532_read_only_without_capabilities_and_exits_0_on_sigterm(
            self, podman: Podman, any_image: str, redis_server: RedisServer, recorder: Recorder,
            containers: list[Container]) -> None:
        r = redis_server.client()
        for i in range(50):
            r.xadd("orders", {"n": str(i)})
        health = free_port()
        sidecar = Container(podman, any_image, [], [
            *LOCKED_DOWN, "--env", f"SG_REDIS_URL={redis_server.url}", "--env", "SG_STREAMS=orders",
            "--env", "SG_GROUP=billing", "--env", "SG_START_FROM=0", "--env", "SG_CONSUMER=pod-1",
            "--env", f"SG_APP_URL={recorder.url}", "--env", "SG_HEALTH_HOST=127.0.0.1",
            "--env", f"SG_HEALTH_PORT={health}"])
        containers.append(sidecar.start())
        sidecar.wait_http_ok(f"http://127.0.0.1:{health}/readyz")

        eventually(lambda: recorder.count() >= 50, what="50 deliveries")
        eventually(lambda: r.xpending("orders", "billing")["pending"] == 0, what="every entry acknowledged")
        assert sorted(json.loads(body)["n"] for body in recorder.bodies) == sorted(
            str(i) for i in range(50)), "each entry once"

        process = host_status(int(sidecar.state()["Pid"]))
        assert process["Uid"].split() == ["65532"] * 4 and process["Gid"].split() == ["65532"] * 4
        assert process["CapEff"] == process["CapPrm"] == process["CapBnd"] == "0" * 16
        assert process["NoNewPrivs"] == "1"
        assert set(sidecar.diff()) <= PODMAN_MOUNT_POINTS, "nothing written in the container's filesystem"
        assert sidecar.stop() == 0, sidecar.logs()[-3000:]
        assert "Traceback" not in sidecar.logs()


class TestTheSidecarImage:
    def test_it_holds_exactly_the_sidecar_lock_and_the_project_without_pip_setuptools_or_kubernetes(
            self, podman: Podman, sidecar_image: str) -> None:
        script = ("import importlib.metadata as m, json, platform, sys; print(json.dumps({'python': "
                  "platform.python_version(), 'platform': sys.platform, 'installed': {d.metadata['Name']: d.version "
                  "for d in m.distributions()}}))")
        out = json.loads(podman.run("run", "--rm", *podman.flags, *LOCKED_DOWN, "--entrypoint", "python",
                                    sidecar_image, "-c", script).stdout)
        installed = {canonicalize_name(name): version for name, version in out["installed"].items()}
        environment = {"python_full_version": out["python"], "python_version": out["python"].rsplit(".", 1)[0],
                       "sys_platform": out["platform"], "extra": ""}
        locked = {pin.name: pin.version for pin in locking.parse((REPO / "requirements/sidecar.txt").read_text())
                  if pin.requirement.marker is None or pin.requirement.marker.evaluate(environment)}
        assert installed.pop("streamgroup") == "0.1.0"
        assert installed == locked
        assert not {"pip", "setuptools", "wheel", "kubernetes", "kopf"} & set(installed)
        pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
        sidecar_roots = {canonicalize_name(Requirement(text).name)
                         for text in LOCK["requirements/sidecar.txt"].requirements(pyproject)}
        assert sidecar_roots <= set(installed)

    def test_it_is_one_layer_from_scratch_without_a_shell_or_package_manager_yet_trusts_the_ca_bundle(
            self, podman: Podman, sidecar_image: str) -> None:
        assert len(podman.inspect("image", sidecar_image)["RootFS"]["Layers"]) == 1, "nothing of the base image"
        shell = podman.run("run", "--rm", *podman.flags, *LOCKED_DOWN, "--entrypoint", "sh", sidecar_image, "-c",
                           "true", check=False)
        assert shell.returncode != 0 and "not found" in shell.stderr
        script = (
            "import json, os, pwd, ssl; print(json.dumps({"
            "'present': [p for p in ('/bin/sh', '/bin/bash', '/usr/bin/apt', '/usr/bin/dpkg', '/usr/bin/perl', "
            "'/usr/bin/pip', '/opt/streamgroup/bin/pip', '/var/lib/dpkg') if os.path.lexists(p)], "
            "'user': pwd.getpwuid(os.getuid()).pw_name, "
            "'cas': len(ssl.create_default_context().get_ca_certs())}))")
        found = json.loads(podman.run("run", "--rm", *podman.flags, *LOCKED_DOWN, "--entrypoint", "python",
                                      sidecar_image, "-c", script).stdout)
        assert found["present"] == []
        assert found["user"] == "nonroot"
        assert found["cas"] > 0, "the base's CA bundle came along (SSL_CERT_FILE)"

    def test_a_dapr_routing_rule_compiles_and_routes_in_it(self, podman: Podman, sidecar_image: str) -> None:
        script = (
            "import json; from streamgroup_sidecar import dapr; "
            "[s] = dapr.parse_subscriptions(json.dumps([{'pubsubname': 'p', 'topic': 'orders', 'routes': "
            "{'rules': [{'match': 'event.type == \"big\" && size(event.data.items) > 1', 'path': '/big'}], "
            "'default': '/all'}}]).encode()); "
            "print(dapr.route_for(s, {'type': 'big', 'data': {'items': [1, 2]}}), "
            "dapr.route_for(s, {'type': 'big', 'data': {'items': [1]}}))")
        result = podman.run("run", "--rm", *podman.flags, *LOCKED_DOWN, "--entrypoint", "python", sidecar_image,
                            "-c", script)
        assert result.stdout.split() == ["/big", "/all"]


class TestTheCommandInTheImage:
    def test_help_and_status_against_a_local_redis_run_locked_down(
            self, podman: Podman, full_image: str, redis_server: RedisServer) -> None:
        r = redis_server.client()
        r.xadd("orders", {"n": "1"})
        r.xgroup_create("orders", "billing", id="0")
        run = ("run", "--rm", *podman.flags, *LOCKED_DOWN, "--entrypoint", "streamgroup", full_image)
        assert "dead-letters" in podman.run(*run, "--help").stdout
        status = podman.run(*run, "status", "--redis-url", redis_server.url, "--output", "json", "orders").stdout
        assert "billing" in status and "orders" in status


@pytest.mark.kube
class TestTheOperatorInTheImage:
    def test_it_starts_with_a_read_only_kubeconfig_and_makes_the_deployment_of_a_streamgroup(
            self, podman: Podman, full_image: str, redis_server: RedisServer, tmp_path: Path,
            containers: list[Container]) -> None:
        with ControlPlane() as plane:
            kubectl = plane.kubectl_command()
            subprocess.run([*kubectl, "apply", "-f", str(REPO / "crds")], check=True, capture_output=True,
                           timeout=60)

            def kubectl_ok(*args: str, stdin: str | None = None) -> bool:
                return subprocess.run([*kubectl, *args], input=stdin, capture_output=True, text=True,
                                      timeout=60).returncode == 0

            # Polled, not `kubectl wait`: that fails outright while the new CRD is not yet found.
            eventually(lambda: subprocess.run(
                [*kubectl, "get", f"crd/{PLURAL}.{GROUP}", "-o",
                 "jsonpath={.status.conditions[?(@.type=='Established')].status}"],
                capture_output=True, text=True, timeout=60).stdout == "True", what="the CRD established")
            assert kubectl_ok("create", "namespace", "shop")
            # The container's user reads its own copy; the original stays private to the test's user.
            config = tmp_path / "kubeconfig"
            shutil.copyfile(plane.kubeconfig, config)
            config.chmod(0o400)
            shutil.chown(config, 65532, 65532)
            port = free_port()
            operator = Container(podman, full_image, [], [
                # The chart's in-memory /tmp: the kubernetes client writes a kubeconfig's embedded certificates
                # and key to temporary files (in a cluster it reads its service account's files instead).
                *LOCKED_DOWN, "--tmpfs", "/tmp:rw,size=16m,mode=1777", "--entrypoint", "streamgroup-operator",
                "--volume", f"{config}:/etc/streamgroup/kubeconfig:ro",
                "--env", "KUBECONFIG=/etc/streamgroup/kubeconfig", "--env", "SG_OPERATOR_NAMESPACES=shop",
                "--env", "SG_OPERATOR_LEADER_ELECT_NAMESPACE=shop",  # not a pod: the Lease's namespace is given
                "--env", "SG_OPERATOR_HOST=127.0.0.1", "--env", f"SG_OPERATOR_PORT={port}",
                "--env", "SG_OPERATOR_RESYNC_INTERVAL=0.5"])
            containers.append(operator.start())
            operator.wait_http_ok(f"http://127.0.0.1:{port}/healthz")

            body = json.dumps(manifest("billing", redis_server.url))
            # kubectl may not know the new kind for a moment (its discovery cache): retried until created.
            eventually(lambda: kubectl_ok("create", "--namespace", "shop", "-f", "-", stdin=body)
                       or kubectl_ok("get", f"{PLURAL}.{GROUP}", "billing", "--namespace", "shop"),
                       what="the StreamGroup created")

            def deployment() -> dict[str, Any] | None:
                got = subprocess.run([*kubectl, "get", "deployment", "billing", "--namespace", "shop", "-o", "json"],
                                     capture_output=True, text=True, timeout=60)
                return json.loads(got.stdout) if got.returncode == 0 else None

            made = eventually(deployment, what="the StreamGroup's Deployment")
            containers_made = {c["name"]: c for c in made["spec"]["template"]["spec"]["containers"]}
            assert set(containers_made) == {"app", "streamgroup-sidecar"}

            def status() -> dict[str, Any]:
                got = subprocess.run([*kubectl, "get", f"{PLURAL}.{GROUP}", "billing", "--namespace", "shop",
                                      "-o", "json"], capture_output=True, text=True, timeout=60, check=True)
                return dict(json.loads(got.stdout).get("status", {}))

            eventually(lambda: "observedGeneration" in status(), what="the StreamGroup's status written")
            # The kubeconfig's mount point is podman's too.
            mount_points = PODMAN_MOUNT_POINTS | {"A /etc/streamgroup", "A /etc/streamgroup/kubeconfig"}
            assert set(operator.diff()) <= mount_points, "nothing written in the container's filesystem"
            assert operator.stop() == 0, operator.logs()[-3000:]


class TestOciArchives:
    @pytest.mark.parametrize("target", ["full", "sidecar"])
    def test_hack_image_saves_an_image_as_an_oci_archive_containerd_can_import(
            self, podman: Podman, target: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        tag = str(request.getfixturevalue(f"{target}_image"))
        archive = tmp_path / "image.tar"
        saved = subprocess.run(["bash", "hack/image.sh", "--target", target, "--tag", tag, "--no-build",
                                "--save", str(archive)], cwd=REPO, env=podman.env, capture_output=True, text=True,
                               timeout=900)
        assert saved.returncode == 0, saved.stderr[-3000:]
        with tarfile.open(archive) as tar:
            assert json.loads(tar.extractfile("oci-layout").read())["imageLayoutVersion"] == "1.0.0"  # type: ignore[union-attr]
            index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        [entry] = index["manifests"]
        assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == tag, "the name ctr imports it as"
