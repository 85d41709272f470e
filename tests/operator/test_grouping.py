"""The operator's Redis measurements, on what a real redis-server answers.

``entries_read`` is a pure function of one row; the rows come from a private redis-server so
that each case is the shape Redis really reports (nil ``entries-read`` included), not a guess.
``measure_all`` measures every StreamGroup of one server together (one pipeline); what it finds
must be what Redis says of each group, and what Redis refuses for one must not fail the others.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from streamgroup_core.connecting import Endpoint
from streamgroup_core.groups import text
from streamgroup_operator.grouping import GroupStats, Target, connect, entries_read, measure_all
from tests.support.redis_server import RedisServer


def row(r: redis.Redis, stream: str, group: str) -> dict[str, Any]:
    """The group's row as the operator reads it (``groups.group_info``: keys as text)."""
    [found] = [{text(k): v for k, v in g.items()} for g in r.xinfo_groups(stream) if text(g["name"]) == group]
    return found


def add(r: redis.Redis, stream: str, count: int) -> list[str]:
    return [text(r.xadd(stream, {"n": str(n)})) for n in range(count)]


class TestEntriesRead:
    def test_a_group_that_has_read_reports_what_redis_counted(self, redis_server: RedisServer) -> None:
        r = redis_server.client()
        add(r, "orders", 5)
        r.xgroup_create("orders", "billing", id="0")
        r.xreadgroup("billing", "c", {"orders": ">"}, count=3)
        assert entries_read(row(r, "orders", "billing")) == 3

    def test_a_group_made_at_the_start_that_never_read_has_read_nothing(self, redis_server: RedisServer) -> None:
        """Redis says nil here; the group's position is 0-0, from where 0 entries were read."""
        r = redis_server.client()
        add(r, "orders", 5)
        r.xgroup_create("orders", "billing", id="0")
        r.xgroup_create("empty", "billing", id="$", mkstream=True)
        add(r, "empty", 5)
        for stream in ("orders", "empty"):
            info = row(r, stream, "billing")
            assert info["entries-read"] is None and info["lag"] == 5
            assert entries_read(info) == 0

    def test_a_group_whose_position_redis_cannot_count_from_is_left_out(self, redis_server: RedisServer) -> None:
        """Made at "$" on a stream with entries, then reading behind new ones: nil all along, though
        the group reads; 0 would tell a reading group from a stuck one wrongly."""
        r = redis_server.client()
        add(r, "orders", 3)
        r.xgroup_create("orders", "billing", id="$")
        add(r, "orders", 5)
        assert entries_read(row(r, "orders", "billing")) is None
        r.xreadgroup("billing", "c", {"orders": ">"}, count=2)
        assert entries_read(row(r, "orders", "billing")) is None
        r.xreadgroup("billing", "c", {"orders": ">"})  # caught up: Redis counts again
        assert entries_read(row(r, "orders", "billing")) == 8

    def test_after_a_deletion_behind_the_group_redis_cannot_count_and_neither_does_the_operator(
        self, redis_server: RedisServer
    ) -> None:
        r = redis_server.client()
        ids = add(r, "orders", 6)
        r.xgroup_create("orders", "billing", id=ids[1])
        r.xdel("orders", ids[3])
        info = row(r, "orders", "billing")
        assert info["entries-read"] is None
        assert entries_read(info) is None


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """The operator's own asyncio client for the test's redis-server."""
    made = connect(Endpoint(redis_server.url))
    try:
        yield made
    finally:
        await made.aclose()


def target(*streams: str, group: str = "billing") -> Target:
    return Target(streams, group, tuple(f"{stream}:dlq" for stream in streams))


def commands(r: redis.Redis) -> int:
    stats: Any = r.info("stats")
    return int(stats["total_commands_processed"])


