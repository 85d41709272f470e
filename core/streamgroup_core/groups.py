"""Redis commands about a consumer group that the sidecar and the operator both issue.

Creating the group, reading its row of XINFO GROUPS and the age of its oldest pending entry, and
moving one consumer's pending entries to another before it leaves the group: the sidecar does it
for itself at shutdown, the operator for consumers whose pods are gone. Either way a consumer is
deleted only once nothing is pending for it, checked inside Redis (a script), since XGROUP
DELCONSUMER would drop its pending entries.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .ids import parse_id
from .permissions import naming

_LEAVE_SCRIPT = """
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #mine > 0 then
  return 0
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) + 1
"""


def text(value: Any) -> str:
    """A reply value as text (redis-py returns bytes unless told to decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)


async def ensure_group(client: aioredis.Redis, stream: str, group: str, start: str) -> bool:
    """Create ``group`` on ``stream`` at ``start`` (and the stream if missing). ``True`` if created.

    An existing group is left exactly where it is: moving it silently would skip or replay entries.
    """
    try:
        with naming("XGROUP CREATE", stream):
            await client.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if str(exc).startswith("BUSYGROUP"):
            return False
        raise
    return True


async def group_info(client: aioredis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    """This group's row of XINFO GROUPS, or ``None`` if the stream or group does not exist."""
    try:
        with naming("XINFO GROUPS", stream):
            rows = await client.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    for row in rows:
        if text(row["name"]) == group:
            return {text(k): v for k, v in row.items()}
    return None


async def oldest_pending_age(client: aioredis.Redis, stream: str, group: str) -> float | None:
    """Seconds since the oldest pending entry was added (from its ID), or ``None`` with nothing pending."""
    with naming("XPENDING", stream):
        summary = await client.xpending(stream, group)
    oldest = summary.get("min")
    if not summary.get("pending") or not oldest:
        return None
    ms, _ = parse_id(text(oldest))
    return max(0.0, time.time() - ms / 1000)


async def own_pending_ids(client: aioredis.Redis, stream: str, group: str, consumer: str, count: int) -> list[str]:
    with naming("XPENDING", stream):
        rows = await client.xpending_range(stream, group, min="-", max="+", count=count, consumername=consumer)
    return [text(row["message_id"]) for row in rows]


async def hand_over(
    client: aioredis.Redis, stream: str, group: str, peer: str, ids: list[str], idle_ms: int
) -> int:
    """Move ``ids`` to ``peer``, marked idle for ``idle_ms`` so that its next sweep takes them at once."""
    with naming("XCLAIM", stream):
        claimed = await client.xclaim(stream, group, peer, 0, list[Any](ids), idle=idle_ms, justid=True)
    return len(claimed)


async def leave_group(client: aioredis.Redis, stream: str, group: str, consumer: str) -> bool:
    """Delete ``consumer`` from the group if it has nothing pending; ``True`` if it is gone."""
    with naming("EVAL (leave script: XPENDING, XGROUP DELCONSUMER)", stream):
        result = await client.eval(_LEAVE_SCRIPT, 1, stream, group, consumer)  # type: ignore[misc]
    return bool(result)
