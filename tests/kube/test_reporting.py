"""What the operator tells people: Events on the StreamGroup (one per incident, counted; one per rescale) and
log lines that name the StreamGroup, against a real kube-apiserver and real redis-server processes.

The operator here resyncs every 0.5 s and brings a lasting incident's Event up to date at most once a second
(``--event-repeat-interval 1s``), so a count that grows is seen within seconds.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.kube.streamgroups import condition, create, eventually, get_sg, manifest, replicas
from tests.support.kube import ControlPlane
from tests.support.operator_process import OperatorProcess
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer


def start_operator(kubeconfig: Path, namespace: str, *args: str) -> OperatorProcess:
    return OperatorProcess(kubeconfig, [namespace], ["--event-repeat-interval", "1s", *args]).start()


@pytest.fixture
def operator(kubeconfig: Path, namespace: str, streamgroup_crd: None) -> Iterator[OperatorProcess]:
    process = start_operator(kubeconfig, namespace)
    try:
        yield process
    finally:
        print("operator log (end):\n" + process.tail(100))
        process.stop()


def events(apis: Any, namespace: str, name: str) -> list[Any]:
    """Every Event about the StreamGroup ``name``, oldest first."""
    found = apis.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return sorted(found, key=lambda e: e.metadata.creation_timestamp)


def of_reason(apis: Any, namespace: str, name: str, reason: str) -> list[Any]:
    return [e for e in events(apis, namespace, name) if e.reason == reason]


def with_password(apis: Any, namespace: str, secret: str, password: str) -> None:
    apis.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=secret), data={"password": base64.b64encode(password.encode()).decode()}))


class TestIncidents:
    def test_an_unreachable_redis_is_one_warning_event_whose_count_grows_without_a_flood(
        self, apis: Any, control_plane: ControlPlane, namespace: str, operator: OperatorProcess
    ) -> None:
        port = free_port()  # nothing listens there
        sg = create(apis, namespace, manifest("billing", f"redis://127.0.0.1:{port}/0"))
        [first] = eventually(lambda: of_reason(apis, namespace, "billing", "RedisUnreachable"), what="the Event")
        assert first.type == "Warning"
        assert first.message.startswith("Redis unreachable: ") and str(port) in first.message
        assert first.involved_object.uid == sg["metadata"]["uid"]
        assert first.involved_object.kind == "StreamGroup"
        assert first.source.component == "streamgroup-operator"
        seen: list[int] = []

        def grown() -> bool:
            every = events(apis, namespace, "billing")
            assert len(every) == 1, [(e.reason, e.message) for e in every]  # no flood, nothing else posted
            [event] = every
            assert event.metadata.name == first.metadata.name
            seen.append(event.count)
            return event.count >= first.count + 4

        eventually(grown, what="the count grown by several resyncs")
        assert seen == sorted(seen), "the count never goes back"
        described = subprocess.run([*control_plane.kubectl_command(), "-n", namespace, "describe", "sg", "billing"],
                                   capture_output=True, text=True, timeout=30, check=True).stdout
        assert re.search(r"Warning\s+RedisUnreachable\s+\S+ \(x\d+ over \S+\)\s+streamgroup-operator", described)

    def test_an_outage_after_a_recovery_is_a_new_event_and_the_first_keeps_its_final_count(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        create(apis, namespace, manifest("billing", redis_server.url))
        eventually(lambda: condition(get_sg(apis, namespace, "billing"), "RedisReachable")["status"] == "True",
                   what="RedisReachable")
        redis_server.stop()
        [first] = eventually(lambda: of_reason(apis, namespace, "billing", "RedisUnreachable"), what="1st Event")
        eventually(lambda: of_reason(apis, namespace, "billing", "RedisUnreachable")[0].count >= 3,
                   what="a few observations of the first outage")
        redis_server.start()
        eventually(lambda: condition(get_sg(apis, namespace, "billing"), "RedisReachable")["status"] == "True",
                   what="RedisReachable again")
        final = of_reason(apis, namespace, "billing", "RedisUnreachable")[0].count
        redis_server.stop()
        both = eventually(lambda: len(e := of_reason(apis, namespace, "billing", "RedisUnreachable")) == 2 and e,
                          what="a second Event")
        assert both[0].metadata.name == first.metadata.name and both[1].metadata.name != first.metadata.name
        assert both[0].count == final >= 3, "the first outage's Event is left as it ended"

    def test_credentials_redis_refuses_are_a_warning_event_that_shows_no_secret(
        self, apis: Any, namespace: str, operator: OperatorProcess
    ) -> None:
        server = RedisServer(password="right-one").start()
        try:
            with_password(apis, namespace, "redis-auth", "wrong-one")
            url = f"redis://127.0.0.1:{server.port}/0"
            create(apis, namespace, manifest("billing", url, redis={"url": url,
                                                                    "passwordSecretRef": {"name": "redis-auth"}}))
            [event] = eventually(lambda: of_reason(apis, namespace, "billing", "RedisAuthenticationFailed"),
                                 what="the Event")
            assert event.type == "Warning" and event.message.startswith("Redis refused the credentials")
            eventually(lambda: of_reason(apis, namespace, "billing", "RedisAuthenticationFailed")[0].count >= 3,
                       what="counted")
            every = events(apis, namespace, "billing")
            assert [e.reason for e in every] == ["RedisAuthenticationFailed"]
            assert not any("right-one" in e.message or "wrong-one" in e.message for e in every)
        finally:
            server.cleanup()

    def test_a_command_the_user_may_not_run_is_a_permission_event(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        redis_server.client().acl_setuser("limited", enabled=True, passwords=["+limited-pw"], keys=["*"],
                                          commands=["+@all", "-xinfo"])
        with_password(apis, namespace, "limited-auth", "limited-pw")
        create(apis, namespace, manifest("billing", redis_server.url, redis={
            "url": redis_server.url, "username": "limited", "passwordSecretRef": {"name": "limited-auth"}}))
        [event] = eventually(lambda: of_reason(apis, namespace, "billing", "RedisPermissionDenied"), what="the Event")
        assert event.type == "Warning" and "xinfo" in event.message.lower()
        eventually(lambda: condition(get_sg(apis, namespace, "billing"), "RedisReachable")["reason"]
                   == "PermissionDenied", what="RedisReachable=False PermissionDenied")
        eventually(lambda: of_reason(apis, namespace, "billing", "RedisPermissionDenied")[0].count >= 3,
                   what="counted")
        assert len(of_reason(apis, namespace, "billing", "RedisPermissionDenied")) == 1

    def test_a_lost_group_is_a_warning_event_until_it_is_back(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        r = redis_server.client()
        create(apis, namespace, manifest("billing", redis_server.url))
        eventually(lambda: condition(get_sg(apis, namespace, "billing"), "GroupReady")["status"] == "True",
                   what="GroupReady")
        assert of_reason(apis, namespace, "billing", "GroupLost") == [], "a group being made is not lost"
        r.xgroup_destroy("orders", "billing")
        [event] = eventually(lambda: of_reason(apis, namespace, "billing", "GroupLost"), what="the Event")
        assert event.type == "Warning" and "'billing'" in event.message and "orders" in event.message
        r.xgroup_create("orders", "billing", id="0")  # as a sidecar would, with --on-group-loss recreate
        eventually(lambda: condition(get_sg(apis, namespace, "billing"), "GroupReady")["status"] == "True",
                   what="GroupReady again")
        assert len(of_reason(apis, namespace, "billing", "GroupLost")) == 1

    @pytest.mark.parametrize("change, reason, words", [
        ({"startFrom": "2024-13-01T00:00:00Z"}, "InvalidSpec", "spec.startFrom"),
        ({"template": {"spec": {"containers": [{"name": "app"}]}}}, "InvalidTemplate", "image: Required value"),
    ])
    def test_a_spec_or_template_that_cannot_be_used_is_a_warning_event(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer,
        change: dict[str, Any], reason: str, words: str,
    ) -> None:
        body = manifest("billing", redis_server.url)
        body["spec"].update(change)
        create(apis, namespace, body)
        [event] = eventually(lambda: of_reason(apis, namespace, "billing", reason), what="the Event")
        assert event.type == "Warning" and words in event.message
        ready = eventually(lambda: (c := condition(get_sg(apis, namespace, "billing"), "Ready")).get("reason")
                           == reason and c, what=f"Ready=False {reason}")
        assert ready["status"] == "False" and words in ready["message"]


class TestRescaling:
    def test_a_scaling_decision_is_a_normal_event_with_the_new_size_and_why(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        r = redis_server.client()
        for n in range(25):
            r.xadd("orders", {"n": str(n)})
        create(apis, namespace, manifest("billing", redis_server.url, autoscaling={
            "minReplicas": 1, "maxReplicas": 5, "targetLagPerReplica": 10}))
        eventually(lambda: replicas(apis, namespace, "billing") == 3, what="3 replicas for lag 25")
        [event] = eventually(lambda: of_reason(apis, namespace, "billing", "SuccessfulRescale"), what="the Event")
        assert event.type == "Normal"
        assert event.message == "New size: 3; reason: lag 25 above target (10 per replica)"


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class TestLogLines:
    def test_every_json_line_about_a_streamgroup_names_it(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        r = redis_server.client()
        for n in range(25):
            r.xadd("orders", {"n": str(n)})
        create(apis, namespace, manifest("billing", redis_server.url, autoscaling={
            "minReplicas": 1, "maxReplicas": 5, "targetLagPerReplica": 10}))
        create(apis, namespace, manifest("broken", f"redis://127.0.0.1:{free_port()}/0"))
        eventually(lambda: replicas(apis, namespace, "billing") == 3, what="scaled")
        eventually(lambda: of_reason(apis, namespace, "broken", "RedisUnreachable"), what="the incident")

        def logged() -> list[dict[str, Any]]:
            lines = json_lines(operator.logs())
            return lines if {"scaled", "Redis unreachable"} <= {line["msg"].split(":")[0] for line in lines} else []

        lines = eventually(logged, what="the scaling and the incident logged")
        operator_wide = ("starting", "serving /healthz and /metrics", "became leader", "standby")
        about = [line for line in lines if line["logger"] == "kopf.objects"
                 or (line["logger"] == "streamgroup.operator" and line["msg"] not in operator_wide)]
        assert {line["streamgroup"] for line in about} == {f"{namespace}/billing", f"{namespace}/broken"}, [
            line for line in about if "streamgroup" not in line]
        [scaled] = [line for line in about if line["msg"] == "scaled"]
        assert scaled["streamgroup"] == f"{namespace}/billing" and (scaled["from"], scaled["to"]) == (1, 3)

    def test_text_lines_name_the_streamgroup_too(
        self, apis: Any, kubeconfig: Path, namespace: str, streamgroup_crd: None
    ) -> None:
        process = start_operator(kubeconfig, namespace, "--log-format", "text")
        try:
            create(apis, namespace, manifest("broken", f"redis://127.0.0.1:{free_port()}/0"))
            eventually(lambda: "Handler 'reconcile' failed temporarily" in (text := process.logs())
                       and "streamgroup.operator: Redis unreachable" in text, what="kopf's line and ours")
            lines = process.logs().splitlines()
            ours = [line for line in lines if " streamgroup.operator: Redis unreachable: " in line]
            kopfs = [line for line in lines if " kopf.objects: " in line]
            assert ours and kopfs
            assert all(f"streamgroup={namespace}/broken" in line for line in ours + kopfs), ours + kopfs
            assert not any(line.startswith("{") for line in lines)
        finally:
            print("operator log (end):\n" + process.tail(50))
            process.stop()
