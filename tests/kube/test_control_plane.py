"""The local control plane itself: that it is a real API server, and that it cleans up after itself.

Everything the operator's tests will rely on is checked here once, against the real kube-apiserver and etcd:
CRDs become served, their OpenAPI schema, defaults and CEL rules are enforced by the server with its own
messages, watches deliver changes, RBAC confines a non-admin identity, kubectl and helm work against it and
see the pinned version, and stopping leaves no process, port or directory behind.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.support.kube import REPO_ROOT, ControlPlane, pinned_version
from tests.support.ports import port_is_open

pytestmark = pytest.mark.kube

GROUP = "tests.streamgroup.io"
PLURAL = "widgets"
CEL_MESSAGE = "minReplicas must not be greater than maxReplicas"


# -- helpers ---------------------------------------------------------------------------------------------


def run(
    command: list[str], env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def eventually(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for a parent that does not reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def servers_of(directory: Path) -> list[int]:
    """Live etcd or kube-apiserver processes whose command line points into `directory`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = os.path.basename(argv[0].decode(errors="replace"))
        inside = str(directory).encode() in b" ".join(argv)
        if name in ("etcd", "kube-apiserver") and inside and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def decode_ip(hex_ip: str) -> str:
    """An address as /proc/net/tcp writes it: IPv4 in little-endian hex; IPv6 is left in hex."""
    if len(hex_ip) != 8:
        return "ipv6:" + hex_ip
    return ".".join(str(byte) for byte in reversed(bytes.fromhex(hex_ip)))


def listening_addresses(pid: int) -> set[str]:
    """The local addresses of the TCP sockets a process listens on, from /proc (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                hex_ip, hex_port = local.split(":")
                addresses.add(f"{decode_ip(hex_ip)}:{int(hex_port, 16)}")
    return addresses


def widget_crd() -> dict[str, Any]:
    """A small namespaced CRD with a default, bounds, a required field and a CEL rule."""
    spec_schema = {
        "type": "object",
        "required": ["size"],
        "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 10},
            "mode": {"type": "string", "enum": ["fifo", "any"], "default": "fifo"},
            "minReplicas": {"type": "integer", "minimum": 0, "default": 1},
            "maxReplicas": {"type": "integer", "minimum": 0, "default": 1},
        },
        "x-kubernetes-validations": [
            {"rule": "self.minReplicas <= self.maxReplicas", "message": CEL_MESSAGE}
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec_schema}}},
                }
            ],
        },
    }


def widget(name: str, **spec: object) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def rejection(error: ApiException) -> str:
    return str(json.loads(error.body or "{}").get("message", error.body))


@pytest.fixture(scope="module")
def widgets(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Widget CRD, applied with kubectl and waited for until Established; yields its name."""
    manifest = tmp_path_factory.mktemp("crd") / "widgets.json"
    manifest.write_text(json.dumps(widget_crd()))
    kubectl = control_plane.kubectl_command()
    run([*kubectl, "apply", "-f", str(manifest)])
    run([*kubectl, "wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=30s"])
    yield f"{PLURAL}.{GROUP}"
    run([*kubectl, "delete", "-f", str(manifest), "--wait=false"], check=False)


# -- tests -----------------------------------------------------------------------------------------------


class TestStartingAndStopping:
    def test_two_control_planes_start_and_stop_one_after_the_other_leaving_no_port_process_or_directory(
        self,
    ) -> None:
        for _ in range(2):
            with ControlPlane() as plane:
                ports, pids, directory = plane.ports, plane.pids, plane.dir
                assert directory is not None and len(ports) == 3 and len(pids) == 2
                assert all(port_is_open(port) for port in ports)
                assert run([*plane.kubectl_command(), "get", "--raw", "/readyz"]).stdout.strip() == "ok"
            assert not any(port_is_open(port) for port in ports)
            assert not any(process_alive(pid) for pid in pids)
            assert servers_of(directory) == []
            assert not directory.exists()

    def test_every_server_listens_on_loopback_only(self, control_plane: ControlPlane) -> None:
        for pid in control_plane.pids:
            addresses = listening_addresses(pid)
            assert addresses, f"process {pid} listens nowhere"
            assert all(address.startswith("127.0.0.1:") for address in addresses), addresses

    def test_kubectl_gets_readyz_answered_ok(self, control_plane: ControlPlane) -> None:
        assert run([*control_plane.kubectl_command(), "get", "--raw", "/readyz"]).stdout.strip() == "ok"

    def test_the_api_server_reports_the_pinned_kubernetes_version(self, api_client: client.ApiClient) -> None:
        info = client.VersionApi(api_client).get_code()
        assert info.git_version == pinned_version("k8s.io/kubernetes")
        assert (info.major, info.minor) == ("1", info.git_version.split(".")[1])

    def test_servers_die_with_the_process_that_started_them_when_it_is_killed(self) -> None:
        script = (
            "import json, time\n"
            "from tests.support.kube import ControlPlane\n"
            "plane = ControlPlane().start()\n"
            "print(json.dumps({'pids': plane.pids, 'dir': str(plane.dir)}), flush=True)\n"
            "time.sleep(120)\n"
        )
        starter = subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
        )
        try:
            assert starter.stdout is not None
            started = json.loads(starter.stdout.readline())
        finally:
            starter.kill()
            starter.wait()
        try:
            eventually(lambda: not any(process_alive(pid) for pid in started["pids"]), what="servers gone")
        finally:
            subprocess.run(["rm", "-rf", started["dir"]], check=True)


