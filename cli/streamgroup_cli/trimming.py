"""Shortening a stream, without silently dropping entries a consumer group still needs.

XTRIM removes the oldest entries whether or not anyone has processed them. ``trim`` first works out
the boundary (the oldest entry that stays) from ``--maxlen`` or ``--older-than``, then checks every
consumer group of the stream: entries after a group's last-delivered ID have not been read by it yet,
and entries in its pending list have been read but not acknowledged (the sidecar would dead-letter
them as ``trimmed``, without their payload). If any of those would go, ``trim`` refuses and says which
group would lose how many, unless ``--force``.

The trim itself is always ``XTRIM MINID <boundary>`` (approximate unless ``--exact``): entries added
while the command runs are never removed, so what was checked is what is trimmed (groups only move
forward, and an entry that was read and acknowledged cannot become pending again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis

from . import CLIError
from .parsing import format_id, next_id, parse_id
from .reading import count, first_id, last_id, require_stream, walk
from .rendering import duration, iso_ms, text

COUNT_LIMIT = 1_000_000
"""Counts in messages stop here ("at least ...")."""
PENDING_LIMIT = 10_000


@dataclass(frozen=True)
class Loss:
    """What one consumer group would lose."""

    group: str
    last_delivered_id: str
    unread: int
    pending: int
    oldest_pending_id: str | None = None


@dataclass(frozen=True)
class Plan:
    stream: str
    length: int
    boundary: str | None
    """Entries with IDs before this one would go; ``None`` when nothing would."""
    removes: int
    losses: list[Loss] = field(default_factory=list)
    description: str = ""
    """What the trim does, after a comma: "keeping the newest 100"."""
    nothing: str = ""
    """Why nothing would go, after a comma: "none written before ..."."""

    @property
    def safe(self) -> bool:
        return not self.losses


def _at_least(number: int, limit: int) -> str:
    return f"at least {number}" if number >= limit else str(number)


def _boundary_for_maxlen(client: redis.Redis, stream: str, length: int, maxlen: int) -> tuple[str | None, int]:
    removes = length - maxlen
    if removes <= 0:
        return None, 0
    if maxlen == 0:
        newest = last_id(client, stream)
        return (next_id(newest) if newest else None), removes
    if removes < maxlen:
        # The first entry that stays is the (removes + 1)th oldest.
        _, boundary = walk(client, stream, "-", "+", removes + 1)
    else:
        # ... which is also the maxlen-th newest; walk whichever way is shorter.
        _, boundary = walk(client, stream, "+", "-", maxlen, reverse=True)
    return boundary, removes


def _losses(client: redis.Redis, stream: str, boundary: str) -> list[Loss]:
    groups: Any = client.xinfo_groups(stream)
    losses = []
    boundary_key = parse_id(boundary)
    oldest_entry = first_id(client, stream)
    if oldest_entry is None:
        return []
    for info in groups:
        name, delivered = text(info["name"]), text(info["last-delivered-id"])
        unread = 0
        if parse_id(delivered) < boundary_key:
            unread = count(client, stream, "(" + delivered, "(" + boundary, COUNT_LIMIT)
        # Pending entries older than the stream's oldest entry have lost their payload already.
        below: Any = client.xpending_range(stream, name, oldest_entry, "(" + boundary, PENDING_LIMIT)
        if unread or below:
            losses.append(Loss(name, delivered, unread, len(below), text(below[0]["message_id"]) if below else None))
    return losses


def plan(
    client: redis.Redis,
    stream: str,
    maxlen: int | None = None,
    older_than_seconds: float | None = None,
    now: float | None = None,
) -> Plan:
    """Which entries ``trim`` would remove, and what each consumer group would lose with them."""
    require_stream(client, stream)
    length = int(client.xlen(stream))  # type: ignore[arg-type]
    if maxlen is not None:
        boundary, removes = _boundary_for_maxlen(client, stream, length, maxlen)
        description, nothing = f"keeping the newest {maxlen}", f"not more than {maxlen}"
    elif older_than_seconds is not None:
        cutoff = max(0, int(((time.time() if now is None else now) - older_than_seconds) * 1000))
        boundary = format_id(cutoff, 0)
        removes = count(client, stream, "-", "(" + boundary, COUNT_LIMIT)
        before = f"written before {iso_ms(cutoff)} ({duration(older_than_seconds)} ago)"
        description, nothing = f"removing those {before}", f"none {before}"
        if removes == 0:
            boundary = None
    else:
        raise CLIError("say how to trim: --maxlen N or --older-than DURATION")
    if boundary is None:
        return Plan(stream, length, None, 0, description=description, nothing=nothing)
    return Plan(stream, length, boundary, removes, _losses(client, stream, boundary), description, nothing)


def explain(plan: Plan) -> str:
    """What would be lost, in one line."""
    parts = []
    for loss in plan.losses:
        if loss.unread:
            parts.append(f"{_at_least(loss.unread, COUNT_LIMIT)} that group {loss.group!r} has not read yet "
                         f"(it has read up to {loss.last_delivered_id})")
        if loss.pending:
            parts.append(f"{_at_least(loss.pending, PENDING_LIMIT)} still pending in group {loss.group!r} "
                         f"(oldest {loss.oldest_pending_id})")
    return parts[0] if len(parts) == 1 else "; ".join(parts[:-1]) + "; and " + parts[-1]


def trim(client: redis.Redis, plan: Plan, exact: bool = False, force: bool = False) -> int:
    """Remove the entries before the plan's boundary; a CLIError if that loses unread or pending ones."""
    if plan.boundary is None:
        return 0
    if not plan.safe and not force:
        raise CLIError(
            f"refusing to trim {plan.stream}: it would remove {_at_least(plan.removes, COUNT_LIMIT)} entries, "
            f"including {explain(plan)}; let the groups catch up, or add --force to trim anyway")
    removed = 0
    while True:
        # An approximate XTRIM removes whole blocks, at most 100 blocks a call: repeat until it stops.
        step = int(client.xtrim(plan.stream, minid=plan.boundary, approximate=not exact))  # type: ignore[arg-type]
        removed += step
        if exact or step == 0:
            return removed
