"""Restricted pods and a closed network, judged by the real API server.

Pod Security admission enforces a namespace's ``pod-security.kubernetes.io/enforce`` level on Pods only
(a Deployment whose template breaks it is stored, with a warning), and no controller here turns a
Deployment into Pods. So each test makes a Pod of the pod template, exactly as a ReplicaSet would, and
creates it with a server-side dry run (``dryRun=All``): admission runs in full, nothing is stored. The
pods: the chart's operator, and a StreamGroup's replica (the Deployment the operator builds from a
StreamGroup as the API server stored it, defaults applied: the user's app plus the injected sidecar).
Every admitted case has a twin the same namespace rejects, so a green run means the policy was checked.

The chart's optional NetworkPolicy, and the one the README suggests for a StreamGroup's pods, are
created on the API server and read back: their schema is valid and nothing in them is dropped.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from streamgroup_core.spec import parse_resource
from streamgroup_operator.building import SIDECAR_NAME, build_deployment
from streamgroup_operator.config import SidecarDefaults
from tests.kube.streamgroups import create, get_sg, manifest
from tests.support.kube import ControlPlane

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "streamgroup"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}
REFUSAL = 'violates PodSecurity "restricted:latest"'
Body = dict[str, Any]


def run(control_plane: ControlPlane, *command: str, stdin: str | None = None) -> str:
    result = subprocess.run(list(command), input=stdin, capture_output=True, text=True, timeout=120,
                            env=control_plane.env())
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def new_namespace(core: client.CoreV1Api, labels: dict[str, str]) -> str:
    name = f"psa-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    return name


def readme_snippets() -> list[Body]:
    """The YAML blocks of the README's section on network policy and pod security, in order."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Network policy and pod security\n", 1)[1].split("\n### ", 1)[0]
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)]


def readme_snippet(key: str) -> Body:
    [found] = [snippet for snippet in readme_snippets() if key in snippet]
    return found

def pod_of(template: Body) -> Body:
    """The Pod a ReplicaSet would make of ``template``."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"pod-{uuid.uuid4().hex[:8]}", "labels": template["metadata"].get("labels", {})},
            "spec": copy.deepcopy(template["spec"])}


def admit(core: client.CoreV1Api, namespace: str, pod: Body) -> None:
    """Create ``pod`` with a server-side dry run: every admission plugin judges it, nothing is stored."""
    core.create_namespaced_pod(namespace, pod, dry_run="All")


def refusal(core: client.CoreV1Api, namespace: str, pod: Body) -> str:
    """The message of the API server's refusal of ``pod`` (the test fails if it is admitted)."""
    with pytest.raises(ApiException) as info:
        admit(core, namespace, pod)
    assert info.value.status == 403, info.value.body
    message: str = json.loads(info.value.body)["message"]
    return message


def container(pod: Body, name: str) -> Body:
    [found] = [c for c in pod["spec"]["containers"] if c["name"] == name]
    return found


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def restricted(core: client.CoreV1Api) -> str:
    """A fresh namespace that enforces the latest `restricted` Pod Security Standard."""
    return new_namespace(core, RESTRICTED)


@pytest.fixture(scope="module")
def operator_template(control_plane: ControlPlane) -> Body:
    """The pod template of the chart's operator Deployment, rendered with default values."""
    rendered = run(control_plane, *control_plane.helm_command(), "template", "sg", str(CHART), "-n", "sg-system",
                   "--show-only", "templates/operator/deployment.yaml")
    template: Body = yaml.safe_load(rendered)["spec"]["template"]
    return template


# A user's app written for a restricted namespace, in the two usual styles: everything on the container,
# or the pod-wide part (non-root, seccomp) on the pod, which then covers the sidecar too.
APP_CONTAINER = {"name": "app", "image": "registry.example/billing:1.4.2", "ports": [{"containerPort": 8080}],
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
                                     "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}
APP_POD_WIDE = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "app", "image": "registry.example/billing:1.4.2", "ports": [{"containerPort": 8080}],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}]}],
    "volumes": [{"name": "scratch", "emptyDir": {}}],
}
TLS = {"host": "redis.data.svc", "port": 6380, "passwordSecretRef": {"name": "redis-auth"},
       "tls": {"enabled": True, "caSecretRef": {"name": "redis-ca", "key": "ca.crt"},
               "clientCertSecretRef": {"name": "redis-client"}, "serverName": "redis.data.svc"}}
PLAIN = {"url": "redis://redis.data.svc:6379/0", "passwordSecretRef": {"name": "redis-auth"}}