class TestMeasuringTogether:
    async def test_each_streamgroup_gets_what_redis_says_of_its_own_group(
        self, redis_server: RedisServer, client: aioredis.Redis
    ) -> None:
        r = redis_server.client()
        add(r, "orders", 7)
        r.xgroup_create("orders", "billing", id="0")
        r.xreadgroup("billing", "pod-a", {"orders": ">"}, count=3)  # 3 pending
        [[_, [(read, _)]]] = r.xreadgroup("billing", "pod-b", {"orders": ">"}, count=1)
        r.xack("orders", "billing", read)  # 4 read in all: a lag of 3
        add(r, "refunds", 2)
        r.xgroup_create("refunds", "audit", id="0")
        r.xadd("refunds:dlq", {"x": "1"})
        stamp = time.time()
        billing, audit, absent = await measure_all(
            client, [target("orders"), target("refunds", group="audit"), target("nothing")])
        assert isinstance(billing, GroupStats) and isinstance(audit, GroupStats) and isinstance(absent, GroupStats)
        assert (billing.lag, billing.pending, billing.consumers, billing.dead_letters) == (3, 3, 2, 0)
        [orders] = billing.streams
        assert orders.consumers["pod-a"][0] == 3 and orders.consumers["pod-b"][0] == 0
        assert orders.entries_read == 4
        age = billing.oldest_pending_age_seconds
        assert age is not None and 0 <= age <= time.time() - stamp + 5
        assert (audit.lag, audit.pending, audit.consumers, audit.dead_letters) == (2, 0, 0, 1)
        assert audit.oldest_pending_age_seconds is None
        assert not absent.group_ready and absent.lag is None

    async def test_four_commands_per_stream_whatever_the_number_of_streamgroups(
        self, redis_server: RedisServer, client: aioredis.Redis
    ) -> None:
        r = redis_server.client()
        for n in range(20):
            add(r, f"s{n}", 2)
            r.xgroup_create(f"s{n}", "billing", id="0")
        before = commands(r)
        results = await measure_all(client, [target(f"s{n}") for n in range(20)])
        assert [stats.lag for stats in results if isinstance(stats, GroupStats)] == [2] * 20
        assert commands(r) - before == 4 * 20 + 1  # + the INFO that counted them

    async def test_a_lag_redis_cannot_tell_is_counted_after_the_groups_position(
        self, redis_server: RedisServer, client: aioredis.Redis
    ) -> None:
        r = redis_server.client()
        ids = add(r, "orders", 30)
        r.xgroup_create("orders", "billing", id=ids[4])
        r.xdel("orders", ids[10])  # inside the unread range: XINFO reports lag as nil
        add(r, "known", 3)
        r.xgroup_create("known", "billing", id="0")
        assert r.xinfo_groups("orders")[0]["lag"] is None
        [counted, known] = await measure_all(client, [target("orders"), target("known")])
        assert isinstance(counted, GroupStats) and isinstance(known, GroupStats)
        assert (counted.lag, known.lag) == (24, 3)  # the 25 entries after ids[4], less the one deleted

    async def test_what_redis_refuses_for_one_streamgroup_fails_that_one_only(
        self, redis_server: RedisServer, client: aioredis.Redis
    ) -> None:
        r = redis_server.client()
        r.set("not-a-stream", "x")
        add(r, "orders", 2)
        r.xgroup_create("orders", "billing", id="0")
        add(r, "two", 1)
        r.xgroup_create("two", "billing", id="0")
        wrong, fine, half = await measure_all(client, [target("not-a-stream"), target("orders"),
                                                       target("two", "not-a-stream")])
        assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)
        assert isinstance(fine, GroupStats) and fine.lag == 2
        assert isinstance(half, ResponseError), "one refused stream fails its StreamGroup's measurement"

    async def test_an_unreachable_server_fails_them_all(self, redis_server: RedisServer,
                                                        client: aioredis.Redis) -> None:
        add(redis_server.client(), "orders", 1)
        redis_server.stop()
        with pytest.raises(redis.exceptions.ConnectionError):
            await measure_all(client, [target("orders"), target("refunds")])
