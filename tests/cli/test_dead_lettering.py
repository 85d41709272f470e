"""`streamgroup dead-letters`: list, re-drive and purge the dead letters the sidecar writes."""

from __future__ import annotations

import time

import orjson
import pytest
import redis

from tests.cli.conftest import Run, dead_letter_at, raw_fields, sidecar_dead_letters
from tests.support.redis_server import RedisServer

DAY_MS = 86_400_000


def orders(client: redis.Redis, count: int = 3) -> None:
    for n in range(1, count + 1):
        client.execute_command("XADD", "orders", f"{n * 1000}-0", "order", str(n), "blob", b"\xff" + bytes([n]))


def dead_ids(client: redis.Redis, dlq: str = "orders:dead") -> list[str]:
    return [entry_id.decode() for entry_id, _ in client.xrange(dlq)]


class TestListing:
    def test_json_lines_show_reason_original_id_deliveries_detail_time_and_fields(
        self, redis_server: RedisServer, cli: Run
    ) -> None:
        client = redis_server.client()
        orders(client)
        sidecar_dead_letters(redis_server, "orders", ["2000-0"], reason="status-422",
                             detail="last attempt: status-422", deliveries=4)
        result = cli("dead-letters", "list", "orders:dead", "--output", "json")
        assert result.code == 0
        [letter] = [orjson.loads(line) for line in result.out.splitlines()]
        assert letter["id"] == dead_ids(client)[0]
        expected = {"stream": "orders", "original_id": "2000-0", "group": "workers", "consumer": "pod-a",
                    "deliveries": 4, "reason": "status-422", "detail": "last attempt: status-422"}
        assert {key: letter[key] for key in expected} == expected
        assert letter["time"].endswith("Z")
        assert letter["fields"] == {"order": "2", "blob": {"base64": "/wI="}}

    def test_the_source_stream_name_finds_its_dead_letter_stream(self, redis_server: RedisServer, cli: Run) -> None:
        orders(redis_server.client())
        sidecar_dead_letters(redis_server, "orders", ["1000-0", "3000-0"])
        result = cli("dead-letters", "list", "orders")
        assert result.code == 0
        lines = result.out.splitlines()
        assert lines[0] == "orders:dead: 2 dead letters"
        assert lines[1].split()[:4] == ["ID", "STREAM", "ORIGINAL", "ID"]
        assert [line.split()[1:5] for line in lines[2:]] == [["orders", "1000-0", "5", "status-422"],
                                                            ["orders", "3000-0", "5", "status-422"]]

    def test_count_limits_the_listing_and_says_how_many_more_there_are(self, redis_server: RedisServer,
                                                                       cli: Run) -> None:
        orders(redis_server.client())
        sidecar_dead_letters(redis_server, "orders", ["1000-0", "2000-0", "3000-0"])
        lines = cli("dead-letters", "list", "orders:dead", "--count", "1").out.splitlines()
        assert len(lines) == 4 and lines[-1].startswith("(2 more;")

    def test_an_empty_dead_letter_stream_is_not_an_error(self, redis_server: RedisServer, cli: Run) -> None:
        orders(redis_server.client())
        result = cli("dead-letters", "list", "orders")
        assert (result.code, result.out) == (0, "orders:dead: no dead letters\n")


