"""The connection factory against every Redis topology: one suite, run for the asyncio and the
blocking client, on a real standalone server, a six-node cluster and a Sentinel-managed primary.

What each case relies on: a client built from an :class:`Endpoint` reads and writes streams
wherever their keys live, logs in with the data nodes' credentials (and, in sentinel mode, with
the sentinels' own), refuses wrong ones, and follows the primary when it moves. The cluster and
the sentinels run once more with TLS only (mutual, the cluster bus and replication too): the
same client certificate, CA and server name reach every node the client discovers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import RedisClusterException, RedisError

from streamgroup_core.addresses import check_url, split_url
from streamgroup_core.connecting import Endpoint, Pem, Sentinels, Tls, async_client, sync_client
from tests.support.redis_server import RedisServer, make_tls
from tests.support.redis_topologies import RedisCluster, RedisSentinel

PASSWORD = "data-pw"
SENTINEL_PASSWORD = "sentinel-pw"
KEYS = [f"orders:{{{n}}}" for n in range(6)] + ["refunds"]


@pytest.fixture(scope="module")
def standalone() -> Iterator[RedisServer]:
    server = RedisServer(password=PASSWORD).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def sentinel() -> Iterator[RedisSentinel]:
    with RedisSentinel(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD) as server:
        yield server


SERVER_NAME = "redis.test"
"""The only name on the servers' certificate: every connection must send and check it, not 127.0.0.1."""


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tls(tmp_path_factory.mktemp("tls"), SERVER_NAME)


@pytest.fixture(scope="module")
def cluster_tls(certificates: Path) -> Iterator[RedisCluster]:
    with RedisCluster(password=PASSWORD, tls=certificates) as server:
        yield server


@pytest.fixture(scope="module")
def sentinel_tls(certificates: Path) -> Iterator[RedisSentinel]:
    with RedisSentinel(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD, tls=certificates) as server:
        yield server


def client_tls(folder: Path) -> Tls:
    return Tls(ca=Pem(path=str(folder / "ca.crt")), cert=Pem(path=str(folder / "client.crt")),
               key=Pem(path=str(folder / "client.key")), server_name=SERVER_NAME)


def endpoint_for(topology: str, request: pytest.FixtureRequest, password: str = PASSWORD) -> Endpoint:
    if topology == "standalone":
        server: Any = request.getfixturevalue("standalone")
        return Endpoint(f"redis://127.0.0.1:{server.port}/0", password=password)
    secure = topology.endswith("-tls")
    scheme, tls = ("rediss", client_tls(request.getfixturevalue("certificates"))) if secure else ("redis", Tls())
    if topology.startswith("cluster"):
        server = request.getfixturevalue(topology.replace("-", "_"))
        return Endpoint(f"{scheme}://{server.seeds}", password=password, mode="cluster", tls=tls)
    server = request.getfixturevalue(topology.replace("-", "_"))
    return Endpoint(f"{scheme}://{server.sentinel_addresses}", password=password, mode="sentinel", tls=tls,
                    sentinels=Sentinels(server.master_name, password=SENTINEL_PASSWORD))


Use = Callable[[Endpoint, Callable[[Any], Any]], Any]
"""Runs a function of a client (a coroutine function for the asyncio client) and closes the client."""


def use_async(endpoint: Endpoint, work: Callable[[Any], Any]) -> Any:
    async def run() -> Any:
        client = async_client(endpoint, socket_timeout=5)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def use_sync(endpoint: Endpoint, work: Callable[[Any], Any]) -> Any:
    client = sync_client(endpoint, socket_timeout=5)
    try:
        return work(client)
    finally:
        client.close()


async def _roundtrip_async(client: Any) -> list[int]:
    for key in KEYS:
        await client.xadd(key, {"k": key})
    return [await client.xlen(key) for key in KEYS]


def _roundtrip_sync(client: Any) -> list[int]:
    for key in KEYS:
        client.xadd(key, {"k": key})
    return [client.xlen(key) for key in KEYS]


@pytest.fixture(params=["asyncio", "blocking"])
def flavour(request: pytest.FixtureRequest) -> tuple[Use, Callable[[Any], Any]]:
    if request.param == "asyncio":
        return use_async, _roundtrip_async
    return use_sync, _roundtrip_sync


@pytest.mark.parametrize("topology", ["standalone", "cluster", "sentinel", "cluster-tls", "sentinel-tls"])
class TestEveryTopology:
    def test_streams_are_written_and_read_wherever_their_keys_live(
        self, topology: str, request: pytest.FixtureRequest, flavour: tuple[Use, Callable[[Any], Any]]
    ) -> None:
        use, roundtrip = flavour
        endpoint = endpoint_for(topology, request)
        before = use(endpoint, roundtrip)
        after = use(endpoint, roundtrip)
        assert [b + 1 for b in before] == after

    def test_a_wrong_password_is_refused(
        self, topology: str, request: pytest.FixtureRequest, flavour: tuple[Use, Callable[[Any], Any]]
    ) -> None:
        use, roundtrip = flavour
        # redis-py's cluster client reports a refused login while discovering the cluster as a
        # RedisClusterException, which is not a RedisError: callers must catch both.
        with pytest.raises((RedisError, RedisClusterException)) as caught:
            use(endpoint_for(topology, request, password="wrong-pw"), roundtrip)
        assert "wrong-pw" not in str(caught.value)


