"""Reading stream entries exactly as stored: bytes, in order, duplicates included.

redis-py turns an entry's fields into a dict, which drops repeated field names and makes the order an
accident of the parser. Replay and re-drive write entries back, so they must see the real list:
:func:`prepare` makes a client return XRANGE/XREVRANGE replies raw, and the helpers here page through
ranges with exclusive bounds so that a long range is never read in one reply.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from streamgroup_core.connecting import keep_raw

from . import CLIError
from .rendering import text

BATCH = 500


@dataclass(frozen=True)
class Entry:
    id: str
    fields: list[tuple[bytes, bytes]]


def prepare(client: redis.Redis) -> redis.Redis:
    """Make ``client`` return XRANGE and XREVRANGE replies unparsed (only this client instance)."""
    prepared: redis.Redis = keep_raw(client, "XRANGE", "XREVRANGE")
    return prepared


def command(client: redis.Redis | redis.client.Pipeline, *args: Any) -> Any:
    """``execute_command``, which redis-py leaves untyped."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _entries(reply: Any) -> list[Entry]:
    entries = []
    for entry_id, flat in reply or ():
        if isinstance(flat, dict):
            raise TypeError("the Redis client was not prepared with reading.prepare()")
        entries.append(Entry(text(entry_id), list(zip(flat[0::2], flat[1::2], strict=True))))
    return entries


def entries(
    client: redis.Redis, key: str, start: str = "-", end: str = "+", limit: int | None = None, batch: int = BATCH
) -> Iterator[Entry]:
    """Entries of ``key`` from ``start`` to ``end`` (both inclusive), oldest first, at most ``limit``."""
    seen = 0
    while limit is None or seen < limit:
        size = batch if limit is None else min(batch, limit - seen)
        page = _entries(command(client, "XRANGE", key, start, end, "COUNT", size))
        yield from page
        seen += len(page)
        if len(page) < size:
            return
        start = "(" + page[-1].id


def entry(client: redis.Redis, key: str, entry_id: str) -> Entry | None:
    page = _entries(command(client, "XRANGE", key, entry_id, entry_id))
    return page[0] if page else None


def first_id(client: redis.Redis, key: str) -> str | None:
    page = _entries(command(client, "XRANGE", key, "-", "+", "COUNT", 1))
    return page[0].id if page else None


def last_id(client: redis.Redis, key: str) -> str | None:
    page = _entries(command(client, "XREVRANGE", key, "+", "-", "COUNT", 1))
    return page[0].id if page else None


# One page of IDs only: how many entries the page holds and the ID of its last one.
_WALK_SCRIPT = """
local page = redis.call(ARGV[4], KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
if #page == 0 then return {0} end
return {#page, page[#page][1]}
"""


def walk(
    client: redis.Redis, key: str, start: str, end: str, limit: int, reverse: bool = False, page: int = 5000
) -> tuple[int, str | None]:
    """Count up to ``limit`` entries in the range, returning the count and the ID of the last one counted.

    Only IDs cross the network (a short script per page), so finding "the 100000th newest entry" or
    counting a million unread entries does not copy their payloads. ``reverse`` walks from ``start``
    (the newer bound, as XREVRANGE takes it) down to ``end``.
    """
    counted, last = 0, None
    while counted < limit:
        size = min(page, limit - counted)
        # EVAL, not EVALSHA: one command for the ACL rules to grant (`streamgroup acl`); the script is short.
        reply: Any = client.eval(_WALK_SCRIPT, 1, key, start, end, str(size), "XREVRANGE" if reverse else "XRANGE")
        counted += int(reply[0])
        if int(reply[0]) == 0:
            break
        last = text(reply[1])
        if int(reply[0]) < size:
            break
        start = "(" + last
    return counted, last


def count(client: redis.Redis, key: str, start: str, end: str, limit: int) -> int:
    """How many entries lie in the range, counting at most ``limit`` of them."""
    return walk(client, key, start, end, limit)[0]


def key_type(client: redis.Redis, key: str) -> str:
    return text(client.type(key))


def require_stream(client: redis.Redis, key: str) -> None:
    kind = key_type(client, key)
    if kind == "none":
        raise CLIError(f"stream {key!r} does not exist")
    if kind != "stream":
        raise CLIError(f"{key!r} is a {kind}, not a stream")


def is_stream(client: redis.Redis, key: str) -> bool:
    """True for an existing stream, False for a missing key; a CLIError for a key of another type."""
    kind = key_type(client, key)
    if kind not in ("none", "stream"):
        raise CLIError(f"{key!r} is a {kind}, not a stream")
    return kind == "stream"