class TestCustomResources:
    def test_an_applied_crd_becomes_established_and_serves_objects(
        self, widgets: str, api_client: client.ApiClient, namespace: str
    ) -> None:
        crd = client.ApiextensionsV1Api(api_client).read_custom_resource_definition(widgets)
        assert crd.status is not None and crd.status.conditions
        conditions = {condition.type: condition.status for condition in crd.status.conditions}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"

        objects = client.CustomObjectsApi(api_client)
        objects.create_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, widget("first", size=3))
        listed: dict[str, Any] = objects.list_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, "v1", namespace, PLURAL
        )
        assert [item["metadata"]["name"] for item in listed["items"]] == ["first"]

    def test_the_server_applies_the_schema_defaults(
        self, widgets: str, api_client: client.ApiClient, namespace: str
    ) -> None:
        objects = client.CustomObjectsApi(api_client)
        created: dict[str, Any] = objects.create_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, "v1", namespace, PLURAL, widget("plain", size=2)
        )
        assert created["spec"] == {"size": 2, "mode": "fifo", "minReplicas": 1, "maxReplicas": 1}

    def test_an_object_outside_the_schema_bounds_is_rejected_with_the_servers_message(
        self, widgets: str, api_client: client.ApiClient, namespace: str
    ) -> None:
        objects = client.CustomObjectsApi(api_client)
        with pytest.raises(ApiException) as raised:
            objects.create_namespaced_custom_object(
                GROUP, "v1", namespace, PLURAL, widget("too-small", size=0, mode="lifo")
            )
        assert raised.value.status == 422
        message = rejection(raised.value)
        assert (
            "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1" in message
        )
        assert 'spec.mode: Unsupported value: "lifo"' in message

    def test_an_object_breaking_the_cel_rule_is_rejected_with_the_rules_message(
        self, widgets: str, api_client: client.ApiClient, namespace: str
    ) -> None:
        objects = client.CustomObjectsApi(api_client)
        with pytest.raises(ApiException) as raised:
            objects.create_namespaced_custom_object(
                GROUP, "v1", namespace, PLURAL, widget("upside-down", size=1, minReplicas=5, maxReplicas=2)
            )
        assert raised.value.status == 422
        assert CEL_MESSAGE in rejection(raised.value)
        # A default counts for the rule too: minReplicas 3 against the defaulted maxReplicas 1.
        with pytest.raises(ApiException) as raised:
            objects.create_namespaced_custom_object(
                GROUP, "v1", namespace, PLURAL, widget("defaulted", size=1, minReplicas=3)
            )
        assert CEL_MESSAGE in rejection(raised.value)


class TestWatching:
    def test_a_watch_sees_a_change_made_after_it_started(
        self, api_client: client.ApiClient, namespace: str
    ) -> None:
        core = client.CoreV1Api(api_client)
        created = core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="watched"), data={"n": "1"})
        )
        events: queue.Queue[tuple[str, dict[str, str]]] = queue.Queue()
        watcher = watch.Watch()  # type: ignore[no-untyped-call]

        assert created.metadata is not None
        created_version = created.metadata.resource_version

        def follow() -> None:
            # The watch starts from the creation's resourceVersion, so the patch below is seen whichever of
            # the two reaches the server first; the first event after it ends the watch.
            for event in watcher.stream(  # type: ignore[no-untyped-call]
                core.list_namespaced_config_map,
                namespace,
                resource_version=created_version,
                timeout_seconds=20,
            ):
                events.put((event["type"], event["object"].data))
                return

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        core.patch_namespaced_config_map("watched", namespace, {"data": {"n": "2"}})
        try:
            assert events.get(timeout=15) == ("MODIFIED", {"n": "2"})
        finally:
            thread.join(25)


