"""The operator's Redis work: the consumer group's existence, its numbers, and its consumers.

Lag comes from ``XINFO GROUPS``. Redis reports it as nil when it cannot compute it (after
XDEL, XSETID, or when the group's position was trimmed away); then the entries after the
group's last-delivered ID are counted with one bounded XRANGE, and a count that reaches the
bound is reported as the bound (a lower bound: never more scaling than the data supports).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from streamgroup_core import groups
from streamgroup_core.connecting import Endpoint, async_client
from streamgroup_core.groups import text as _text

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


async def bounded_lag(client: aioredis.Redis, stream: str, last_delivered: str) -> int:
    """Entries after ``last_delivered``, counted up to :data:`LAG_COUNT_BOUND`."""
    rows = await client.xrange(stream, min=f"({last_delivered}", max="+", count=LAG_COUNT_BOUND)
    return len(rows)


async def measure(client: aioredis.Redis, streams: list[str], group: str, dead_letter_streams: list[str]) -> GroupStats:
    results = []
    for stream, dead in zip(streams, dead_letter_streams, strict=True):
        info = await groups.group_info(client, stream, group)
        dead_letters = int(await client.xlen(dead))
        if info is None:
            results.append(StreamStats(stream, False, None, 0, None, {}, dead_letters))
            continue
        lag = info.get("lag")
        if not isinstance(lag, int) or lag < 0:
            lag = await bounded_lag(client, stream, _text(info.get("last-delivered-id", b"0-0")))
        rows = await client.xinfo_consumers(stream, group)
        consumers = {_text(r["name"]): (int(r["pending"]), int(r["idle"])) for r in rows}
        results.append(StreamStats(
            stream=stream, exists=True, lag=int(lag), pending=int(info.get("pending") or 0),
            oldest_pending_age_seconds=await groups.oldest_pending_age(client, stream, group),
            consumers=consumers, dead_letters=dead_letters,
            entries_read=entries_read(info),
        ))
    return GroupStats(results)


@dataclass(frozen=True)
class Cleanup:
    removed: list[str]
    handed_over: int


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
