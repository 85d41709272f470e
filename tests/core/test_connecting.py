"""One Redis connection factory: the asyncio and the blocking client agree on URL, credentials and TLS.

The same cases run against both clients (a conformance suite), on real redis-server instances:
a password from the URL or from the endpoint, TLS with the CA and the client certificate read from
files or held in memory, a server name other than the address, and nothing written to disk.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from streamgroup_core.addresses import check_url, url_for
from streamgroup_core.connecting import Endpoint, Pem, Tls, async_client, sync_client
from tests.support.redis_server import RedisServer, make_tls

PASSWORD = "pw-Zq8!x"


def ping_async(endpoint: Endpoint) -> bool:
    async def ping() -> bool:
        client = async_client(endpoint, socket_timeout=5)
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    return asyncio.run(ping())


def ping_sync(endpoint: Endpoint) -> bool:
    client = sync_client(endpoint, socket_timeout=5)
    try:
        return bool(client.ping())
    finally:
        client.close()


Ping = Callable[[Endpoint], bool]


@pytest.fixture(params=[ping_async, ping_sync], ids=["asyncio", "blocking"])
def ping(request: pytest.FixtureRequest) -> Ping:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tls(tmp_path_factory.mktemp("tls"), "redis.test")


@pytest.fixture
def tls_server(tls_files: Path) -> Iterator[RedisServer]:
    server = RedisServer(tls=tls_files).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def locked_server() -> Iterator[RedisServer]:
    server = RedisServer(password=PASSWORD).start()
    try:
        yield server
    finally:
        server.cleanup()


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def from_files(folder: Path, server_name: str | None = "redis.test") -> Tls:
    return Tls(ca=Pem(path=str(folder / "ca.crt")), cert=Pem(path=str(folder / "client.crt")),
               key=Pem(path=str(folder / "client.key")), server_name=server_name)


def in_memory(folder: Path, server_name: str | None = "redis.test") -> Tls:
    return Tls(ca=Pem(data=(folder / "ca.crt").read_bytes()), cert=Pem(data=(folder / "client.crt").read_bytes()),
               key=Pem(data=(folder / "client.key").read_bytes()), server_name=server_name)


class TestCredentials:
    def test_the_endpoints_password_logs_in_and_a_wrong_one_is_refused(
        self, ping: Ping, locked_server: RedisServer
    ) -> None:
        address = f"redis://127.0.0.1:{locked_server.port}/0"
        assert ping(Endpoint(address, password=PASSWORD))
        with pytest.raises(AuthenticationError):
            ping(Endpoint(address, password="wrong"))

    def test_a_password_in_the_url_works_and_the_endpoints_wins_over_it(
        self, ping: Ping, locked_server: RedisServer
    ) -> None:
        assert ping(Endpoint(f"redis://:{PASSWORD}@127.0.0.1:{locked_server.port}/0"))
        with pytest.raises(AuthenticationError):
            ping(Endpoint(f"redis://:{PASSWORD}@127.0.0.1:{locked_server.port}/0", password="wrong"))

    def test_no_secret_shows_in_the_repr_or_the_label(self) -> None:
        endpoint = Endpoint(f"redis://:{PASSWORD}@r:6379/0", password=PASSWORD,
                            tls=Tls(key=Pem(data=b"KEY MATERIAL"), cert=Pem(data=b"CERT")))
        assert PASSWORD not in repr(endpoint) and b"KEY MATERIAL".decode() not in repr(endpoint)
        assert PASSWORD not in endpoint.label
        assert set(endpoint.secrets) == {PASSWORD}


class TestTLS:
    @pytest.mark.parametrize("material", [from_files, in_memory], ids=["files", "memory"])
    def test_mutual_tls_with_a_server_name_connects(
        self, ping: Ping, tls_server: RedisServer, tls_files: Path, material: Callable[[Path], Tls]
    ) -> None:
        assert ping(Endpoint(f"rediss://127.0.0.1:{tls_server.port}/0", tls=material(tls_files)))

    @pytest.mark.parametrize("server_name", ["evil.test", None], ids=["another-name", "the-address"])
    def test_a_certificate_that_does_not_name_the_server_is_refused(
        self, ping: Ping, tls_server: RedisServer, tls_files: Path, server_name: str | None
    ) -> None:
        endpoint = Endpoint(f"rediss://127.0.0.1:{tls_server.port}/0", tls=in_memory(tls_files, server_name))
        with pytest.raises(RedisConnectionError, match="certificate"):
            ping(endpoint)

    def test_an_untrusted_server_is_refused(self, ping: Ping, tls_server: RedisServer, tmp_path: Path) -> None:
        other = make_tls(tmp_path / "other", "redis.test")
        tls = Tls(ca=Pem(path=str(other / "ca.crt")), cert=Pem(path=str(other / "client.crt")),
                  key=Pem(path=str(other / "client.key")), server_name="redis.test")
        with pytest.raises(RedisConnectionError, match="certificate"):
            ping(Endpoint(f"rediss://127.0.0.1:{tls_server.port}/0", tls=tls))

    @pytest.mark.parametrize("anonymous_files", [True, False], ids=["memfd", "pipe"])
    def test_key_material_held_in_memory_is_never_written_to_a_file(
        self, ping: Ping, tls_server: RedisServer, tls_files: Path, monkeypatch: pytest.MonkeyPatch,
        anonymous_files: bool,
    ) -> None:
        def refuse(*_: object, **__: object) -> None:
            raise AssertionError("a temporary file was made")

        for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryDirectory"):
            monkeypatch.setattr(tempfile, name, refuse)
        if not anonymous_files:  # as on macOS, which has no memfd_create: a pipe read through /dev/fd
            monkeypatch.delattr(os, "memfd_create")
        opened_before = set(os.listdir("/proc/self/fd"))
        assert ping(Endpoint(f"rediss://127.0.0.1:{tls_server.port}/0", tls=in_memory(tls_files)))
        left = [fd for fd in set(os.listdir("/proc/self/fd")) - opened_before
                if "memfd:streamgroup-tls" in _target(fd) or "pipe:" in _target(fd)]
        assert left == []  # the anonymous files are closed once OpenSSL has read them

    def test_certificates_replaced_in_their_files_are_used_by_the_next_connection(
        self, tmp_path: Path
    ) -> None:
        mounted = tmp_path / "mounted"
        shutil.copytree(make_tls(tmp_path / "first", "redis.test"), mounted)
        server = RedisServer(tls=mounted).start()
        try:
            endpoint = Endpoint(f"rediss://127.0.0.1:{server.port}/0", tls=from_files(mounted))

            async def rotate() -> None:
                client = async_client(endpoint, socket_timeout=5)
                try:
                    assert await client.ping()
                    # A new CA signs everything now, as when a Secret is renewed; the server restarts with it.
                    second = make_tls(tmp_path / "second", "redis.test")
                    for name in ("ca.crt", "client.crt", "client.key", "server.crt", "server.key"):
                        shutil.copy(second / name, mounted / name)
                    server.restart()
                    await client.connection_pool.disconnect()
                    assert await client.ping()  # a new connection, with the files as they are now
                finally:
                    await client.aclose()

            asyncio.run(rotate())
        finally:
            server.cleanup()


class TestAddresses:
    def test_host_port_and_db_make_a_url_with_ipv6_in_brackets(self) -> None:
        assert url_for("redis.data", 6380, 2) == "redis://redis.data:6380/2"
        assert url_for("::1", tls=True) == "rediss://[::1]:6379/0"

    @pytest.mark.parametrize("url, needle", [
        ("http://r", "must start with redis://"),
        ("redis://", "has no host"),
        ("redis://r/x", "database"),
        ("redis://r:99999", "invalid port"),
    ])
    def test_a_bad_url_is_refused_with_the_reason(self, url: str, needle: str) -> None:
        with pytest.raises(ValueError, match=needle):
            check_url(url)

    def test_pem_material_is_a_path_or_bytes_and_a_certificate_needs_its_key(self) -> None:
        with pytest.raises(ValueError):
            Pem()
        with pytest.raises(ValueError):
            Pem(path="a", data=b"b")
        with pytest.raises(ValueError, match="go together"):
            Tls(cert=Pem(data=b"c"))
