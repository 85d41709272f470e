"""The group's read counter from XINFO GROUPS, on the rows a real redis-server writes.

``entries_read`` is a pure function of one row; the rows come from a private redis-server so
that each case is the shape Redis really reports (nil ``entries-read`` included), not a guess.
"""

from __future__ import annotations

from typing import Any

import redis

from streamgroup_core.groups import text
from streamgroup_operator.grouping import entries_read
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