class TestRedriving:
    def test_redrive_puts_the_original_fields_back_and_removes_the_dead_letter(
        self, redis_server: RedisServer, cli: Run
    ) -> None:
        client = redis_server.client()
        orders(client)
        sidecar_dead_letters(redis_server, "orders", ["1000-0", "2000-0"])
        first, second = dead_ids(client)
        result = cli("dead-letters", "redrive", "orders:dead", "--ids", first)
        assert result.code == 0 and result.out == "re-drove 1 dead letter from orders:dead: 1 to orders\n"
        assert dead_ids(client) == [second]
        [(new_id, _)] = client.xrange("orders", "(3000-0", "+")
        assert raw_fields(client, "orders", new_id.decode()) == [(b"order", b"1"), (b"blob", b"\xff\x01")]

    def test_all_redrives_every_dead_letter_and_to_chooses_the_stream(self, redis_server: RedisServer,
                                                                      cli: Run) -> None:
        client = redis_server.client()
        orders(client)
        client.xadd("orders:retry", {"seed": "1"})
        sidecar_dead_letters(redis_server, "orders", ["1000-0", "2000-0", "3000-0"])
        result = cli("dead-letters", "redrive", "orders:dead", "--all", "--to", "orders:retry")
        assert result.code == 0 and "re-drove 3 dead letters from orders:dead: 3 to orders:retry" in result.out
        assert client.xlen("orders:dead") == 0
        assert [fields.get(b"order") for _, fields in client.xrange("orders:retry")] == [None, b"1", b"2", b"3"]
        assert client.xlen("orders") == 3

    def test_a_dead_letter_is_redriven_once_only(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        orders(client)
        sidecar_dead_letters(redis_server, "orders", ["1000-0"])
        [dead] = dead_ids(client)
        assert cli("dead-letters", "redrive", "orders:dead", "--ids", dead).code == 0
        again = cli("dead-letters", "redrive", "orders:dead", "--ids", dead)
        assert again.code == 1 and f"not in orders:dead: {dead}" in again.err
        assert client.xlen("orders") == 4

    def test_unknown_ids_are_an_error_and_nothing_is_redriven(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        orders(client)
        sidecar_dead_letters(redis_server, "orders", ["1000-0"])
        [dead] = dead_ids(client)
        result = cli("dead-letters", "redrive", "orders:dead", "--ids", dead, "1-1")
        assert result.code == 1 and result.err == "streamgroup: not in orders:dead: 1-1; nothing was re-driven\n"
        assert dead_ids(client) == [dead] and client.xlen("orders") == 3

    def test_dead_letters_without_payload_are_left_for_purging(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        orders(client)
        sidecar_dead_letters(redis_server, "orders", ["1000-0"])
        sidecar_dead_letters(redis_server, "orders", ["2000-0"], reason="trimmed", detail="", without_payload=True)
        with_payload, trimmed = dead_ids(client)
        result = cli("dead-letters", "redrive", "orders", "--all")
        assert result.code == 0
        assert "re-drove 1 dead letter" in result.out and f"purge them with --ids {trimmed}" in result.out
        assert dead_ids(client) == [trimmed]
        refused = cli("dead-letters", "redrive", "orders:dead", "--ids", trimmed)
        assert refused.code == 1 and "has no original fields (reason trimmed)" in refused.err
        assert with_payload not in dead_ids(client)

    def test_redriving_all_of_a_dead_letter_stream_that_was_never_written_does_nothing_and_succeeds(
        self, redis_server: RedisServer, cli: Run
    ) -> None:
        result = cli("dead-letters", "redrive", "orders:dead", "--all")
        assert (result.code, result.out, result.err) == (0, "re-drove nothing from orders:dead\n", "")
        assert not redis_server.client().exists("orders:dead")
        given = cli("dead-letters", "redrive", "orders:dead", "--ids", "1-1")
        assert given.code == 1 and "orders:dead" in given.err

    def test_a_missing_destination_stream_is_refused(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        orders(client)
        sidecar_dead_letters(redis_server, "orders", ["1000-0"])
        result = cli("dead-letters", "redrive", "orders:dead", "--all", "--to", "ordrs")
        assert result.code == 1 and "'ordrs' does not exist; nothing was re-driven" in result.err
        assert client.xlen("orders:dead") == 1


class TestPurging:
    def test_purge_refuses_without_yes_and_says_what_it_would_delete(self, redis_server: RedisServer,
                                                                     cli: Run) -> None:
        client = redis_server.client()
        orders(client)
        sidecar_dead_letters(redis_server, "orders", ["1000-0", "2000-0"])
        result = cli("dead-letters", "purge", "orders:dead", "--all")
        assert result.code == 1
        assert result.err == "streamgroup: purge would delete all 2 dead letters from orders:dead for good; " \
                             "add --yes to do it\n"
        assert client.xlen("orders:dead") == 2
        client.xdel("orders:dead", dead_ids(client)[0])
        one = cli("dead-letters", "purge", "orders:dead", "--all")
        assert one.err == "streamgroup: purge would delete the only dead letter from orders:dead for good; " \
                          "add --yes to do it\n"

    def test_purge_all_empties_the_dead_letter_stream(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        orders(client)
        sidecar_dead_letters(redis_server, "orders", ["1000-0", "2000-0"])
        result = cli("dead-letters", "purge", "orders", "--all", "--yes")
        assert (result.code, result.out) == (0, "deleted 2 dead letters from orders:dead\n")
        assert client.xlen("orders:dead") == 0 and client.xlen("orders") == 3

    def test_purge_ids_deletes_those_and_names_the_ones_not_there(self, redis_server: RedisServer,
                                                                  cli: Run) -> None:
        client = redis_server.client()
        orders(client)
        sidecar_dead_letters(redis_server, "orders", ["1000-0", "2000-0"])
        first, second = dead_ids(client)
        result = cli("dead-letters", "purge", "orders:dead", "--ids", first, "5-5", "--yes")
        assert result.code == 0
        assert result.out == "deleted 1 dead letter from orders:dead (1 of the given IDs were not there: 5-5)\n"
        assert dead_ids(client) == [second]

    def test_purge_older_than_goes_by_when_the_entry_was_dead_lettered(self, redis_server: RedisServer,
                                                                       cli: Run) -> None:
        client = redis_server.client()
        now = int(time.time() * 1000)
        for age_days, original in ((10, "1-0"), (8, "2-0"), (1, "3-0")):
            dead_letter_at(client, "orders:dead", f"{now - age_days * DAY_MS}-0", "orders", original, {"n": original})
        assert cli("dead-letters", "purge", "orders:dead", "--older-than", "7d").code == 1
        result = cli("dead-letters", "purge", "orders:dead", "--older-than", "7d", "--yes")
        assert (result.code, result.out) == (0, "deleted 2 dead letters from orders:dead\n")
        [(_, left)] = client.xrange("orders:dead")
        assert left[b"sg:id"] == b"3-0"

    def test_a_source_stream_is_never_purged_itself(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        orders(client)
        result = cli("dead-letters", "purge", "orders", "--all", "--yes")
        assert (result.code, result.out) == (0, "nothing to purge: orders:dead has no dead letters\n")
        assert client.xlen("orders") == 3 and not client.exists("orders:dead")


class TestNothingToPurge:
    """Nothing to purge is the wanted state already: exit 0 and say so, with or without --yes."""

    @pytest.mark.parametrize("yes", [[], ["--yes"]], ids=["without-yes", "with-yes"])
    def test_purge_all_of_a_dead_letter_stream_that_was_never_written_succeeds(
        self, redis_server: RedisServer, cli: Run, yes: list[str]
    ) -> None:
        result = cli("dead-letters", "purge", "orders:dead", "--all", *yes)
        assert (result.code, result.out, result.err) == (0, "nothing to purge: orders:dead has no dead letters\n", "")
        assert not redis_server.client().exists("orders:dead")

    @pytest.mark.parametrize("yes", [[], ["--yes"]], ids=["without-yes", "with-yes"])
    def test_purge_all_of_an_emptied_dead_letter_stream_succeeds(self, redis_server: RedisServer, cli: Run,
                                                                 yes: list[str]) -> None:
        client = redis_server.client()
        orders(client)
        sidecar_dead_letters(redis_server, "orders", ["1000-0"])
        assert cli("dead-letters", "purge", "orders", "--all", "--yes").code == 0
        assert client.exists("orders:dead") and client.xlen("orders:dead") == 0
        result = cli("dead-letters", "purge", "orders", "--all", *yes)
        assert (result.code, result.out, result.err) == (0, "nothing to purge: orders:dead has no dead letters\n", "")

    def test_purge_older_than_with_none_that_old_succeeds(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        now = int(time.time() * 1000)
        dead_letter_at(client, "orders:dead", f"{now - DAY_MS}-0", "orders", "1-0", {"n": "1"})
        result = cli("dead-letters", "purge", "orders:dead", "--older-than", "7d")
        assert result.code == 0
        assert result.out.startswith("nothing to purge: orders:dead has no dead letters written before 20")
        assert client.xlen("orders:dead") == 1

    def test_purge_ids_none_of_which_are_there_succeeds_and_names_them(self, redis_server: RedisServer,
                                                                      cli: Run) -> None:
        client = redis_server.client()
        orders(client)
        sidecar_dead_letters(redis_server, "orders", ["1000-0"])
        result = cli("dead-letters", "purge", "orders:dead", "--ids", "5-5", "6-6")
        assert result.code == 0
        assert result.out == "nothing to purge: none of the given IDs are in orders:dead: 5-5, 6-6\n"
        assert client.xlen("orders:dead") == 1

    def test_a_key_of_another_type_is_still_refused(self, redis_server: RedisServer, cli: Run) -> None:
        redis_server.client().set("orders:dead", "x")
        result = cli("dead-letters", "purge", "orders:dead", "--all", "--yes")
        assert (result.code, result.err) == (1, "streamgroup: 'orders:dead' is a string, not a stream\n")
