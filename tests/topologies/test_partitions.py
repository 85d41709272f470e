"""Partition keys, the producers' partition function and Redis Cluster's slot function."""

from __future__ import annotations

import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamgroup_core.deadletters import DEFAULT_TEMPLATE, dead_letter_key
from streamgroup_core.partitions import hash_tag, keyslot, partition_keys, partition_of
from tests.support.redis_topologies import ClusterNode


@pytest.fixture(scope="module")
def node() -> Iterator[ClusterNode]:
    """One cluster-enabled server: CLUSTER KEYSLOT needs no slots assigned."""
    with tempfile.TemporaryDirectory(prefix="sg-keyslot-") as folder:
        started = ClusterNode(Path(folder)).start()
        try:
            yield started
        finally:
            started.stop()


class TestPartitions:
    def test_a_partitioned_stream_is_one_key_per_partition_with_its_number_as_hash_tag(self) -> None:
        assert partition_keys("orders", 3) == ["orders:{0}", "orders:{1}", "orders:{2}"]
        assert keyslot("orders:{1}") == keyslot("refunds:{1}") == keyslot("1")

    def test_the_default_dead_letter_stream_of_a_partition_shares_its_slot(self) -> None:
        for key in partition_keys("orders", 16):
            assert keyslot(dead_letter_key(DEFAULT_TEMPLATE, key)) == keyslot(key)

    def test_the_partition_function_is_crc32_modulo_the_partitions(self) -> None:
        assert partition_of("customer-42", 16) == zlib.crc32(b"customer-42") % 16
        assert partition_of(b"\xff\x00", 7) == zlib.crc32(b"\xff\x00") % 7
        # Known values a producer in another language can check its port against.
        assert [partition_of(v, 16) for v in ("a", "b", "customer-42")] == [
            zlib.crc32(b"a") % 16, zlib.crc32(b"b") % 16, zlib.crc32(b"customer-42") % 16]
        assert zlib.crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value every implementation documents

    def test_no_partitions_is_refused(self) -> None:
        with pytest.raises(ValueError):
            partition_keys("orders", 0)
        with pytest.raises(ValueError):
            partition_of("k", 0)


class TestSlots:
    @pytest.mark.parametrize("key", [
        "orders", "orders:{3}", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}", "{}",
        "a{b", "é{ü}", "", "orders:{15}:dead",
    ])
    def test_the_slot_is_the_one_redis_computes(self, node: ClusterNode, key: str) -> None:
        assert keyslot(key) == int(node.client().execute_command("CLUSTER", "KEYSLOT", key))

    def test_the_hash_tag_is_the_first_non_empty_braces(self) -> None:
        assert hash_tag("foo{}{bar}") == b"foo{}{bar}"
        assert hash_tag("foo{{bar}}zap") == b"{bar"
        assert hash_tag("orders:{3}:dead") == b"3"
