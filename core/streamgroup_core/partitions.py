"""Partitioned streams and Redis Cluster slots: pure functions every part computes the same way.

Redis does not partition a stream; its own documentation's answer to a Kafka partition is N
keys that Redis Cluster spreads over its primaries. A partitioned stream ``orders`` with 16
partitions is the keys ``orders:{0}`` … ``orders:{15}``: the braces make the partition number
the key's hash tag, so partition 3 of every partitioned stream, and its dead letters
(``orders:{3}:dead``), share one slot, and one XREADGROUP can read them together.

A producer picks an entry's partition from one of its fields with :func:`partition_of`:
CRC-32 (IEEE 802.3, the one in zlib, Go's ``hash/crc32.ChecksumIEEE`` and Java's
``java.util.zip.CRC32``) of the field's bytes, modulo the number of partitions. Any language
can copy it, and the entries of one key always land in one partition, in order.

:func:`keyslot` is Redis Cluster's own slot function (CRC16/XMODEM of the hash tag or the whole
key, modulo 16384), so the sidecar can group its streams by slot without asking a node.
"""

from __future__ import annotations

import zlib

SLOTS = 16384


def partition_keys(stream: str, partitions: int) -> list[str]:
    """The keys of ``stream`` split into ``partitions`` partitions."""
    if partitions < 1:
        raise ValueError("a partitioned stream has at least one partition")
    return [f"{stream}:{{{n}}}" for n in range(partitions)]


def partition_of(value: bytes | str, partitions: int) -> int:
    """The partition of an entry whose partition field holds ``value`` (see the module's rule)."""
    if partitions < 1:
        raise ValueError("a partitioned stream has at least one partition")
    data = value.encode() if isinstance(value, str) else value
    return zlib.crc32(data) % partitions


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_tag(key: bytes | str) -> bytes:
    """The part of ``key`` that decides its slot: the first non-empty ``{…}``, else the whole key."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            return data[start + 1:end]
    return data


def keyslot(key: bytes | str) -> int:
    """The Redis Cluster slot of ``key``."""
    return _crc16(hash_tag(key)) % SLOTS
