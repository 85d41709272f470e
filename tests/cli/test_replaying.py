"""`streamgroup replay`: a range of a stream by ID or time, printed exactly or added again to a stream."""

from __future__ import annotations

import base64

import orjson
import redis

from tests.cli.conftest import Run, raw_fields
from tests.support.redis_server import RedisServer


def fill(client: redis.Redis, stream: str = "orders", seconds: range = range(1, 6)) -> None:
    """One entry at each whole second after the epoch: IDs 1000-0, 2000-0, ..."""
    for second in seconds:
        client.xadd(stream, {"n": str(second)}, id=f"{second * 1000}-0")


def ids(out: str) -> list[str]:
    return [orjson.loads(line)["id"] for line in out.splitlines()]


class TestChoosingTheRange:
    def test_ids_select_an_inclusive_range(self, redis_server: RedisServer, cli: Run) -> None:
        fill(redis_server.client())
        result = cli("replay", "orders", "--from", "2000-0", "--to", "4000-0")
        assert result.code == 0
        assert ids(result.out) == ["2000-0", "3000-0", "4000-0"]

    def test_times_with_a_zone_select_the_entries_written_in_that_span(self, redis_server: RedisServer,
                                                                      cli: Run) -> None:
        fill(redis_server.client())
        result = cli("replay", "orders", "--from", "1970-01-01T00:00:02Z", "--to", "1970-01-01T01:00:03+01:00")
        assert result.code == 0
        assert ids(result.out) == ["2000-0", "3000-0"]

    def test_an_end_time_includes_every_entry_of_its_millisecond(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        for seq in range(3):
            client.xadd("orders", {"n": str(seq)}, id=f"2000-{seq}")
        client.xadd("orders", {"n": "later"}, id="2001-0")
        assert ids(cli("replay", "orders", "--from", "-", "--to", "1970-01-01T00:00:02.000Z").out) == [
            "2000-0", "2000-1", "2000-2"]

    def test_without_to_it_runs_to_the_newest_entry_and_count_caps_it(self, redis_server: RedisServer,
                                                                      cli: Run) -> None:
        fill(redis_server.client())
        assert ids(cli("replay", "orders", "--from", "3000").out) == ["3000-0", "4000-0", "5000-0"]
        assert ids(cli("replay", "orders", "--from", "-", "--count", "2").out) == ["1000-0", "2000-0"]

    def test_a_time_without_a_zone_is_refused_rather_than_guessed(self, redis_server: RedisServer, cli: Run) -> None:
        fill(redis_server.client())
        result = cli("replay", "orders", "--from", "2024-05-01T12:00:00")
        assert result.code == 1 and result.out == ""
        assert result.err.count("\n") == 1 and "has no time zone" in result.err

    def test_an_end_before_the_start_is_an_error(self, redis_server: RedisServer, cli: Run) -> None:
        fill(redis_server.client())
        result = cli("replay", "orders", "--from", "4000-0", "--to", "2000-0")
        assert result.code == 1 and "before --from" in result.err

    def test_a_missing_stream_is_an_error(self, cli: Run) -> None:
        result = cli("replay", "nope", "--from", "-")
        assert result.code == 1 and "stream 'nope' does not exist" in result.err


class TestPrintingEntries:
    def test_each_line_has_the_id_time_and_fields(self, redis_server: RedisServer, cli: Run) -> None:
        redis_server.client().xadd("orders", {"order": "42", "qty": "2"}, id="1500-7")
        [line] = cli("replay", "orders", "--from", "-").out.splitlines()
        assert orjson.loads(line) == {"id": "1500-7", "time": "1970-01-01T00:00:01.500Z",
                                      "fields": {"order": "42", "qty": "2"}}

    def test_bytes_that_are_not_utf8_are_shown_as_marked_base64(self, redis_server: RedisServer, cli: Run) -> None:
        payload = b"\xff\x00\xfepng"
        redis_server.client().xadd("orders", {"blob": payload, "name": "ok"}, id="1000-0")
        [line] = cli("replay", "orders", "--from", "-").out.splitlines()
        fields = orjson.loads(line)["fields"]
        assert fields["name"] == "ok"
        assert base64.b64decode(fields["blob"]["base64"]) == payload

    def test_repeated_field_names_are_kept_as_ordered_pairs(self, redis_server: RedisServer, cli: Run) -> None:
        redis_server.client().execute_command("XADD", "orders", "1000-0", "tag", "a", "tag", "b")
        [line] = cli("replay", "orders", "--from", "-").out.splitlines()
        assert orjson.loads(line)["pairs"] == [["tag", "a"], ["tag", "b"]]

    def test_the_table_shows_one_row_per_entry(self, redis_server: RedisServer, cli: Run) -> None:
        fill(redis_server.client())
        lines = cli("replay", "orders", "--from", "-", "--output", "table").out.splitlines()
        assert lines[0].split() == ["ID", "TIME", "FIELDS"]
        assert [line.split()[0] for line in lines[1:]] == ["1000-0", "2000-0", "3000-0", "4000-0", "5000-0"]


class TestAddingEntriesAgain:
    def test_the_range_is_added_to_another_stream_with_the_same_fields_in_order(
        self, redis_server: RedisServer, cli: Run
    ) -> None:
        client = redis_server.client()
        fill(client)
        client.execute_command("XADD", "orders", "6000-0", "z", "1", "a", b"\xff", "z", "2")
        result = cli("replay", "orders", "--from", "4000-0", "--to-stream", "orders:replay")
        assert result.code == 0
        assert result.out.startswith("added 3 entries from orders to orders:replay")
        copies = [entry_id.decode() for entry_id, _ in client.xrange("orders:replay")]
        assert [raw_fields(client, "orders:replay", copy) for copy in copies] == [
            [(b"n", b"4")], [(b"n", b"5")], [(b"z", b"1"), (b"a", b"\xff"), (b"z", b"2")]]
        assert client.xlen("orders") == 6

    def test_replaying_into_the_source_stream_adds_the_range_once(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        fill(client, seconds=range(1, 1201))
        result = cli("replay", "orders", "--from", "201000-0", "--to-stream", "orders")
        assert result.code == 0 and "added 1000 entries" in result.out
        assert client.xlen("orders") == 2200
        newest = client.xrevrange("orders", count=1)[0][1]
        assert newest == {b"n": b"1200"}
