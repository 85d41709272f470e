"""Partitioned streams in the CLI: the placement plan evens the primaries out; status shows partitions and totals."""

from __future__ import annotations

import argparse
import random

import pytest

from streamgroup_cli.__main__ import status_streams
from streamgroup_cli.placing import Partition, plan
from streamgroup_cli.targeting import Target
from streamgroup_core.connecting import Endpoint
from streamgroup_core.partitions import keyslot, partition_keys


def layout(streams: dict[str, int], primaries: list[str]) -> list[Partition]:
    """As ``redis-cli --cluster create`` places slots: equal contiguous ranges, in order."""
    size = 16384 / len(primaries)
    return [Partition(stream, key, keyslot(key), primaries[int(keyslot(key) // size)], 0)
            for stream, count in streams.items() for key in partition_keys(stream, count)]


def after(partitions: list[Partition], primaries: list[str]) -> dict[str, int]:
    owner = {p.slot: p.primary for p in partitions}
    for move in plan(partitions, primaries):
        assert owner[move.slot] == move.source
        owner[move.slot] = move.target
    counts = dict.fromkeys(primaries, 0)
    for p in partitions:
        counts[owner[p.slot]] += 1
    return counts


class TestPlan:
    @pytest.mark.parametrize("partitions, primaries", [(6, 3), (16, 3), (64, 16), (128, 16), (256, 16), (48, 12)])
    def test_every_primary_ends_within_one_partition_of_an_even_share(self, partitions: int, primaries: int) -> None:
        names = [f"10.0.0.{n}:6379" for n in range(primaries)]
        before = layout({"orders": partitions}, names)
        counts = after(before, names)
        assert max(counts.values()) - min(counts.values()) <= 1, counts
        assert sum(counts.values()) == partitions

    def test_a_random_layout_is_evened_with_no_slot_moved_twice(self) -> None:
        rng = random.Random(7)
        for _ in range(200):
            names = [f"n{k}" for k in range(rng.randint(1, 9))]
            count = rng.randint(1, 80)
            parts = [Partition("s", key, keyslot(key), rng.choice(names), 0) for key in partition_keys("s", count)]
            moves = plan(parts, names)
            assert len({m.slot for m in moves}) == len(moves)
            assert all(m.source != m.target for m in moves)
            counts = after(parts, names)
            assert max(counts.values()) - min(counts.values()) <= 1

    def test_an_even_layout_needs_no_move_and_an_empty_primary_gets_its_share(self) -> None:
        names = ["a", "b"]
        even = [Partition("s", key, keyslot(key), names[n % 2], 0) for n, key in enumerate(partition_keys("s", 4))]
        assert plan(even, names) == []
        crowded = [Partition("s", key, keyslot(key), "a", 0) for key in partition_keys("s", 4)]
        assert after(crowded, names) == {"a": 2, "b": 2}

    def test_partitions_sharing_a_slot_move_together(self) -> None:
        names = ["a", "b"]
        parts = [Partition(stream, key, keyslot(key), "a", 0)
                 for stream in ("orders", "refunds") for key in partition_keys(stream, 2)]
        moves = plan(parts, names)
        assert len(moves) == 1 and moves[0].target == "b"
        tag = moves[0].keys[0].split(":", 1)[1]
        assert sorted(moves[0].keys) == [f"orders:{tag}", f"refunds:{tag}"]


class TestStatusOfAStreamGroup:
    def test_a_partitioned_stream_is_shown_as_its_partitions_and_their_total(self) -> None:
        target = Target(Endpoint(), "StreamGroup shop/orders", streams=("refunds", *partition_keys("orders", 3)),
                        partitions={"orders": 3})
        assert status_streams(argparse.Namespace(streams=[], partitions=None), target) == [
            ("refunds", ["refunds"]), ("orders", ["orders:{0}", "orders:{1}", "orders:{2}"])]
        assert status_streams(argparse.Namespace(streams=["orders"], partitions=None), target) == [
            ("orders", ["orders:{0}", "orders:{1}", "orders:{2}"])]
        assert status_streams(argparse.Namespace(streams=["x"], partitions=2), target) == [("x", ["x:{0}", "x:{1}"])]
