"""The operator's Redis work: the consumer group's existence, its numbers, and its consumers.

Lag comes from ``XINFO GROUPS``. Redis reports it as nil when it cannot compute it (after
XDEL, XSETID, or when the group's position was trimmed away); then the entries after the
group's last-delivered ID are counted with one bounded XRANGE, and a count that reaches the
bound is reported as the bound (a lower bound: never more scaling than the data supports).

Every StreamGroup on one Redis deployment is measured together (:func:`measure_all`): one
pipeline of four commands per stream (XINFO GROUPS, XLEN of its dead letters, XINFO CONSUMERS,
XPENDING), one round trip for them all, and a second only for the streams whose lag Redis could
not tell. An error Redis answers to one command fails that StreamGroup's measurement only; a
connection that fails, all of them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from streamgroup_core import groups
from streamgroup_core.connecting import Endpoint, async_client
from streamgroup_core.groups import text as _text
from streamgroup_core.ids import parse_id
from streamgroup_core.permissions import PermissionDenied, is_denied

LAG_COUNT_BOUND = 10_000


def connect(endpoint: Endpoint) -> aioredis.Redis:
    client: aioredis.Redis = async_client(endpoint, socket_timeout=10.0)
    return client


@dataclass(frozen=True)
class StreamStats:
    stream: str
    exists: bool
    lag: int | None
    pending: int
    oldest_pending_age_seconds: float | None
    consumers: dict[str, tuple[int, int]]
    """Consumer name → (pending entries, idle milliseconds)."""
    dead_letters: int
    entries_read: int | None = None
    """Entries the group has read so far (XINFO GROUPS entries-read): grows while someone reads."""


@dataclass(frozen=True)
class GroupStats:
    streams: list[StreamStats]

    @property
    def group_ready(self) -> bool:
        return all(s.exists for s in self.streams)

    @property
    def lag(self) -> int | None:
        if any(s.lag is None for s in self.streams):
            return None
        return sum(s.lag or 0 for s in self.streams)

    @property
    def pending(self) -> int:
        return sum(s.pending for s in self.streams)

    @property
    def oldest_pending_age_seconds(self) -> float | None:
        ages = [s.oldest_pending_age_seconds for s in self.streams if s.oldest_pending_age_seconds is not None]
        return max(ages) if ages else None

    @property
    def consumers(self) -> int:
        return max((len(s.consumers) for s in self.streams), default=0)

    @property
    def dead_letters(self) -> int:
        return sum(s.dead_letters for s in self.streams)

    def subtotal(self, keys: list[str]) -> tuple[int | None, int]:
        """Lag (``None`` if one of them is unknown) and pending summed over ``keys`` (a stream's partitions)."""
        chosen = [s for s in self.streams if s.stream in set(keys)]
        lag = None if any(s.lag is None for s in chosen) else sum(s.lag or 0 for s in chosen)
        return lag, sum(s.pending for s in chosen)


async def ensure_group(client: aioredis.Redis, streams: list[str], group: str, start: str) -> list[str]:
    """Create the group where missing (with MKSTREAM) at ``start`` (an ID, ``$`` or ``0``).

    Returns the streams where it was created."""
    created = []
    for stream in streams:
        if await groups.ensure_group(client, stream, group, start):
            created.append(stream)
    return created


async def destroy_group(client: aioredis.Redis, streams: list[str], group: str) -> int:
    destroyed = 0
    for stream in streams:
        try:
            destroyed += int(await client.xgroup_destroy(stream, group))
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
    return destroyed


def entries_read(info: dict[str, Any]) -> int | None:
    """The group's read counter from its row of XINFO GROUPS, or ``None`` where nobody can tell.

    Redis reports ``entries-read`` as nil until the group first reads when it was made at ``0`` or at
    ``$`` on an empty stream: its last-delivered ID is then 0-0, and the count of entries read from
    there is 0, not unknown. Left out (as Redis leaves it) is a group reading from a position Redis
    cannot count from (after XDEL or XSETID, or made at ``$`` on a stream that has entries, until it
    has caught up once): a made-up 0 would show a group that reads as one that does not.
    """
    reported = info.get("entries-read")
    if isinstance(reported, int):
        return reported
    if _text(info.get("last-delivered-id", b"0-0")) == "0-0":
        return 0
    return None


@dataclass(frozen=True)
class Target:
    """What to measure for one StreamGroup: its group on its streams, and their dead-letter streams."""

    streams: tuple[str, ...]
    group: str
    dead_letter_streams: tuple[str, ...]


COMMANDS_PER_STREAM = 4


def _group_row(reply: Any, group: str) -> dict[str, Any] | None:
    """The group's row of an XINFO GROUPS reply (``None``: no such group); an error reply is raised."""
    if isinstance(reply, ResponseError):
        if "no such key" in str(reply).lower():
            return None
        raise reply
    for row in reply:
        if _text(row["name"]) == group:
            return {_text(k): v for k, v in row.items()}
    return None


def _checked(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply


def pending_age(summary: dict[str, Any], now: float) -> float | None:
    """Seconds since the oldest pending entry was added (from its ID), from an XPENDING summary."""
    oldest = summary.get("min")
    if not summary.get("pending") or not oldest:
        return None
    ms, _ = parse_id(_text(oldest))
    return max(0.0, now - ms / 1000)


def _stream_stats(stream: str, group: str, replies: Sequence[Any], now: float) -> tuple[StreamStats, str | None]:
    """One stream's numbers from its four replies, and the last-delivered ID if its lag must be counted."""
    info = _group_row(replies[0], group)
    dead_letters = int(_checked(replies[1]))
    if info is None:
        return StreamStats(stream, False, None, 0, None, {}, dead_letters), None
    # The group existed at XINFO GROUPS: NOGROUP from the next two means it was deleted in between.
    rows = _checked(replies[2])
    summary = _checked(replies[3])
    lag = info.get("lag")
    count_from = None
    if not isinstance(lag, int) or lag < 0:
        lag, count_from = None, _text(info.get("last-delivered-id", b"0-0"))
    stats = StreamStats(
        stream=stream, exists=True, lag=lag, pending=int(info.get("pending") or 0),
        oldest_pending_age_seconds=pending_age(summary, now),
        consumers={_text(r["name"]): (int(r["pending"]), int(r["idle"])) for r in rows},
        dead_letters=dead_letters, entries_read=entries_read(info),
    )
    return stats, count_from


_MEASURING = ("XINFO GROUPS", "XLEN", "XINFO CONSUMERS", "XPENDING")
"""The commands :func:`measure_all` sends for each stream, in order."""


def _refusal(replies: Sequence[Any], keys: Sequence[str], commands: Sequence[str] = _MEASURING) -> Exception | None:
    """The first reply that is Redis refusing a command to this user, as a PermissionDenied naming it and its key."""
    for command, key, reply in zip(commands, keys, replies, strict=False):
        if isinstance(reply, Exception) and is_denied(reply):
            return PermissionDenied(command, [key], str(reply))
    return None


async def measure_all(client: aioredis.Redis, targets: Sequence[Target]) -> list[GroupStats | Exception]:
    """Each target's numbers, or the error Redis answered for it, in one pipeline (and one more for lags to count).

    A connection error (or any error of the pipeline as a whole) is raised: it concerns every target.
    """
    pipe = client.pipeline(transaction=False)
    for target in targets:
        for stream, dead in zip(target.streams, target.dead_letter_streams, strict=True):
            pipe.xinfo_groups(stream)
            pipe.xlen(dead)
            pipe.xinfo_consumers(stream, target.group)
            pipe.xpending(stream, target.group)
    replies = await pipe.execute(raise_on_error=False)
    now = time.time()
    results: list[GroupStats | Exception] = []
    uncounted: list[tuple[int, int, str]] = []  # (target, stream, last-delivered ID) whose lag Redis cannot tell
    at = 0
    for index, target in enumerate(targets):
        streams: list[StreamStats] = []
        failure: Exception | None = None
        for position, stream in enumerate(target.streams):
            chunk = replies[at:at + COMMANDS_PER_STREAM]
            at += COMMANDS_PER_STREAM
            if failure is not None:
                continue
            try:
                stats, count_from = _stream_stats(stream, target.group, chunk, now)
            except Exception as exc:  # Redis's answer for this target (NOPERM, NOGROUP, WRONGTYPE, ...)
                failure = _refusal(chunk, (stream, target.dead_letter_streams[position], stream, stream)) or exc
                continue
            streams.append(stats)
            if count_from is not None:
                uncounted.append((index, position, count_from))
        results.append(failure if failure is not None else GroupStats(streams))
    if uncounted:
        counting = client.pipeline(transaction=False)
        for index, position, last in uncounted:
            counting.xrange(targets[index].streams[position], min=f"({last}", max="+", count=LAG_COUNT_BOUND)
        counted = await counting.execute(raise_on_error=False)
        for (index, position, _), rows in zip(uncounted, counted, strict=True):
            result = results[index]
            if isinstance(result, GroupStats):
                if isinstance(rows, Exception):
                    results[index] = _refusal([rows], (targets[index].streams[position],), ("XRANGE",)) or rows
                else:
                    result.streams[position] = replace(result.streams[position], lag=len(rows))
    return results


async def measure(client: aioredis.Redis, streams: list[str], group: str, dead_letter_streams: list[str]) -> GroupStats:
    """One StreamGroup's numbers (:func:`measure_all` of one); what Redis refused is raised."""
    [result] = await measure_all(client, [Target(tuple(streams), group, tuple(dead_letter_streams))])
    if isinstance(result, Exception):
        raise result
    return result


@dataclass(frozen=True)
class Cleanup:
    removed: list[str]
    handed_over: int


def idle_consumers(stats: GroupStats, idle_limit_ms: int) -> bool:
    """Whether some consumer has been idle for ``idle_limit_ms``: only then can one belong to no live replica."""
    return any(idle_ms >= idle_limit_ms for s in stats.streams for _, idle_ms in s.consumers.values())


async def clean_consumers(
    client: aioredis.Redis, stats: GroupStats, group: str, live: set[str], idle_limit_ms: int, claim_min_idle_ms: int
) -> Cleanup:
    """Remove consumers that belong to no live replica, after handing their pending entries over.

    Pod-named consumers pile up in Redis otherwise (every rollout adds new names). A dead
    consumer's pending entries go to a live consumer, marked idle so that its next reclaim
    sweep delivers them; a consumer is deleted only once nothing is pending for it.
    """
    removed: list[str] = []
    handed = 0
    for stream_stats in stats.streams:
        alive_here = [name for name in stream_stats.consumers if name in live]
        for name, (pending, idle_ms) in stream_stats.consumers.items():
            if name in live or idle_ms < idle_limit_ms:
                continue
            if pending:
                if not alive_here:
                    continue  # nobody to give them to yet: keep the consumer and its entries
                while ids := await groups.own_pending_ids(client, stream_stats.stream, group, name, 1000):
                    handed += await groups.hand_over(client, stream_stats.stream, group, alive_here[0], ids,
                                                        claim_min_idle_ms)
            if await groups.leave_group(client, stream_stats.stream, group, name):
                removed.append(name)
    return Cleanup(sorted(set(removed)), handed)
