"""The `streamgroup` command against a real Redis."""

from __future__ import annotations

import io

import orjson
import pytest

from streamgroup_cli.__main__ import main
from tests.support.redis_server import RedisServer


def run(server: RedisServer, *argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--redis-url", server.url, *argv], stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


class TestProduce:
    def test_each_json_line_becomes_one_entry_with_non_strings_as_json(self, redis_server: RedisServer) -> None:
        code, out = run(redis_server, "produce", "orders",
                        stdin='{"id": "1", "qty": 2}\n\n{"id": "2", "tags": ["a"]}\n')
        assert code == 0 and out == "added 2 entries to orders\n"
        entries = redis_server.client().xrange("orders")
        assert [fields for _, fields in entries] == [{b"id": b"1", b"qty": b"2"}, {b"id": b"2", b"tags": b'["a"]'}]

    def test_a_bad_line_stops_with_its_number_and_keeps_the_lines_before(
        self, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _ = run(redis_server, "produce", "orders", stdin='{"a": "1"}\n{"b": \n{"c": "3"}\n')
        assert code == 1
        assert "line 2:" in capsys.readouterr().err
        assert redis_server.client().xlen("orders") == 1


    def test_a_partitioned_stream_needs_a_partition_key_in_every_line(
        self, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _ = run(redis_server, "produce", "orders", "--partitions", "4", "--partition-key", "customer",
                      stdin='{"customer": "a"}\n{"other": "b"}\n')
        assert code == 1 and "line 2: no field 'customer'" in capsys.readouterr().err
        assert sum(redis_server.client().xlen(f"orders:{{{n}}}") for n in range(4)) == 1
        code, _ = run(redis_server, "produce", "orders", "--partition-key", "customer", stdin="")
        assert code == 1 and "--partition-key needs --partitions" in capsys.readouterr().err
        code, _ = run(redis_server, "produce", "orders", "--partitions", "4", stdin="")
        assert code == 1 and "give --partition-key" in capsys.readouterr().err


class TestStatus:
    def test_reports_lag_pending_and_consumers_as_json(self, redis_server: RedisServer) -> None:
        client = redis_server.client()
        for n in range(5):
            client.xadd("orders", {"n": str(n)})
        client.xgroup_create("orders", "workers", id="0")
        client.xreadgroup("workers", "pod-a", {"orders": ">"}, count=2)
        code, out = run(redis_server, "status", "orders", "--output", "json")
        assert code == 0
        [row] = orjson.loads(out)
        assert (row["group"], row["lag"], row["pending"]) == ("workers", 3, 2)
        assert row["oldest_pending_age_seconds"] is not None
        assert [(c["name"], c["pending"]) for c in row["consumers"]] == [("pod-a", 2)]

    def test_the_table_names_every_group(self, redis_server: RedisServer) -> None:
        client = redis_server.client()
        client.xgroup_create("orders", "a", id="$", mkstream=True)
        client.xgroup_create("orders", "b", id="$")
        code, out = run(redis_server, "status", "orders")
        assert code == 0
        lines = out.splitlines()
        assert lines[0].startswith("STREAM") and len(lines) == 3

    def test_a_missing_stream_or_group_is_a_clear_error(
        self, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert run(redis_server, "status", "nope")[0] == 1
        assert "stream 'nope' does not exist" in capsys.readouterr().err
        redis_server.client().xgroup_create("orders", "a", id="$", mkstream=True)
        assert run(redis_server, "status", "orders", "--group", "zzz")[0] == 1
        assert "has no group 'zzz'" in capsys.readouterr().err


class TestCommandLine:
    def test_a_usage_mistake_is_one_line_with_status_1(
        self, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert run(redis_server, "replay", "orders")[0] == 1
        err = capsys.readouterr().err
        assert err == "streamgroup: the following arguments are required: --from (see streamgroup replay --help)\n"

    def test_status_without_streams_or_a_streamgroup_asks_for_one(
        self, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert run(redis_server, "status")[0] == 1
        assert "name at least one stream, or use --streamgroup" in capsys.readouterr().err

    def test_target_options_also_work_after_the_subcommand(self, redis_server: RedisServer) -> None:
        redis_server.client().xgroup_create("orders", "a", id="$", mkstream=True)
        out = io.StringIO()
        assert main(["status", "orders", "--redis-url", redis_server.url, "-o", "json"], stdout=out) == 0
        assert orjson.loads(out.getvalue())[0]["group"] == "a"
