"""The streamgroup command on a Redis Cluster and behind sentinels: status, pending, replay, produce and
dead letters work wherever the keys live (partitions on several primaries; dead letters in their source's slot)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from streamgroup_cli.__main__ import main
from streamgroup_core.deadletters import dead_letter_fields
from streamgroup_core.partitions import keyslot, partition_of
from tests.support.redis_topologies import RedisCluster, RedisSentinel

PARTITIONS = [f"orders:{{{n}}}" for n in range(6)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as server:
        yield server


def run(*argv: str, stdin: str = "", env: dict[str, str] | None = None,
        monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdin=io.StringIO(stdin), stdout=out), out.getvalue()


class TestOnACluster:
    def test_status_and_pending_cover_partitions_on_every_primary(self, cluster: RedisCluster) -> None:
        target = ["--redis-mode", "cluster", "--redis-url", f"redis://{cluster.seeds}"]
        data = cluster.client()
        try:
            for n, key in enumerate(PARTITIONS):
                data.xadd(key, {"n": str(n)})
                data.xgroup_create(key, "workers", id="0")
                data.xreadgroup("workers", "pod-a", {key: ">"})
        finally:
            data.close()
        assert len({cluster.primary_of(key).port for key in PARTITIONS}) > 1
        code, out = run(*target, "status", *PARTITIONS, "--group", "workers", "-o", "json")
        assert code == 0
        rows = json.loads(out)
        assert [(row["stream"], row["pending"]) for row in rows] == [(key, 1) for key in PARTITIONS]
        code, out = run(*target, "pending", *PARTITIONS, "--group", "workers", "-o", "json")
        assert code == 0 and {row["stream"] for row in json.loads(out)} == set(PARTITIONS)

    def test_status_of_a_partitioned_stream_shows_each_partition_and_their_total(self, cluster: RedisCluster) -> None:
        target = ["--redis-mode", "cluster", "--redis-url", f"redis://{cluster.seeds}"]
        data = cluster.client()
        try:
            for n in range(4):
                key = f"totals:{{{n}}}"
                data.xgroup_create(key, "workers", id="0", mkstream=True)
                for _ in range(n + 2):
                    data.xadd(key, {"n": str(n)})
                data.xreadgroup("workers", f"pod-{n % 2}", {key: ">"}, count=1)  # one pending, n + 1 lag each
        finally:
            data.close()
        code, out = run(*target, "status", "totals", "--partitions", "4", "--group", "workers", "-o", "json")
        assert code == 0, out
        *partitions, total = json.loads(out)
        assert [row["stream"] for row in partitions] == [f"totals:{{{n}}}" for n in range(4)]
        assert (total["stream"], total["partitions"], total["lag"], total["pending"]) == ("totals", 4, 1 + 2 + 3 + 4, 4)
        assert {c["name"]: c["pending"] for c in total["consumers"]} == {"pod-0": 2, "pod-1": 2}
        code, out = run(*target, "status", "totals", "--partitions", "4", "--group", "workers")
        assert "totals (total of 4)" in out.splitlines()[-1], out

    def test_produce_then_replay_a_partition(self, cluster: RedisCluster) -> None:
        target = ["--redis-mode", "cluster", "--redis-url", f"redis://{cluster.seeds}"]
        code, out = run(*target, "produce", "refunds:{4}", stdin='{"a": "1"}\n{"a": "2"}\n')
        assert code == 0 and "added 2 entries" in out
        code, out = run(*target, "replay", "refunds:{4}", "--from", "-")
        assert code == 0 and [json.loads(line)["fields"] for line in out.splitlines()] == [{"a": "1"}, {"a": "2"}]

    def test_produce_spreads_a_partitioned_stream_by_its_partition_key_keeping_each_keys_order(
        self, cluster: RedisCluster
    ) -> None:
        target = ["--redis-mode", "cluster", "--redis-url", f"redis://{cluster.seeds}"]
        lines = "".join(json.dumps({"customer": f"c{n % 5}", "seq": str(n)}) + "\n" for n in range(40))
        code, out = run(*target, "produce", "invoices", "--partitions", "6", "--partition-key", "customer",
                        stdin=lines)
        assert code == 0 and "added 40 entries to 6 partitions of invoices" in out
        seen: dict[str, list[int]] = {}
        for n in range(6):
            code, out = run(*target, "replay", f"invoices:{{{n}}}", "--from", "-")
            for line in out.splitlines():
                fields = json.loads(line)["fields"]
                assert partition_of(fields["customer"], 6) == n
                seen.setdefault(fields["customer"], []).append(int(fields["seq"]))
        assert sum(len(v) for v in seen.values()) == 40
        assert all(sequence == sorted(sequence) for sequence in seen.values())

    def test_dead_letters_in_their_sources_slot_are_listed_and_redriven(self, cluster: RedisCluster) -> None:
        target = ["--redis-mode", "cluster", "--redis-url", f"redis://{cluster.seeds}"]
        source, dlq = "payments:{2}", "payments:{2}:dead"
        data = cluster.client()
        try:
            flat = dead_letter_fields(source, "5-0", [(b"amount", b"12")], group="workers", consumer="pod-a",
                                      deliveries=3, reason="dropped", detail="app said DROP", time_ms=5)
            data.execute_command("XADD", dlq, "*", *flat)
            data.xadd(source, {"amount": "7"})  # re-driving needs its source stream to exist
        finally:
            data.close()
        code, out = run(*target, "dead-letters", "list", source, "-o", "json")
        assert code == 0
        [letter] = [json.loads(line) for line in out.splitlines()]
        assert (letter["stream"], letter["reason"], letter["fields"]) == (source, "dropped", {"amount": "12"})
        code, out = run(*target, "dead-letters", "redrive", dlq, "--all")
        assert code == 0, out
        code, out = run(*target, "replay", source, "--from", "-")
        assert [json.loads(line)["fields"] for line in out.splitlines()] == [{"amount": "7"}, {"amount": "12"}]

    def test_a_seed_list_without_cluster_mode_is_one_clear_error(
        self, cluster: RedisCluster, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _ = run("--redis-url", f"redis://{cluster.seeds}", "status", "orders")
        assert code == 1 and "cluster or sentinel mode" in capsys.readouterr().err


class TestBehindSentinels:
    def test_status_finds_the_primary_through_the_sentinels_with_their_own_password(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sentinel = RedisSentinel(password="data-pw", sentinel_password="sentinel-pw").start()
        try:
            primary = sentinel.data_client(sentinel.node(sentinel.primary_port()))
            primary.xadd("orders", {"n": "1"})
            primary.xgroup_create("orders", "workers", id="0")
            for name, value in (("SG_REDIS_PASSWORD", "data-pw"), ("SG_REDIS_SENTINEL_PASSWORD", "sentinel-pw"),
                                ("SG_REDIS_SENTINEL_MASTER", sentinel.master_name), ("SG_REDIS_MODE", "sentinel")):
                monkeypatch.setenv(name, value)
            code, out = run("--redis-url", f"redis://{sentinel.sentinel_addresses}", "status", "orders", "-o", "json")
            assert code == 0
            [row] = json.loads(out)
            assert (row["group"], row["lag"]) == ("workers", 1)
        finally:
            sentinel.cleanup()


class TestPlacement:
    def test_partitions_shows_where_each_lives_and_its_moves_even_the_primaries_out(self) -> None:
        with RedisCluster() as cluster:
            target = ["--redis-mode", "cluster", "--redis-url", f"redis://{cluster.seeds}"]
            data = cluster.client()
            try:
                for n in range(12):
                    for _ in range(n):
                        data.xadd(f"placed:{{{n}}}", {"n": str(n)})
            finally:
                data.close()
            code, out = run(*target, "partitions", "placed", "--partitions", "12", "-o", "json")
            assert code == 0, out
            before = json.loads(out)
            for row in before["partitions"]:
                assert row["slot"] == keyslot(row["key"])
                assert row["primary"] == f"127.0.0.1:{cluster.primary_of(row['key']).port}"
                assert row["length"] == int(row["key"].split("{")[1].rstrip("}"))
            assert len(before["primaries"]) == 3
            # Tags 0..11 over three equal slot ranges land 3, 4 and 5 per primary.
            assert sorted(p["partitions"] for p in before["primaries"].values()) == [3, 4, 5]
            assert not before["even"] and before["moves"]
            for move in before["moves"]:
                cluster.migrate_slot(move["slot"], int(move["to"].rsplit(":", 1)[1]))
            code, out = run(*target, "partitions", "placed", "--partitions", "12")
            assert code == 0 and "even: every primary holds its share" in out, out
            code, out = run(*target, "partitions", "placed", "--partitions", "12", "-o", "json")
            after = json.loads(out)
            assert [p["partitions"] for p in after["primaries"].values()] == [4, 4, 4]
            assert sum(row["length"] for row in after["partitions"]) == sum(range(12))

    def test_a_stream_without_a_partition_count_is_one_clear_error(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _ = run("partitions", "placed")
        assert code == 1 and "give --partitions N" in capsys.readouterr().err
