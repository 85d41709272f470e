"""The reclaimer: takes over entries that other consumers left pending too long.

A consumer that crashed, or was killed, leaves its pending entries behind. A sweep (XAUTOCLAIM)
claims those idle longer than ``--claim-min-idle`` for this consumer, a page at a time, at most
``--claim-max-pages`` pages per stream, and never more entries than there are free slots. Entries
it finds deleted from the stream (trimmed) are already gone from the pending list, so they are
recorded as dead letters. A peer's live entries are never taken: its lease keeper keeps them
from going idle (see :mod:`.leasing`).

The reader runs a sweep every ``--claim-interval``, between two reads: sweeps and reads share
the same slots.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis.asyncio as aioredis

from . import commands
from .config import Settings
from .dead_lettering import DeadLetters
from .metrics import Metrics
from .stopping import Stop
from .tracking import InFlight

logger = logging.getLogger("streamgroup.sidecar")


class Reclaimer:
    def __init__(self, settings: Settings, redis: aioredis.Redis, tracker: InFlight, dead_letters: DeadLetters,
                 metrics: Metrics, stop: Stop, done: Callable[[str, str], bool] = lambda _stream, _id: False) -> None:
        """``done(stream, ID)``: the entry was delivered and only its ack is waiting (it is not delivered again)."""
        self._streams = settings.group.streams
        self._group = settings.group.group
        self._consumer = settings.group.consumer
        self._min_idle_ms = int(settings.claim.min_idle * 1000)
        self._max_pages = settings.claim.max_pages
        self._redis = redis
        self._tracker = tracker
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._stop = stop
        self._done = done

    async def sweep(self) -> None:
        """One sweep of every stream; Redis errors are raised (the reader retries the sweep)."""
        for stream in self._streams:
            cursor = "0-0"
            for _ in range(self._max_pages):
                if self._stop.is_set():
                    return
                cursor = await self._page(stream, cursor)
                if cursor == "0-0":
                    break

    async def _page(self, stream: str, cursor: str) -> str:
        """Claim one page of idle entries into the tracker; the next cursor."""
        tracker = self._tracker
        slots = await tracker.reserve()
        try:
            cursor, claimed, deleted = await commands.autoclaim(
                self._redis, stream, self._group, self._consumer, self._min_idle_ms, cursor, slots)
            # Ours already, delivered, their ack not through yet (XACK failing): nothing to deliver again.
            claimed = [entry for entry in claimed if not self._done(stream, entry.id)]
            if deleted:
                await self._dead_letters.write_trimmed(stream, deleted)
            if claimed:
                # Claiming bumped Redis' delivery counters: take the attempts from there.
                await commands.load_delivery_counts(self._redis, stream, self._group, self._consumer, claimed)
        except BaseException:
            tracker.unreserve(slots)
            raise
        if claimed:
            self._metrics.reclaimed.labels(stream).inc(len(claimed))
            logger.info("reclaimed idle entries", extra={"sg": {"stream": stream, "entries": len(claimed)}})
        tracker.hold(claimed, slots)
        return cursor