@pytest.mark.parametrize("topology", ["cluster-tls", "sentinel-tls"])
class TestTlsTopologies:
    def test_a_server_certificate_for_another_name_is_refused(
        self, topology: str, request: pytest.FixtureRequest, flavour: tuple[Use, Callable[[Any], Any]]
    ) -> None:
        use, roundtrip = flavour
        endpoint = endpoint_for(topology, request)
        wrong = Endpoint(endpoint.url, password=PASSWORD, mode=endpoint.mode, sentinels=endpoint.sentinels,
                         tls=Tls(ca=endpoint.tls.ca, cert=endpoint.tls.cert, key=endpoint.tls.key,
                                 server_name="elsewhere.test"))
        with pytest.raises((RedisError, RedisClusterException, OSError)) as caught:
            use(wrong, roundtrip)
        assert "certificate" in str(caught.value).lower() or "ssl" in str(caught.value).lower(), caught.value

    def test_a_client_without_tls_gets_no_reply(
        self, topology: str, request: pytest.FixtureRequest, flavour: tuple[Use, Callable[[Any], Any]]
    ) -> None:
        use, roundtrip = flavour
        endpoint = endpoint_for(topology, request)
        plain = Endpoint(endpoint.url.replace("rediss://", "redis://"), password=PASSWORD, mode=endpoint.mode,
                         sentinels=endpoint.sentinels)
        with pytest.raises((RedisError, RedisClusterException, OSError)):
            use(plain, roundtrip)


class TestSentinelMode:
    def test_the_sentinels_own_password_is_the_one_used_to_ask_them(
        self, request: pytest.FixtureRequest, sentinel: RedisSentinel
    ) -> None:
        endpoint = Endpoint(f"redis://{sentinel.sentinel_addresses}", password=PASSWORD, mode="sentinel",
                            sentinels=Sentinels(sentinel.master_name, password="not-the-sentinels"))
        with pytest.raises(RedisError):
            use_sync(endpoint, _roundtrip_sync)

    def test_the_client_follows_the_primary_after_a_failover(self) -> None:
        server = RedisSentinel(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD).start()
        try:
            endpoint = Endpoint(f"redis://{server.sentinel_addresses}", password=PASSWORD, mode="sentinel",
                                sentinels=Sentinels(server.master_name, password=SENTINEL_PASSWORD))

            async def across_a_failover(client: Any) -> int:
                await client.xadd("orders", {"n": "0"})
                await asyncio.to_thread(server.failover)
                deadline = time.monotonic() + 30
                while True:  # a connection to the old primary fails once, then reconnects to the new one
                    try:
                        await client.xadd("orders", {"n": "1"})
                        return int(await client.xlen("orders"))
                    except RedisError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.1)

            assert use_async(endpoint, across_a_failover) == 2
        finally:
            server.cleanup()


class TestAddressLists:
    def test_seed_lists_parse_with_default_ports_credentials_and_db(self) -> None:
        parts = split_url("rediss://user:p%40ss@a:7000,b,[::1]:7001/2")
        assert parts.hosts == [("a", 7000), ("b", 6379), ("::1", 7001)]
        assert (parts.scheme, parts.username, parts.password, parts.db) == ("rediss", "user", "p@ss", 2)
        assert split_url("redis://s1,s2", 26379).hosts == [("s1", 26379), ("s2", 26379)]
        assert "p@ss" not in repr(parts)

    @pytest.mark.parametrize("url, mode, needle", [
        ("redis://a:1,b:2", "standalone", "cluster or sentinel mode"),
        ("redis://a:1,,b:2", "cluster", "empty address"),
        ("redis://a:x", "cluster", "invalid port"),
        ("redis://a:1/3", "cluster", "only database 0"),
        ("http://a", "sentinel", "must start with redis://"),
        ("rediss://r:6379/0?ssl_cert_reqs=none", "standalone", "sets TLS in the URL"),
        ("rediss://a:1,b:2?ssl_ca_certs=/x", "cluster", "sets TLS in the URL"),
    ])
    def test_bad_lists_are_refused_with_the_reason(self, url: str, mode: str, needle: str) -> None:
        with pytest.raises(ValueError, match=needle):
            check_url(url, mode)

    def test_sentinel_mode_needs_the_primarys_name_and_only_it_takes_one(self) -> None:
        with pytest.raises(ValueError, match="primary's name"):
            Endpoint("redis://s:26379", mode="sentinel")
        with pytest.raises(ValueError, match="primary's name"):
            Endpoint("redis://r:6379", sentinels=Sentinels("p"))
        with pytest.raises(ValueError, match="unknown Redis mode"):
            Endpoint("redis://r:6379", mode="replicated")
        assert PASSWORD not in repr(Endpoint("redis://s", mode="sentinel", sentinels=Sentinels("p", password=PASSWORD)))
