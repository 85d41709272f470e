"""Leaving the group at shutdown: hand what is still pending to a live peer, then leave.

Entries this consumer read but did not finish stay in its pending list. A peer would reclaim them
only after ``--claim-min-idle``; handed over (XCLAIM to the most recently seen peer, marked idle
for that long) they go in the peer's next sweep. The consumer then removes itself from the group
where nothing is pending for it any more, so that pod-named consumers do not pile up, one per
restart. With no live peer nothing is handed over, and the consumer stays where it holds entries.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from streamgroup_core import groups

from . import commands
from .config import Settings
from .metrics import Metrics

logger = logging.getLogger("streamgroup.sidecar")


class Handover:
    def __init__(self, settings: Settings, redis: aioredis.Redis, metrics: Metrics) -> None:
        self._streams = settings.group.streams
        self._group = settings.group.group
        self._consumer = settings.group.consumer
        self._min_idle_ms = int(settings.claim.min_idle * 1000)
        self._redis = redis
        self._metrics = metrics

    async def run(self) -> tuple[dict[str, int], bool]:
        """Entries handed over per stream, and whether the consumer left the group on every stream."""
        group, me = self._group, self._consumer
        handed: dict[str, int] = {}
        left_everywhere = True
        for stream in self._streams:
            peers = await commands.live_peers(self._redis, stream, group, me, self._min_idle_ms)
            while peers:
                ids = await groups.own_pending_ids(self._redis, stream, group, me, 1000)
                if not ids:
                    break
                # Marked idle for --claim-min-idle: the peer's next sweep takes them at once.
                moved = await groups.hand_over(self._redis, stream, group, peers[0], ids, self._min_idle_ms)
                handed[stream] = handed.get(stream, 0) + moved
                self._metrics.handed_over.labels(stream).inc(moved)
            if handed.get(stream):
                logger.info("handed pending entries over", extra={"sg": {
                    "stream": stream, "peer": peers[0], "entries": handed[stream]}})
            left_everywhere &= await groups.leave_group(self._redis, stream, group, me)
        return handed, left_everywhere
