"""TLS to Redis: a CA from a file, a client certificate, and a server name other than the host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from streamgroup_sidecar.commands import connect
from streamgroup_sidecar.config import ConfigError, parse_settings
from tests.sidecar.conftest import running, settings_for, wait_for_pending_zero
from tests.support.apps import RecordingApp
from tests.support.redis_server import RedisServer, make_tls


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tls=make_tls(tmp_path / "tls", "redis.test")).start()
    try:
        yield server
    finally:
        server.cleanup()


def tls_env(server: RedisServer, **extra: str) -> dict[str, str]:
    assert server.tls is not None
    env = {"redis_tls_ca_file": str(server.tls / "ca.crt"), "redis_tls_cert_file": str(server.tls / "client.crt"),
           "redis_tls_key_file": str(server.tls / "client.key"), "redis_tls_server_name": "redis.test"}
    env.update(extra)
    return env


class TestTLS:
    async def test_entries_are_delivered_over_mutual_tls_with_a_server_name(
        self, tls_server: RedisServer, app: RecordingApp
    ) -> None:
        for n in range(20):
            tls_server.client().xadd("orders", {"n": str(n)})
        async with running(settings_for(tls_server, app, **tls_env(tls_server))):
            await app.wait_until(lambda: len(app.succeeded()) >= 20)
            await wait_for_pending_zero(tls_server.client(), ["orders"])

    async def test_a_certificate_for_another_name_is_refused(self, tls_server: RedisServer, app: RecordingApp) -> None:
        settings = settings_for(tls_server, app, **tls_env(tls_server, redis_tls_server_name="evil.test"))
        client = connect(settings.redis, socket_timeout=5)
        with pytest.raises(RedisConnectionError, match="certificate"):
            await client.ping()
        await client.aclose()

    async def test_without_the_server_name_the_hosts_address_does_not_match(
        self, tls_server: RedisServer, app: RecordingApp
    ) -> None:
        env = tls_env(tls_server)
        del env["redis_tls_server_name"]
        client = connect(settings_for(tls_server, app, **env).redis, socket_timeout=5)
        with pytest.raises(RedisConnectionError, match="certificate"):
            await client.ping()
        await client.aclose()

    def test_tls_options_without_rediss_are_refused(self) -> None:
        with pytest.raises(ConfigError, match="need a rediss://"):
            parse_settings([], {"SG_STREAMS": "s", "SG_GROUP": "g", "SG_REDIS_URL": "redis://h:6379/0",
                                "SG_REDIS_TLS_CA_FILE": "/ca.pem"})
