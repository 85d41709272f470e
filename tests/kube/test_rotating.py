"""Credential rotation on the real API server: a changed password Secret rolls the Deployment's pods.

The operator reads the Secrets a StreamGroup names on every resync (it has ``get`` on Secrets, no
watch); when one its pods read has a new version, it applies the Deployment again with a new
``streamgroup.io/secrets-version`` pod template annotation, which is what makes the Deployment
controller roll the pods. Here: that annotation changes within a few resyncs of the Secret, with
one write to the Deployment, under only the chart's permissions; the operator itself goes on
reaching Redis with the new password, whether Redis accepted both for a while (ACL) or switched at
once (``CONFIG SET requirepass``); and a Secret rewritten unchanged, or one the pods do not read,
writes nothing. (No kubelet runs here: that the pods do roll, without losing entries, is for a test
on a real node.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kubernetes import client

from streamgroup_operator.building import SECRETS_VERSION
from tests.kube.streamgroups import condition, create, deployment, eventually, get_sg, manifest
from tests.kube.test_installing import chart_election_env, install_namespaced
from tests.kube.test_quiet import versions, writes
from tests.support.kube import ControlPlane
from tests.support.operator_process import OperatorProcess
from tests.support.redis_server import RedisServer

FIRST, SECOND = "first-pw-4f1c", "second-pw-9a7e"


def annotation(apis: Any, namespace: str) -> str | None:
    template = deployment(apis, namespace, "billing")["spec"]["template"]
    value = (template["metadata"].get("annotations") or {}).get(SECRETS_VERSION)
    return str(value) if value is not None else None


def resyncs(operator: OperatorProcess) -> float:
    """StreamGroup resyncs so far, whatever Redis answered (the operator's counter)."""
    text = operator.get("/metrics")[1]
    found = re.findall(r'^streamgroup_operator_reconciles_total\{kind="resync",result="\w+"\} (\S+)$', text, re.M)
    return sum(float(value) for value in found)


def set_secret(apis: Any, namespace: str, name: str, password: str) -> dict[str, Any]:
    """Create the Secret, or replace its data (``kubectl apply`` of a new value); returns it as stored."""
    body = client.V1Secret(metadata=client.V1ObjectMeta(name=name),
                           data={"password": base64.b64encode(password.encode()).decode()})
    try:
        stored = apis.core.replace_namespaced_secret(name, namespace, body)
    except client.exceptions.ApiException as exc:
        if exc.status != 404:
            raise
        stored = apis.core.create_namespaced_secret(namespace, body)
    result: dict[str, Any] = apis.core.api_client.sanitize_for_serialization(stored)
    return result


def deployment_writes(control_plane: ControlPlane) -> Counter[str]:
    return Counter({verb: count for verb, count in writes(control_plane).items() if verb.endswith(" deployments")})


def admin(server: RedisServer, password: str) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, password=password)


def lag_shown(apis: Any, namespace: str, lag: int) -> bool:
    sg = get_sg(apis, namespace, "billing")
    return sg.get("status", {}).get("lag") == lag and condition(sg, "RedisReachable").get("status") == "True"


