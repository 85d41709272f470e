"""The stats loop: reads the group's lag, pending count and oldest pending age for ``/metrics``.

Those numbers live in Redis, and Prometheus' collectors are synchronous, so they are read on a
timer (``--stats-interval``) into the snapshot that :class:`~.metrics.GroupCollector` exports,
never on scrape. A stream whose group is gone is left out rather than reported as zero.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from streamgroup_core import groups
from streamgroup_core.logs import Incident

from . import commands
from .config import Settings
from .health import Health
from .metrics import GroupSnapshot, Metrics

logger = logging.getLogger("streamgroup.sidecar")


class GroupStats:
    def __init__(self, settings: Settings, redis: aioredis.Redis, health: Health, metrics: Metrics) -> None:
        self._streams = settings.group.streams
        self._group = settings.group.group
        self._interval = settings.server.stats_interval
        self._redis = redis
        self._health = health
        self._snapshots = metrics.groups.snapshots
        self._incident = Incident(logger, "reading group stats")

    async def run(self) -> None:
        while True:
            try:
                await self._measure()
                # Only its own incident: reads succeed on a replica too, so they prove nothing about writes.
                self._incident.recovered()
            except commands.REDIS_FAILURES as exc:
                self._health.redis_failed("stats", self._incident, exc)
            await asyncio.sleep(self._interval)

    async def _measure(self) -> None:
        group = self._group
        for stream in self._streams:
            info = await groups.group_info(self._redis, stream, group)
            if info is None:
                self._snapshots.pop(stream, None)
                continue
            lag = info.get("lag")
            self._snapshots[stream] = GroupSnapshot(
                stream=stream, group=group,
                lag=int(lag) if isinstance(lag, int) and lag >= 0 else None,
                pending=int(info.get("pending") or 0),
                oldest_pending_age_seconds=await groups.oldest_pending_age(self._redis, stream, group),
            )
