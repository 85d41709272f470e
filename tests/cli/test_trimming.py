"""`streamgroup trim`: MAXLEN or age-based trimming that refuses to drop what a group still needs."""

from __future__ import annotations

import time

import redis

from tests.cli.conftest import Run
from tests.support.redis_server import RedisServer

DAY_MS = 86_400_000


def fill(client: redis.Redis, count: int, stream: str = "orders") -> None:
    for n in range(1, count + 1):
        client.xadd(stream, {"n": str(n)}, id=f"{n * 1000}-0")


def consume(client: redis.Redis, group: str, count: int | None = None, ack: bool = True,
            stream: str = "orders") -> None:
    """The group reads ``count`` entries (all when None) and, unless told not to, acknowledges them."""
    try:
        client.xgroup_create(stream, group, id="0")
    except redis.ResponseError as exc:
        assert "BUSYGROUP" in str(exc)
    reply = client.xreadgroup(group, "pod-a", {stream: ">"}, count=count)
    if ack and reply:
        client.xack(stream, group, *[entry_id for entry_id, _ in reply[0][1]])


def ids(client: redis.Redis) -> list[str]:
    return [entry_id.decode() for entry_id, _ in client.xrange("orders")]


class TestTrimmingWhatEveryGroupHasProcessed:
    def test_maxlen_keeps_the_newest_entries(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        fill(client, 10)
        consume(client, "billing")
        result = cli("trim", "orders", "--maxlen", "3", "--exact")
        assert result.code == 0 and result.out.startswith("trimmed 7 entries from orders")
        assert ids(client) == ["8000-0", "9000-0", "10000-0"]

    def test_older_than_removes_entries_by_the_time_in_their_ids(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        now = int(time.time() * 1000)
        for age_days in (30, 10, 8, 2, 0):
            client.xadd("orders", {"age": str(age_days)}, id=f"{now - age_days * DAY_MS}-0")
        consume(client, "billing")
        result = cli("trim", "orders", "--older-than", "7d", "--exact")
        assert result.code == 0 and result.out.startswith("trimmed 3 entries")
        assert [fields[b"age"] for _, fields in client.xrange("orders")] == [b"2", b"0"]

    def test_a_stream_without_groups_can_be_trimmed(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        fill(client, 5)
        assert cli("trim", "orders", "--maxlen", "0", "--exact").code == 0
        assert client.xlen("orders") == 0

    def test_approximate_trimming_only_removes_whole_blocks_and_says_so(self, redis_server: RedisServer,
                                                                        cli: Run) -> None:
        client = redis_server.client()
        fill(client, 150)  # one block holds 100 entries (stream-node-max-entries)
        consume(client, "billing")
        result = cli("trim", "orders", "--maxlen", "10")
        assert result.code == 0
        assert result.out.startswith("trimmed 100 entries") and "40 older entries stay" in result.out
        assert client.xlen("orders") == 50

    def test_nothing_to_trim_is_not_an_error(self, redis_server: RedisServer, cli: Run) -> None:
        fill(redis_server.client(), 3)
        result = cli("trim", "orders", "--maxlen", "5")
        assert result.code == 0 and result.out.startswith("nothing to trim")


class TestRefusingToLoseEntries:
    def test_it_refuses_when_a_group_has_not_read_the_entries_yet_and_says_how_many(
        self, redis_server: RedisServer, cli: Run
    ) -> None:
        client = redis_server.client()
        fill(client, 10)
        consume(client, "billing")
        consume(client, "shipping", count=4)
        result = cli("trim", "orders", "--maxlen", "3", "--exact")
        assert result.code == 1 and result.out == ""
        assert result.err.count("\n") == 1
        assert "refusing to trim orders" in result.err
        assert "3 that group 'shipping' has not read yet (it has read up to 4000-0)" in result.err
        assert "billing" not in result.err and "--force" in result.err
        assert client.xlen("orders") == 10

    def test_it_refuses_when_entries_are_still_pending_in_a_group(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        fill(client, 10)
        consume(client, "billing", ack=False)
        result = cli("trim", "orders", "--maxlen", "8", "--exact")
        assert result.code == 1
        assert "2 still pending in group 'billing' (oldest 1000-0)" in result.err
        assert client.xlen("orders") == 10

    def test_pending_entries_after_the_cut_do_not_block_it(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        fill(client, 10)
        consume(client, "billing", count=6)
        consume(client, "billing", ack=False)  # 7000-0 .. 10000-0 pending
        assert cli("trim", "orders", "--maxlen", "4", "--exact").code == 0
        assert ids(client) == ["7000-0", "8000-0", "9000-0", "10000-0"]

    def test_force_trims_anyway_and_reports_what_was_dropped(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        fill(client, 10)
        consume(client, "shipping", count=2)
        result = cli("trim", "orders", "--maxlen", "5", "--exact", "--force")
        assert result.code == 0
        assert "forced, dropping 3 that group 'shipping' has not read yet" in result.out
        assert client.xlen("orders") == 5

    def test_age_based_trims_are_checked_too(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        now = int(time.time() * 1000)
        for age_days in (9, 8, 1):
            client.xadd("orders", {"age": str(age_days)}, id=f"{now - age_days * DAY_MS}-0")
        client.xgroup_create("orders", "billing", id="0")
        result = cli("trim", "orders", "--older-than", "7d")
        assert result.code == 1 and "2 that group 'billing' has not read yet" in result.err
        assert client.xlen("orders") == 3


class TestBadTrimRequests:
    def test_a_missing_stream_or_bad_duration_is_one_error_line(self, redis_server: RedisServer, cli: Run) -> None:
        result = cli("trim", "nope", "--maxlen", "1")
        assert result.code == 1 and result.err == "streamgroup: stream 'nope' does not exist\n"
        fill(redis_server.client(), 2)
        result = cli("trim", "orders", "--older-than", "7")
        assert result.code == 1 and result.err.count("\n") == 1 and "add a unit" in result.err

    def test_maxlen_and_older_than_are_exclusive(self, redis_server: RedisServer, cli: Run) -> None:
        fill(redis_server.client(), 2)
        result = cli("trim", "orders", "--maxlen", "1", "--older-than", "1d")
        assert result.code == 1 and "not allowed with argument" in result.err
        assert redis_server.client().xlen("orders") == 2