def streamgroup(apis: Any, namespace: str, server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{server.port}/0"
    create(apis, namespace, manifest("billing", url, redis={"url": url, "passwordSecretRef": {"name": "redis-auth"}}))


def no_key_material(apis: Any, namespace: str, *passwords: str) -> None:
    text = json.dumps(deployment(apis, namespace, "billing"))
    for password in passwords:
        assert password not in text
        for algorithm in ("sha256", "sha1", "md5"):
            digest = hashlib.new(algorithm, password.encode()).hexdigest()
            assert not any(digest[:n] in text for n in (8, 16, len(digest))), algorithm


@pytest.fixture
def server() -> Iterator[RedisServer]:
    started = RedisServer(password=FIRST).start()
    try:
        yield started
    finally:
        started.cleanup()


class TestRotatingThePassword:
    def test_a_new_password_in_the_secret_rolls_the_pod_template_with_one_write_under_the_charts_permissions(
        self, control_plane: ControlPlane, apis: Any, server: RedisServer
    ) -> None:
        """The zero-downtime way: Redis accepts both passwords while the Secret changes and the pods roll."""
        system, watched, kubeconfig = install_namespaced(control_plane, apis.core)
        # The chart's leader election too: its Lease in the release's namespace, under the chart's Role.
        operator = OperatorProcess(kubeconfig, [watched], SG_OPERATOR_LEADER_ELECT_NAMESPACE="",
                                   **chart_election_env(control_plane, system)).start()
        try:
            set_secret(apis, watched, "redis-auth", FIRST)
            for n in range(2):
                admin(server, FIRST).xadd("orders", {"n": str(n)})
            streamgroup(apis, watched, server)
            first = eventually(lambda: annotation(apis, watched), what="the pod template's Secrets version")
            eventually(lambda: lag_shown(apis, watched, 2), what="the lag, with the first password")

            admin(server, FIRST).execute_command("ACL", "SETUSER", "default", f">{SECOND}")  # both work now
            before, start = deployment_writes(control_plane), resyncs(operator)
            set_secret(apis, watched, "redis-auth", SECOND)
            second = eventually(lambda: (a := annotation(apis, watched)) != first and a,
                                what="a new Secrets version in the pod template")
            assert resyncs(operator) - start <= 5, "not within a few resyncs"

            # The old password goes, and every connection with it: the operator's new ones use the new one.
            rotated = admin(server, SECOND)
            rotated.execute_command("ACL", "SETUSER", "default", f"<{FIRST}")
            rotated.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            rotated.xadd("orders", {"n": "after the rotation"})
            eventually(lambda: lag_shown(apis, watched, 3), what="the new lag, measured with the second password")

            start = resyncs(operator)
            eventually(lambda: resyncs(operator) >= start + 4, what="four more resyncs")
            assert annotation(apis, watched) == second
            assert deployment_writes(control_plane) - before == Counter({"APPLY deployments": 1})
            events = apis.core.list_namespaced_event(watched).items
            assert not [e for e in events if e.reason == "RedisAuthenticationFailed"], "refused during the rotation"
            no_key_material(apis, watched, FIRST, SECOND)
            logs = operator.logs()
            assert "forbidden" not in logs.lower()
            assert FIRST not in logs and SECOND not in logs
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n" + operator.tail(30)) from None
        finally:
            operator.stop()

    def test_after_requirepass_changes_at_once_the_operator_is_refused_until_the_secret_follows_then_rolls(
        self, apis: Any, namespace: str, operator: OperatorProcess, server: RedisServer
    ) -> None:
        set_secret(apis, namespace, "redis-auth", FIRST)
        streamgroup(apis, namespace, server)
        first = eventually(lambda: annotation(apis, namespace), what="the pod template's Secrets version")
        eventually(lambda: lag_shown(apis, namespace, 0), what="reachable with the first password")

        old = admin(server, FIRST)
        old.config_set("requirepass", SECOND)
        old.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        eventually(lambda: condition(get_sg(apis, namespace, "billing"), "RedisReachable").get("reason")
                   == "AuthenticationFailed", what="refused with the old password")
        assert annotation(apis, namespace) == first

        set_secret(apis, namespace, "redis-auth", SECOND)
        eventually(lambda: annotation(apis, namespace) != first, what="a new Secrets version in the pod template")
        admin(server, SECOND).xadd("orders", {"n": "1"})
        eventually(lambda: lag_shown(apis, namespace, 1), what="reachable again with the second password")
        no_key_material(apis, namespace, FIRST, SECOND)


class TestNothingToRoll:
    def test_a_secret_rewritten_unchanged_or_one_the_pods_do_not_read_writes_nothing(
        self, control_plane: ControlPlane, apis: Any, namespace: str, operator: OperatorProcess,
        server: RedisServer
    ) -> None:
        stored = set_secret(apis, namespace, "redis-auth", FIRST)
        set_secret(apis, namespace, "unrelated", "unrelated-pw")
        streamgroup(apis, namespace, server)
        first = eventually(lambda: annotation(apis, namespace), what="the pod template's Secrets version")
        eventually(lambda: lag_shown(apis, namespace, 0), what="the StreamGroup settled")
        start = resyncs(operator)
        eventually(lambda: resyncs(operator) >= start + 2, what="two resyncs, so what they wrote is in place")

        before, written = versions(apis, namespace), writes(control_plane)
        # The same data again is no change (the API server keeps its resourceVersion); another Secret is none of its.
        again = set_secret(apis, namespace, "redis-auth", FIRST)
        assert again["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
        set_secret(apis, namespace, "unrelated", "rotated-pw")
        start = resyncs(operator)
        eventually(lambda: resyncs(operator) >= start + 4, what="four resyncs")
        assert versions(apis, namespace) == before
        assert annotation(apis, namespace) == first
        operators = Counter({k: v for k, v in (writes(control_plane) - written).items() if k != "PUT secrets"})
        assert operators == Counter(), "the operator wrote while nothing it reads had changed"
