"""The operator with its own least-privilege Redis user (`spec.redis.operatorCredentials`), on the real API
server: with the rules `streamgroup acl` prints it creates the group, reports lag and pending, removes a
consumer of no live replica and destroys the group on deletion, and Redis logs no refusal; the sidecar's
user may do none of that; a command taken away is named, command and key, in the condition and Event."""

from __future__ import annotations

import base64
import io
from typing import Any

import redis
from kubernetes import client

from streamgroup_cli.__main__ import main
from streamgroup_core.acls import setuser_arguments
from tests.kube.streamgroups import condition, create, eventually, get_sg, manifest
from tests.support.operator_process import OperatorProcess
from tests.support.redis_server import RedisServer

SIDECAR_PW, OPERATOR_PW = "sidecar-pw", "operator-pw"


def users(server: RedisServer) -> None:
    out = io.StringIO()
    assert main(["acl", "--streams", "orders", "--group", "billing", "--parts", "sidecar,operator"], stdout=out) == 0
    for line in out.getvalue().splitlines():
        password = SIDECAR_PW if "-sidecar " in line else OPERATOR_PW
        server.client().execute_command(*setuser_arguments(line.replace("<password>", password)))


def secret(apis: Any, namespace: str, name: str, password: str) -> None:
    apis.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=name), data={"password": base64.b64encode(password.encode()).decode()}))


def refusals(server: RedisServer) -> list[Any]:
    rows = server.client().execute_command("ACL", "LOG")
    return [dict(zip(row[::2], row[1::2], strict=True)) for row in rows]


def streamgroup(apis: Any, namespace: str, server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{server.port}/0"
    secret(apis, namespace, "sidecar-auth", SIDECAR_PW)
    secret(apis, namespace, "operator-auth", OPERATOR_PW)
    create(apis, namespace, manifest("billing", url, deletionPolicy="Delete", redis={
        "url": url, "username": "sg-billing-sidecar", "passwordSecretRef": {"name": "sidecar-auth"},
        "operatorCredentials": {"username": "sg-billing-operator", "passwordSecretRef": {"name": "operator-auth"}}}))


class TestTheOperatorsOwnUser:
    def test_with_only_its_rules_it_manages_the_group_from_creation_to_deletion(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        users(redis_server)
        admin = redis_server.client()
        for n in range(3):
            admin.xadd("orders", {"n": str(n)})
        streamgroup(apis, namespace, redis_server)
        eventually(lambda: any(g["name"] == b"billing" for g in admin.xinfo_groups("orders")),
                   what="the group, made by the operator's user")
        sg = eventually(lambda: (s := get_sg(apis, namespace, "billing")).get("status", {}).get("lag") == 3 and s,
                        what="lag in the status")
        assert condition(sg, "RedisReachable")["status"] == "True"
        # A consumer of no live replica (no pod runs here), idle longer than the operator's limit: removed.
        [[_, [(entry_id, _)]]] = admin.xreadgroup("billing", "gone-pod", {"orders": ">"}, count=1)
        admin.xack("orders", "billing", entry_id)
        eventually(lambda: admin.xinfo_consumers("orders", "billing") == [], what="the idle consumer removed")
        apis.custom.delete_namespaced_custom_object("streamgroup.io", "v1alpha1", namespace, "streamgroups", "billing")
        eventually(lambda: admin.xinfo_groups("orders") == [], what="the group destroyed on deletion")
        assert refusals(redis_server) == []

    def test_the_sidecars_user_may_not_do_the_operators_work(self, redis_server: RedisServer) -> None:
        users(redis_server)
        redis_server.client().xgroup_create("orders", "billing", id="0", mkstream=True)
        sidecar = redis.Redis(host="127.0.0.1", port=redis_server.port, username="sg-billing-sidecar",
                              password=SIDECAR_PW)
        for attempt in (lambda: sidecar.xgroup_destroy("orders", "billing"), lambda: sidecar.xlen("orders"),
                        lambda: sidecar.xrange("orders")):
            try:
                attempt()
            except redis.exceptions.NoPermissionError:
                continue
            raise AssertionError("the sidecar's user was allowed an operator command")

    def test_a_command_taken_away_is_named_with_its_key_in_the_condition_and_the_event(
        self, apis: Any, namespace: str, operator: OperatorProcess, redis_server: RedisServer
    ) -> None:
        users(redis_server)
        redis_server.client().execute_command("ACL", "SETUSER", "sg-billing-operator", "-xinfo|groups")
        streamgroup(apis, namespace, redis_server)
        sg = eventually(lambda: (s := get_sg(apis, namespace, "billing")).get("status", {}).get("conditions")
                        and condition(s, "RedisReachable")["reason"] == "PermissionDenied" and s,
                        what="RedisReachable=False PermissionDenied")
        message = condition(sg, "RedisReachable")["message"]
        assert "XINFO GROUPS on orders" in message and "streamgroup acl" in message, message
        assert OPERATOR_PW not in message
        events = eventually(lambda: [e for e in apis.core.list_namespaced_event(namespace).items
                                     if e.reason == "RedisPermissionDenied"], what="the Warning Event")
        assert "XINFO GROUPS on orders" in events[0].message
        redis_server.client().execute_command("ACL", "SETUSER", "sg-billing-operator", "+xinfo|groups")
        eventually(lambda: condition(get_sg(apis, namespace, "billing"), "RedisReachable")["status"] == "True",
                   what="reachable again once granted")
