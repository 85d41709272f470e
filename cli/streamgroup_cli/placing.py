"""Where a partitioned stream's partitions live, and which slots to move so every primary holds its share.

A partitioned stream is only as fast as its busiest primary. The partitions' hash tags are ``0``,
``1``, … and CRC16 of such short strings is far from uniform over the contiguous slot ranges a
cluster is created with (64 partitions over 16 primaries land 1 to 8 per primary), so the partitions
must be placed. :func:`plan` is the pure part: from each partition's slot and owner it proposes the
fewest slot moves that leave every primary within one partition of an even share. Moving a slot
moves everything in it, which is what is wanted: partition ``n`` of every partitioned stream, and
their dead letters, share slot ``n``'s tag.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from streamgroup_core.partitions import keyslot, partition_keys

from .rendering import write_table


@dataclass(frozen=True)
class Partition:
    stream: str
    key: str
    slot: int
    primary: str
    length: int


@dataclass(frozen=True)
class Move:
    slot: int
    keys: tuple[str, ...]
    source: str
    target: str


def plan(partitions: Sequence[Partition], primaries: Sequence[str]) -> list[Move]:
    """Slot moves after which every primary holds ``floor(n/p)`` or ``ceil(n/p)`` of the ``n`` partitions.

    Partitions that share a slot (``orders:{3}`` and ``refunds:{3}``) move together and weigh what they
    hold. Greedy and deterministic: the fullest primary gives its lightest slot to the emptiest while
    that narrows the gap between them (each such move shrinks the sum of squared counts, so it ends); a
    slot moved twice is reported once, from where it is to where it ends.
    """
    holders = {primary: 0 for primary in primaries}
    slots: dict[int, list[Partition]] = {}
    for partition in partitions:
        slots.setdefault(partition.slot, []).append(partition)
        holders.setdefault(partition.primary, 0)
        holders[partition.primary] += 1
    owner = {slot: members[0].primary for slot, members in slots.items()}
    moves: list[Move] = []
    for _ in range(len(slots) * len(holders) + 1):
        fullest = max(holders, key=lambda p: (holders[p], p))
        emptiest = min(holders, key=lambda p: (holders[p], p))
        candidates = sorted((slot for slot, primary in owner.items() if primary == fullest),
                            key=lambda slot: (len(slots[slot]), slot))
        weight = len(slots[candidates[0]]) if candidates else 0
        if not candidates or holders[fullest] - holders[emptiest] <= weight:
            break
        slot = candidates[0]
        owner[slot] = emptiest
        holders[fullest] -= weight
        holders[emptiest] += weight
        moves.append(Move(slot, tuple(p.key for p in slots[slot]), fullest, emptiest))
    return _merged(moves)


def _merged(moves: list[Move]) -> list[Move]:
    """A slot moved twice (A to B, then B to C) is one move, A to C; one moved back is none."""
    first: dict[int, Move] = {}
    last: dict[int, Move] = {}
    for move in moves:
        first.setdefault(move.slot, move)
        last[move.slot] = move
    merged = [Move(slot, move.keys, move.source, last[slot].target) for slot, move in first.items()]
    return [move for move in merged if move.source != move.target]


def locate(client: Any, streams: dict[str, int], cluster: bool, label: str) -> tuple[list[Partition], list[str]]:
    """Each partition's slot, primary and length, and every primary (one, outside a cluster)."""
    primary_of: Callable[[str], str]
    if cluster:
        def primary_of(key: str) -> str:
            return str(client.get_node_from_key(key).name)
        primaries = sorted(str(node.name) for node in client.get_primaries())
    else:
        def primary_of(key: str) -> str:
            return label
        primaries = [label]
    found = [
        Partition(stream, key, keyslot(key), primary_of(key), int(client.xlen(key)))
        for stream, count in streams.items() for key in partition_keys(stream, count)
    ]
    return found, primaries


def report(partitions: Sequence[Partition], primaries: Sequence[str]) -> dict[str, Any]:
    """What ``streamgroup partitions -o json`` prints: partitions, per primary, and the moves to even them."""
    per_primary: dict[str, dict[str, int]] = {p: {"partitions": 0, "entries": 0} for p in primaries}
    for partition in partitions:
        row = per_primary.setdefault(partition.primary, {"partitions": 0, "entries": 0})
        row["partitions"] += 1
        row["entries"] += partition.length
    moves = plan(partitions, primaries)
    return {
        "partitions": [{"stream": p.stream, "key": p.key, "slot": p.slot, "primary": p.primary, "length": p.length}
                       for p in partitions],
        "primaries": per_primary,
        "even": not moves,
        "moves": [{"slot": m.slot, "keys": list(m.keys), "from": m.source, "to": m.target} for m in moves],
    }


def print_report(result: dict[str, Any], out: TextIO) -> None:
    write_table(out, ["PARTITION", "SLOT", "PRIMARY", "LENGTH"], (
        [row["key"], str(row["slot"]), row["primary"], str(row["length"])] for row in result["partitions"]
    ), right=["SLOT", "LENGTH"])
    print(file=out)
    write_table(out, ["PRIMARY", "PARTITIONS", "ENTRIES"], (
        [primary, str(row["partitions"]), str(row["entries"])] for primary, row in result["primaries"].items()
    ), right=["PARTITIONS", "ENTRIES"])
    print(file=out)
    if result["even"]:
        print("even: every primary holds its share of the partitions", file=out)
        return
    moves = len(result["moves"])
    print(f"uneven: {moves} slot move{'s' if moves > 1 else ''} {'give' if moves > 1 else 'gives'} every primary "
          "its share "
          "(moving a slot moves every key in it: that partition of every stream and its dead letters):", file=out)
    for move in result["moves"]:
        print(f"  slot {move['slot']} ({', '.join(move['keys'])}): {move['from']} -> {move['to']}", file=out)
