"""The real topologies the tests use behave as Redis documents: a cluster spread over three primaries
that promotes a replica when a primary dies, and sentinels that move the primary on a failover."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_topologies import RedisCluster, RedisSentinel


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as server:
        yield server


@pytest.fixture
def sentinel() -> Iterator[RedisSentinel]:
    with RedisSentinel(password="data-pw", sentinel_password="sentinel-pw") as server:
        yield server


class TestTheCluster:
    def test_keys_spread_over_three_primaries_each_with_a_replica(self, cluster: RedisCluster) -> None:
        assert len(cluster.replicas_by_primary()) == 3
        client = cluster.client()
        owners = set()
        for n in range(6):
            client.xadd(f"orders:{{{n}}}", {"n": str(n)})
            owners.add(cluster.primary_of(f"orders:{{{n}}}").port)
        assert len(owners) > 1
        client.close()

    def test_a_killed_primary_is_replaced_by_its_replica(self, cluster: RedisCluster) -> None:
        entry_id = cluster.write_replicated("orders:{0}", {"n": "0"})
        victim = cluster.primary_of("orders:{0}")
        victim.kill()
        cluster.wait_failed_over(victim.port)
        survivor = cluster.primary_of("orders:{0}")
        assert survivor.port != victim.port
        [(found, _)] = survivor.client().xrange("orders:{0}")
        assert found.decode() == entry_id


class TestTheSentinels:
    def test_a_failover_moves_the_primary_and_the_sentinels_say_where(self, sentinel: RedisSentinel) -> None:
        before = sentinel.primary_port()
        after = sentinel.failover()
        assert after != before
        assert sentinel.data_client(sentinel.node(after)).info("replication")["role"] == "master"
