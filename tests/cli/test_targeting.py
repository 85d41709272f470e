"""Where the command connects: a Redis URL, or a StreamGroup resource and its password Secret."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamgroup_cli import CLIError, targeting
from streamgroup_cli.__main__ import main
from streamgroup_cli.targeting import streamgroup_target, url_target
from streamgroup_core.connecting import Endpoint, Pem, Tls
from tests.cli.conftest import sidecar_dead_letters
from tests.support.redis_server import RedisServer

PASSWORD = "pw-Zq8!x"


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def resource(redis: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "streamgroup.io/v1alpha1",
        "kind": "StreamGroup",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"redis": redis, "streams": ["orders", "refunds"], "group": "billing",
                 "template": {"spec": {"containers": [{"name": "app"}]}}, **spec},
    }


@pytest.fixture
def locked_redis() -> Iterator[RedisServer]:
    server = RedisServer(password=PASSWORD).start()
    try:
        yield server
    finally:
        server.cleanup()


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdin=io.StringIO(), stdout=out), out.getvalue()


class TestResolvingAStreamGroup:
    def test_url_password_streams_group_and_default_dead_letter_streams(self) -> None:
        cr = resource({"url": "redis://redis.data:6379/2", "username": "sg",
                       "passwordSecretRef": {"name": "redis-auth"}})
        target = streamgroup_target(cr, {"redis-auth": {"password": b64(PASSWORD)}})
        assert target.connection == Endpoint("redis://redis.data:6379/2", username="sg", password=PASSWORD)
        assert (target.streams, target.group) == (("orders", "refunds"), "billing")
        assert target.dead_letter_streams == ("orders:dead", "refunds:dead")
        assert target.label == "StreamGroup shop/orders"

    def test_host_port_db_and_tls_become_a_rediss_url_with_the_ca_client_certificate_and_server_name(self) -> None:
        cr = resource({"host": "redis.data", "port": 6380, "db": 1, "tls": {
            "enabled": True, "caSecretRef": {"name": "ca"}, "clientCertSecretRef": {"name": "client"},
            "serverName": "redis.internal"}})
        secrets = {"ca": {"ca.crt": b64("CA PEM")}, "client": {"tls.crt": b64("CERT"), "tls.key": b64("KEY")}}
        conn = streamgroup_target(cr, secrets).connection
        assert conn.url == "rediss://redis.data:6380/1"
        assert conn.tls == Tls(ca=Pem(data=b"CA PEM"), cert=Pem(data=b"CERT"), key=Pem(data=b"KEY"),
                               server_name="redis.internal")

    def test_host_alone_uses_the_default_port_and_db_and_tls_upgrades_a_redis_url(self) -> None:
        assert streamgroup_target(resource({"host": "r"}), {}).connection.url == "redis://r:6379/0"
        tls_url = resource({"url": "redis://r:6379/0", "tls": {"enabled": True}})
        assert streamgroup_target(tls_url, {}).connection.url == "rediss://r:6379/0"

    def test_the_dead_letter_template_and_the_secret_key_come_from_the_spec(self) -> None:
        cr = resource({"url": "redis://r", "passwordSecretRef": {"name": "auth", "key": "redis-password"}},
                      delivery={"deadLetterStream": "dlq:{stream}"})
        target = streamgroup_target(cr, {"auth": {"redis-password": b64(PASSWORD)}})
        assert target.dead_letter_streams == ("dlq:orders", "dlq:refunds")
        assert target.connection.password == PASSWORD

    def test_the_secrets_to_read_are_named_once_each(self) -> None:
        cr = resource({"url": "rediss://r", "passwordSecretRef": {"name": "redis"},
                       "tls": {"caSecretRef": {"name": "redis"}, "clientCertSecretRef": {"name": "client"}}})
        assert targeting.secrets_needed(cr) == ["redis", "client"]

    def test_a_missing_secret_or_key_is_named_without_revealing_anything(self) -> None:
        cr = resource({"url": "redis://r", "passwordSecretRef": {"name": "auth"}})
        with pytest.raises(CLIError, match=r"^Secret shop/auth not found$"):
            streamgroup_target(cr, {"auth": None})
        with pytest.raises(CLIError, match=r"^Secret shop/auth has no key 'password'$") as caught:
            streamgroup_target(cr, {"auth": {"pass": b64(PASSWORD)}})
        assert PASSWORD not in str(caught.value)

    def test_a_resource_without_redis_or_streams_is_rejected(self) -> None:
        with pytest.raises(CLIError, match=r"StreamGroup shop/orders: spec\.redis is required"):
            streamgroup_target({"metadata": {"name": "orders", "namespace": "shop"}, "spec": {}}, {})
        with pytest.raises(CLIError, match="give exactly one of url and host"):
            streamgroup_target(resource({}), {})

    def test_the_password_never_shows_in_a_repr(self) -> None:
        target = streamgroup_target(resource({"url": "redis://r", "passwordSecretRef": {"name": "a"}}),
                                    {"a": {"password": b64(PASSWORD)}})
        assert PASSWORD not in repr(target)


class TestUsingAStreamGroup:
    def test_status_needs_no_stream_or_group_and_logs_in_with_the_secret(
        self, locked_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        client = locked_redis.client()
        for stream in ("orders", "refunds"):
            client.xgroup_create(stream, "billing", id="$", mkstream=True)
            client.xgroup_create(stream, "other", id="$")
        cr = resource({"host": "127.0.0.1", "port": locked_redis.port, "passwordSecretRef": {"name": "auth"}})
        asked: list[tuple[Any, ...]] = []

        def load(name: str, namespace: str | None, kubeconfig: str | None, context: str | None) -> Any:
            asked.append((name, namespace, kubeconfig, context))
            return streamgroup_target(cr, {"auth": {"password": b64(PASSWORD)}})

        monkeypatch.setattr(targeting, "load_streamgroup", load)
        code, out = run("--streamgroup", "orders", "-n", "shop", "status", "--output", "json")
        assert code == 0
        assert [(row["stream"], row["group"]) for row in orjson.loads(out)] == [
            ("orders", "billing"), ("refunds", "billing")]
        assert asked == [("orders", "shop", None, None)]

    def test_dead_letters_list_covers_every_dead_letter_stream_of_the_group(
        self, locked_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        client = locked_redis.client()
        client.xadd("refunds", {"n": "1"}, id="1000-0")
        sidecar_dead_letters(locked_redis, "refunds", ["1000-0"], group="billing")
        cr = resource({"url": f"redis://127.0.0.1:{locked_redis.port}/0", "passwordSecretRef": {"name": "auth"}})
        monkeypatch.setattr(targeting, "load_streamgroup",
                            lambda *_: streamgroup_target(cr, {"auth": {"password": b64(PASSWORD)}}))
        code, out = run("dead-letters", "list", "--streamgroup", "orders")
        assert code == 0
        assert out.splitlines()[0] == "orders:dead: no dead letters"
        assert "refunds:dead: 1 dead letter" in out and "1000-0" in out

    def test_an_explicit_url_replaces_only_the_address_as_for_a_port_forward(
        self, locked_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        locked_redis.client().xgroup_create("orders", "billing", id="$", mkstream=True)
        in_cluster = resource({"url": "redis://redis.data.svc:6379/0", "passwordSecretRef": {"name": "auth"}},
                              streams=["orders"])
        monkeypatch.setattr(targeting, "load_streamgroup",
                            lambda *_: streamgroup_target(in_cluster, {"auth": {"password": b64(PASSWORD)}}))
        code, out = run("--streamgroup", "orders", "--redis-url", f"redis://127.0.0.1:{locked_redis.port}/0",
                        "status", "-o", "json")
        assert code == 0 and [row["group"] for row in orjson.loads(out)] == ["billing"]


class TestConnectingByUrl:
    def test_the_password_can_come_from_the_environment(
        self, locked_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        locked_redis.client().xgroup_create("orders", "billing", id="$", mkstream=True)
        monkeypatch.setenv("SG_REDIS_URL", f"redis://127.0.0.1:{locked_redis.port}/0")
        monkeypatch.setenv("SG_REDIS_PASSWORD", PASSWORD)
        code, out = run("status", "orders")
        assert code == 0 and "billing" in out

    def test_a_wrong_password_is_one_error_line_that_does_not_contain_it(
        self, locked_redis: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        wrong = "not-the-pw-Zq8"
        code, out = run("--redis-url", f"redis://:{wrong}@127.0.0.1:{locked_redis.port}/0", "status", "orders")
        err = capsys.readouterr().err
        assert (code, out) == (1, "")
        assert err.count("\n") == 1 and err.startswith("streamgroup: ")
        assert wrong not in err and PASSWORD not in err

    def test_an_unreachable_redis_is_one_error_line_without_the_password(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _ = run("--redis-url", f"redis://:{PASSWORD}@127.0.0.1:1/0", "status", "orders")
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and PASSWORD not in err
        assert "redis://:***@127.0.0.1:1/0" in err

    def test_url_targets_read_the_environment_in_order(self) -> None:
        env = {"SG_REDIS_URL": "redis://env:6379/0", "SG_REDIS_PASSWORD": PASSWORD, "SG_REDIS_USERNAME": "ops"}
        assert url_target(None, env).connection == Endpoint("redis://env:6379/0", username="ops", password=PASSWORD)
        assert url_target("redis://flag:1/0", env).connection.url == "redis://flag:1/0"
        assert url_target(None, {}).connection.url == "redis://127.0.0.1:6379/0"

    def test_kubernetes_options_without_a_streamgroup_are_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _ = run("-n", "shop", "status", "orders")
        assert code == 1 and "--namespace only applies with --streamgroup" in capsys.readouterr().err


class TestLoadingTheResource:
    """The kubernetes-client part, as far as it goes without an API server."""

    def test_a_missing_kubeconfig_is_one_clear_error(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        missing = tmp_path / "nope.yaml"
        code, _ = run("--streamgroup", "orders", "--kubeconfig", str(missing), "status")
        assert code == 1
        assert capsys.readouterr().err == (
            f"streamgroup: cannot load the Kubernetes configuration: {missing} does not exist\n")

    def test_an_unknown_context_is_named(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        kubeconfig = tmp_path / "config"
        kubeconfig.write_text(orjson.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "here",
            "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "here", "context": {"cluster": "c", "user": "u", "namespace": "shop"}}],
        }).decode())
        code, _ = run("--streamgroup", "orders", "--kubeconfig", str(kubeconfig), "--context", "there", "status")
        assert code == 1 and "no context 'there' in the kubeconfig" in capsys.readouterr().err