def replica_template(apis: Any, namespace: str, redis: Body, pod_spec: Body) -> Body:
    """The pod template of the Deployment the operator builds for a StreamGroup stored in ``namespace``.

    The StreamGroup goes through the API server first, so the builder sees what the operator would: the
    spec validated and defaulted by the CRD.
    """
    name = f"billing-{uuid.uuid4().hex[:6]}"
    body = manifest(name, "unused", redis=redis, template={"spec": pod_spec})
    create(apis, namespace, body)
    stored = get_sg(apis, namespace, name)
    deployment = build_deployment(stored["metadata"], parse_resource(stored), 1, SidecarDefaults())
    template: Body = deployment["spec"]["template"]
    return template


class TestTheOperatorPodIsRestricted:
    def test_the_charts_operator_pod_is_admitted_where_restricted_is_enforced(
        self, core: client.CoreV1Api, restricted: str, operator_template: Body
    ) -> None:
        pod = pod_of(operator_template)
        admit(core, restricted, pod)
        # Beyond what `restricted` asks: the root filesystem is read-only too.
        assert container(pod, "operator")["securityContext"]["readOnlyRootFilesystem"] is True

    @pytest.mark.parametrize(("breach", "named"), [
        (lambda pod: pod["spec"]["securityContext"].pop("seccompProfile"), "seccompProfile"),
        (lambda pod: container(pod, "operator")["securityContext"].update(
            privileged=True, allowPrivilegeEscalation=True), "privileged"),
        (lambda pod: container(pod, "operator")["securityContext"].pop("capabilities"), "unrestricted capabilities"),
    ], ids=["no-seccomp", "privileged", "capabilities-kept"])
    def test_the_same_pod_made_less_strict_is_refused(
        self, core: client.CoreV1Api, restricted: str, operator_template: Body,
        breach: Callable[[Body], object], named: str,
    ) -> None:
        pod = pod_of(operator_template)
        breach(pod)
        message = refusal(core, restricted, pod)
        assert REFUSAL in message and named in message and '"operator"' in message