class TestHelm:
    def test_helm_reports_the_pinned_version(self, control_plane: ControlPlane) -> None:
        result = run(
            [*control_plane.helm_command(), "version", "--template", "{{.Version}}"], control_plane.env()
        )
        assert result.stdout.strip() == pinned_version("helm.sh/helm/v3")

    def test_helm_installs_a_chart_and_checks_kube_version_against_the_real_server(
        self, control_plane: ControlPlane, api_client: client.ApiClient, namespace: str, tmp_path: Path
    ) -> None:
        chart = tmp_path / "tiny"
        (chart / "templates").mkdir(parents=True)
        (chart / "templates" / "configmap.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\n"
            "data:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
        )
        helm = control_plane.helm_command()
        env = control_plane.env()
        kube_version = pinned_version("k8s.io/kubernetes")

        (chart / "Chart.yaml").write_text(
            "apiVersion: v2\nname: tiny\nversion: 0.1.0\nkubeVersion: '< 1.20.0-0'\n"
        )
        refused = run([*helm, "install", "old", str(chart), "-n", namespace], env, check=False)
        assert refused.returncode != 0
        assert f"incompatible with Kubernetes {kube_version}" in refused.stderr

        (chart / "Chart.yaml").write_text(
            "apiVersion: v2\nname: tiny\nversion: 0.1.0\nkubeVersion: '>= 1.30.0-0'\n"
        )
        run([*helm, "install", "demo", str(chart), "-n", namespace], env)
        settings = client.CoreV1Api(api_client).read_namespaced_config_map("demo-settings", namespace)
        assert settings.data == {"kube": kube_version}


class TestLeastPrivilege:
    def test_a_non_admin_identity_is_forbidden_until_a_role_binding_allows_it(
        self, control_plane: ControlPlane, api_client: client.ApiClient, namespace: str
    ) -> None:
        alice = control_plane.api_client(control_plane.identity("alice", ["streamgroup:testers"]))
        as_alice = client.CoreV1Api(alice)
        with pytest.raises(ApiException) as raised:
            as_alice.list_namespaced_config_map(namespace)
        assert raised.value.status == 403
        assert 'User "alice" cannot list resource "configmaps"' in rejection(raised.value)

        rbac = client.RbacAuthorizationV1Api(api_client)
        rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="read-configmaps"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="alice-reads-configmaps"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="read-configmaps"
                ),
                subjects=[
                    client.RbacV1Subject(api_group="rbac.authorization.k8s.io", kind="User", name="alice")
                ],
            ),
        )

        def allowed() -> bool:
            try:
                as_alice.list_namespaced_config_map(namespace)
            except ApiException as error:
                if error.status != 403:
                    raise
                return False
            return True

        eventually(allowed, what="alice allowed to list configmaps")
        # Only what was granted, only where it was granted.
        for forbidden in (
            lambda: as_alice.list_namespaced_secret(namespace),
            lambda: as_alice.list_namespaced_config_map("default"),
            lambda: as_alice.create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="nope"))
            ),
        ):
            with pytest.raises(ApiException) as raised:
                forbidden()
            assert raised.value.status == 403
        alice.close()  # type: ignore[no-untyped-call]

    def test_a_role_bound_to_a_group_reaches_every_identity_in_it(
        self, control_plane: ControlPlane, api_client: client.ApiClient, namespace: str
    ) -> None:
        kubectl = control_plane.kubectl_command()
        run(
            [
                *kubectl,
                "-n",
                namespace,
                "create",
                "role",
                "secret-reader",
                "--verb=get,list",
                "--resource=secrets",
            ]
        )
        run(
            [
                *kubectl,
                "-n",
                namespace,
                "create",
                "rolebinding",
                "readers",
                "--role=secret-reader",
                "--group=streamgroup:readers",
            ]
        )
        reader = control_plane.kubectl_command(control_plane.identity("bob", ["streamgroup:readers"]))
        outsider = control_plane.kubectl_command(control_plane.identity("carol", ["streamgroup:others"]))
        can_i = ["auth", "can-i", "list", "secrets", "-n", namespace]
        eventually(
            lambda: run([*reader, *can_i], check=False).stdout.strip() == "yes", what="bob can list secrets"
        )
        assert run([*outsider, *can_i], check=False).stdout.strip() == "no"


class TestCleanup:
    def test_stopping_leaves_no_etcd_or_kube_apiserver_behind(self) -> None:
        plane = ControlPlane().start()
        directory, pids = plane.dir, plane.pids
        assert directory is not None
        assert sorted(servers_of(directory)) == sorted(pids)
        plane.stop()
        assert servers_of(directory) == []
        assert not any(process_alive(pid) for pid in pids)

    def test_both_servers_exit_on_sigterm_without_needing_sigkill(self) -> None:
        plane = ControlPlane().start()
        plane.stop()
        assert plane.exit_codes.keys() == {"etcd", "kube-apiserver"}
        assert -signal.SIGKILL not in plane.exit_codes.values(), plane.exit_codes

    def test_no_server_outlives_its_control_planes_directory(self) -> None:
        orphans = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or not process_alive(int(entry.name)):
                continue
            try:
                command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if os.path.basename(command_line.split(" ")[0]) not in ("etcd", "kube-apiserver"):
                continue
            directories = set(re.findall(r"(/[^\s=]*/sg-kube-[^/\s]+)", command_line))
            if any(not Path(directory).exists() for directory in directories):
                orphans.append(command_line[:200])
        assert orphans == []
