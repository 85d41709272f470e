"""`streamgroup pending`: which entries a group holds unacknowledged, with whom, for how long, how often tried."""

from __future__ import annotations

import orjson
import redis

from tests.cli.conftest import Run
from tests.support.redis_server import RedisServer


def held(client: redis.Redis) -> None:
    """Six entries: pod-a holds 1000-0 and 2000-0, pod-b holds 3000-0; the rest are acknowledged or unread."""
    for n in range(1, 7):
        client.xadd("orders", {"n": str(n)}, id=f"{n * 1000}-0")
    client.xgroup_create("orders", "workers", id="0")
    client.xreadgroup("workers", "pod-a", {"orders": ">"}, count=2)
    client.xreadgroup("workers", "pod-b", {"orders": ">"}, count=2)
    client.xack("orders", "workers", "4000-0")
    # 1000-0 has been tried 7 times and idle for an hour (as if its consumer had died long ago).
    client.xclaim("orders", "workers", "pod-a", 0, ["1000-0"], idle=3_600_000, retrycount=7)


class TestPendingEntries:
    def test_lists_each_pending_entry_with_consumer_idle_time_and_deliveries(
        self, redis_server: RedisServer, cli: Run
    ) -> None:
        held(redis_server.client())
        result = cli("pending", "orders", "--group", "workers", "--output", "json")
        assert result.code == 0
        rows = orjson.loads(result.out)
        assert [(r["id"], r["consumer"], r["deliveries"]) for r in rows] == [
            ("1000-0", "pod-a", 7), ("2000-0", "pod-a", 1), ("3000-0", "pod-b", 1)]
        assert rows[0]["idle_seconds"] >= 3600 and rows[1]["idle_seconds"] < 60
        assert rows[0]["added"] == "1970-01-01T00:00:01.000Z"

    def test_filters_by_consumer_minimum_idle_time_and_count(self, redis_server: RedisServer, cli: Run) -> None:
        held(redis_server.client())

        def listed(*options: str) -> list[str]:
            result = cli("pending", "orders", "--group", "workers", "--output", "json", *options)
            assert result.code == 0
            return [row["id"] for row in orjson.loads(result.out)]

        assert listed("--consumer", "pod-b") == ["3000-0"]
        assert listed("--min-idle", "30m") == ["1000-0"]
        assert listed("--count", "2") == ["1000-0", "2000-0"]

    def test_the_table_has_a_row_per_entry(self, redis_server: RedisServer, cli: Run) -> None:
        held(redis_server.client())
        lines = cli("pending", "orders", "--group", "workers").out.splitlines()
        assert lines[0].split() == ["STREAM", "ID", "CONSUMER", "IDLE", "DELIVERIES", "AGE"]
        assert lines[1].split()[:5] == ["orders", "1000-0", "pod-a", "1h", "7"]
        assert len(lines) == 4

    def test_a_missing_group_or_no_group_given_is_a_clear_error(self, redis_server: RedisServer, cli: Run) -> None:
        held(redis_server.client())
        result = cli("pending", "orders", "--group", "nope")
        assert result.code == 1 and result.err == "streamgroup: stream 'orders' has no group 'nope'\n"
        result = cli("pending", "orders")
        assert result.code == 1 and "--group is required" in result.err
