"""The Helm chart installed into a real API server, and the operator running under its RBAC.

The operator runs with a client certificate whose user name is the chart's ServiceAccount
(``system:serviceaccount:<namespace>:<name>``): RBAC authorizes by that name, so the operator
gets exactly the permissions the chart grants, no more.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kube.streamgroups import GROUP, PLURAL, VERSION, create, eventually, get_sg, manifest
from tests.support.kube import ControlPlane
from tests.support.operator_process import OperatorProcess
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "streamgroup"


def run(command: list[str], control_plane: ControlPlane, stdin: str | None = None) -> str:
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120,
                            env=control_plane.env())
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def new_namespace(core: client.CoreV1Api) -> str:
    name = f"sg-system-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


class TestInstalling:
    def test_the_rendered_chart_passes_server_side_dry_run_then_installs(
        self, control_plane: ControlPlane, core: client.CoreV1Api, streamgroup_crd: None
    ) -> None:
        system = new_namespace(core)
        watched = new_namespace(core)
        helm = control_plane.helm_command()
        kubectl = control_plane.kubectl_command()
        for values in ([], ["--set", f"operator.watchNamespaces={{{watched}}}", "--set", "dashboard.enabled=false"]):
            rendered = run([*helm, "template", f"dry-{uuid.uuid4().hex[:6]}", str(CHART), "-n", system, *values],
                           control_plane)
            out = run([*kubectl, "apply", "--dry-run=server", "-f", "-"], control_plane, rendered)
            assert "(server dry run)" in out
        release = f"sg-{uuid.uuid4().hex[:6]}"
        run([*helm, "install", release, str(CHART), "-n", system, "--wait=false"], control_plane)
        status = run([*helm, "status", release, "-n", system, "-o", "yaml"], control_plane)
        assert yaml.safe_load(status)["info"]["status"] == "deployed"
        deployment = client.AppsV1Api(control_plane.api_client()).read_namespaced_deployment(
            f"{release}-streamgroup-operator", system)
        assert deployment.spec.template.spec.service_account_name == f"{release}-streamgroup"
        run([*helm, "uninstall", release, "-n", system], control_plane)
        # CRDs are kept on uninstall: StreamGroups (and their groups) survive a reinstall.
        client.ApiextensionsV1Api(control_plane.api_client()).read_custom_resource_definition(
            "streamgroups.streamgroup.io")


def install_namespaced(control_plane: ControlPlane, core: client.CoreV1Api) -> tuple[str, str, Path]:
    """Install in namespaced mode; returns (system namespace, watched namespace, operator's kubeconfig)."""
    system = new_namespace(core)
    watched = new_namespace(core)
    release = f"rbac-{uuid.uuid4().hex[:6]}"
    run([*control_plane.helm_command(), "install", release, str(CHART), "-n", system,
         "--set", f"operator.watchNamespaces={{{watched}}}"], control_plane)
    account = f"{release}-streamgroup"
    kubeconfig = control_plane.identity(f"system:serviceaccount:{system}:{account}",
                                        ["system:serviceaccounts", f"system:serviceaccounts:{system}"])
    return system, watched, kubeconfig


def chart_election_env(control_plane: ControlPlane, system: str) -> dict[str, str]:
    """The installed operator Deployment's leader election settings, and what the downward API would add."""
    [deployment] = client.AppsV1Api(control_plane.api_client()).list_namespaced_deployment(system).items
    [container] = deployment.spec.template.spec.containers
    env = {e.name: e.value for e in container.env if e.name.startswith("SG_OPERATOR_LEADER_ELECT")}
    assert env["SG_OPERATOR_LEADER_ELECT"] == "true"
    return {**env, "POD_NAMESPACE": system, "POD_NAME": "operator-0"}


class TestLeastPrivilege:
    def test_the_operator_reconciles_with_only_the_charts_permissions(
        self, control_plane: ControlPlane, core: client.CoreV1Api, streamgroup_crd: None,
        redis_server: RedisServer,
    ) -> None:
        system, watched, kubeconfig = install_namespaced(control_plane, core)
        admin: Any = type("Apis", (), {"custom": client.CustomObjectsApi(control_plane.api_client())})
        # Leader election as the chart sets it up: its Lease, in the release's namespace, by the chart's Role.
        election = chart_election_env(control_plane, system)
        operator = OperatorProcess(kubeconfig, [watched], ["--event-repeat-interval", "1s"],
                                   SG_OPERATOR_LEADER_ELECT_NAMESPACE="", **election).start()
        try:
            eventually(lambda: "streamgroup_operator_leader 1.0" in operator.get("/metrics")[1], what="leading")
            lease = client.CoordinationV1Api(control_plane.api_client()).read_namespaced_lease(
                election["SG_OPERATOR_LEADER_ELECT_LEASE_NAME"], system)
            assert lease.spec.holder_identity.startswith("operator-0_")
            create(admin, watched, manifest("billing", redis_server.url, autoscaling={
                "minReplicas": 1, "maxReplicas": 2, "targetLagPerReplica": 1}, deletionPolicy="Delete"))
            create(admin, watched, manifest("unreachable", f"redis://127.0.0.1:{free_port()}/0"))
            apps = client.AppsV1Api(control_plane.api_client())
            eventually(lambda: apps.read_namespaced_deployment("billing", watched), what="the Deployment")
            redis_server.client().xadd("orders", {"k": "v"})
            redis_server.client().xadd("orders", {"k": "v"})
            eventually(lambda: apps.read_namespaced_deployment("billing", watched).spec.replicas == 2,
                       what="autoscaled through deployments/scale")
            sg = eventually(lambda: (s := get_sg(admin, watched, "billing")).get("status", {}).get("lag") == 2 and s,
                            what="status written")
            conditions = {c["type"]: c["status"] for c in sg["status"]["conditions"]}
            assert conditions["RedisReachable"] == conditions["GroupReady"] == "True"
            # Events: a rescale is created, a lasting incident's count patched.
            events = client.CoreV1Api(control_plane.api_client())
            eventually(lambda: [e for e in events.list_namespaced_event(watched).items
                                if e.reason == "SuccessfulRescale" and e.involved_object.name == "billing"],
                       what="the rescale Event")
            eventually(lambda: [e for e in events.list_namespaced_event(watched).items
                                if e.reason == "RedisUnreachable" and (e.count or 0) >= 3], what="a count patched")
            assert "could not write an Event" not in operator.logs()
            admin.custom.delete_namespaced_custom_object(GROUP, VERSION, watched, PLURAL, "billing")

            def gone() -> bool:
                try:
                    get_sg(admin, watched, "billing")
                except ApiException as exc:
                    return exc.status == 404
                return False

            eventually(gone, what="deletion handled (finalizer removed)")
            assert redis_server.client().xinfo_groups("orders") == []
            # A refusal reads "Forbidden" / "... is forbidden: User ... cannot ..." (a bare "403" would also
            # match millisecond timestamps such as "37.403Z").
            assert "forbidden" not in operator.logs().lower()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n" + operator.tail(30)) from None
        finally:
            operator.stop()

    def test_the_operator_is_refused_what_it_does_not_need(
        self, control_plane: ControlPlane, core: client.CoreV1Api, streamgroup_crd: None
    ) -> None:
        system, watched, kubeconfig = install_namespaced(control_plane, core)
        as_operator = control_plane.api_client(kubeconfig)
        its_core = client.CoreV1Api(as_operator)
        its_apps = client.AppsV1Api(as_operator)
        its_leases = client.CoordinationV1Api(as_operator)
        own = chart_election_env(control_plane, system)["SG_OPERATOR_LEADER_ELECT_LEASE_NAME"]

        def lease(name: str) -> client.V1Lease:
            return client.V1Lease(metadata=client.V1ObjectMeta(name=name), spec=client.V1LeaseSpec())

        refused = [
            lambda: its_core.list_namespaced_secret(watched),             # get one by name only
            lambda: its_core.read_namespaced_secret("anything", system),  # not outside its namespaces
            lambda: its_core.list_namespaced_pod(system),
            lambda: its_apps.delete_namespaced_deployment("billing", watched),
            lambda: its_core.create_namespaced_pod(watched, client.V1Pod(
                metadata=client.V1ObjectMeta(name="x"),
                spec=client.V1PodSpec(containers=[client.V1Container(name="x", image="x")]))),
            lambda: client.CustomObjectsApi(as_operator).list_cluster_custom_object(GROUP, VERSION, PLURAL),
            lambda: client.RbacAuthorizationV1Api(as_operator).list_cluster_role(),
            lambda: its_core.list_namespaced_event(watched),  # it remembers its own Events
            lambda: its_core.delete_namespaced_event("anything", watched),
            # Leases: get and update its own, create, in the release's namespace; nothing else.
            lambda: its_leases.read_namespaced_lease("someone-elses", system),
            lambda: its_leases.replace_namespaced_lease("someone-elses", system, lease("someone-elses")),
            lambda: its_leases.list_namespaced_lease(system),
            lambda: its_leases.delete_namespaced_lease(own, system),
            lambda: its_leases.create_namespaced_lease(watched, lease("elsewhere")),
        ]
        for call in refused:
            with pytest.raises(ApiException) as info:
                call()
            assert info.value.status == 403
        assert its_core.list_namespaced_pod(watched).items == []  # what it needs, it has
        its_leases.create_namespaced_lease(system, lease(own))
        mine = its_leases.read_namespaced_lease(own, system)
        mine.spec.holder_identity = "operator-0_test"
        its_leases.replace_namespaced_lease(own, system, mine)