class TestAStreamGroupsPodsAreRestricted:
    @pytest.mark.parametrize("redis", [PLAIN, TLS], ids=["plain", "tls"])
    @pytest.mark.parametrize("app", [{"containers": [APP_CONTAINER]}, APP_POD_WIDE], ids=["app-container", "app-pod"])
    def test_a_replica_of_a_restricted_app_with_the_sidecar_injected_is_admitted(
        self, apis: Any, core: client.CoreV1Api, restricted: str, redis: Body, app: Body
    ) -> None:
        pod = pod_of(replica_template(apis, restricted, redis, copy.deepcopy(app)))
        admit(core, restricted, pod)
        sidecar = container(pod, SIDECAR_NAME)
        assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
        if redis is TLS:  # the Secret volumes were judged too
            secrets = {v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
            assert secrets == {"redis-ca", "redis-client"}
            assert all(mount["readOnly"] for mount in sidecar["volumeMounts"])

    # With the app's settings on its own container only, each of the sidecar's settings is what admits it.
    @pytest.mark.parametrize(("breach", "named"), [
        (lambda sc: sc.pop("runAsNonRoot"), "runAsNonRoot != true"),
        (lambda sc: sc.pop("seccompProfile"), "seccompProfile"),
        (lambda sc: sc.pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation != false"),
        (lambda sc: sc.pop("capabilities"), "unrestricted capabilities"),
        (lambda sc: sc.update(privileged=True, allowPrivilegeEscalation=True), "privileged"),
    ], ids=["root-allowed", "no-seccomp", "escalation-allowed", "capabilities-kept", "privileged"])
    def test_a_replica_whose_sidecar_is_made_less_strict_is_refused(
        self, apis: Any, core: client.CoreV1Api, restricted: str, breach: Callable[[Body], object], named: str
    ) -> None:
        pod = pod_of(replica_template(apis, restricted, TLS, {"containers": [copy.deepcopy(APP_CONTAINER)]}))
        breach(container(pod, SIDECAR_NAME)["securityContext"])
        message = refusal(core, restricted, pod)
        assert REFUSAL in message and named in message and f'"{SIDECAR_NAME}"' in message

    def test_an_app_that_is_not_restricted_is_refused_and_the_refusal_names_the_app_not_the_sidecar(
        self, apis: Any, core: client.CoreV1Api, restricted: str
    ) -> None:
        pod = pod_of(replica_template(apis, restricted, PLAIN, {"containers": [{"name": "app", "image": "billing:1"}]}))
        message = refusal(core, restricted, pod)
        assert REFUSAL in message and '"app"' in message and SIDECAR_NAME not in message

    def test_the_app_template_the_readme_shows_is_admitted(
        self, apis: Any, core: client.CoreV1Api, restricted: str
    ) -> None:
        template = readme_snippet("template")["template"]
        admit(core, restricted, pod_of(replica_template(apis, restricted, PLAIN, template["spec"])))

    def test_the_refusals_come_from_the_namespaces_enforced_level(
        self, apis: Any, core: client.CoreV1Api, namespace: str
    ) -> None:
        """Control: the pod refused above is admitted where nothing is enforced (here: PSA's default, privileged)."""
        pod = pod_of(replica_template(apis, namespace, PLAIN, {"containers": [{"name": "app", "image": "billing:1"}]}))
        container(pod, SIDECAR_NAME)["securityContext"].update(privileged=True, allowPrivilegeEscalation=True)
        admit(core, namespace, pod)


def stored_policy(control_plane: ControlPlane, namespace: str, policy: Body) -> Body:
    """``policy`` created in ``namespace`` (unknown or misplaced fields refused), as the API server keeps it."""
    kubectl = control_plane.kubectl_command()
    run(control_plane, *kubectl, "create", "--validate=strict", "-n", namespace, "-f", "-", stdin=json.dumps(policy))
    stored: Body = json.loads(run(control_plane, *kubectl, "get", "networkpolicy", policy["metadata"]["name"],
                                  "-n", namespace, "-o", "json"))
    return stored


def rendered_policy(control_plane: ControlPlane, namespace: str, values: Body) -> Body:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values, file)
        file.flush()
        rendered = run(control_plane, *control_plane.helm_command(), "template", f"sg-{uuid.uuid4().hex[:6]}",
                       str(CHART), "-n", namespace, "-f", file.name,
                       "--show-only", "templates/operator/networkpolicy.yaml")
    policy: Body = yaml.safe_load(rendered)
    return policy


class TestTheNetworkPolicies:
    def test_the_charts_policy_with_the_readmes_values_is_valid_and_kept_whole(
        self, control_plane: ControlPlane, namespace: str
    ) -> None:
        policy = rendered_policy(control_plane, namespace, readme_snippet("networkPolicy"))
        assert stored_policy(control_plane, namespace, policy)["spec"] == policy["spec"]

    def test_the_charts_policy_with_every_kind_of_peer_is_valid_and_kept_whole(
        self, control_plane: ControlPlane, namespace: str
    ) -> None:
        peers = [{"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.9.0/24"]}},
                 {"namespaceSelector": {"matchExpressions": [
                     {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["data"]}]}},
                 {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}}}]
        policy = rendered_policy(control_plane, namespace, {"networkPolicy": {
            "enabled": True, "apiServer": {"cidrs": ["10.0.0.10/32", "fd00::10/128"], "ports": [6443]},
            "redis": {"cidrs": ["10.21.0.0/16"], "selectors": peers, "ports": [6379, 26379]},
            "dns": {"to": [], "ports": [53]}, "metrics": {"from": peers},
            "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.9.9.9/32"}}], "ports": [{"port": 3128}]}]}})
        stored = stored_policy(control_plane, namespace, policy)["spec"]
        # The API server fills in the protocol the extra rule left out; the rest is kept as rendered.
        assert stored["egress"][-1]["ports"] == [{"port": 3128, "protocol": "TCP"}]
        stored["egress"][-1]["ports"] = [{"port": 3128}]
        assert stored == policy["spec"]

    def test_the_readmes_policy_for_a_streamgroups_pods_is_valid_and_fits_the_sidecar(
        self, control_plane: ControlPlane, apis: Any, namespace: str
    ) -> None:
        policy = readme_snippet("kind")
        assert policy["kind"] == "NetworkPolicy"
        assert stored_policy(control_plane, namespace, policy)["spec"] == policy["spec"]
        # It selects the replicas the operator makes of StreamGroup billing, and names the sidecar's port.
        stored = get_sg(apis, namespace, create(apis, namespace, manifest(
            "billing", "redis://redis.data.svc:6379/0"))["metadata"]["name"])
        template = build_deployment(stored["metadata"], parse_resource(stored), 1, SidecarDefaults())
        template = template["spec"]["template"]
        selected = policy["spec"]["podSelector"]["matchLabels"]
        assert selected.items() <= template["metadata"]["labels"].items()
        [port] = container(template, SIDECAR_NAME)["ports"]
        assert policy["spec"]["ingress"][0]["ports"] == [{"port": port["name"], "protocol": "TCP"}]
        assert port["containerPort"] == 9400, "the README says 9400"
