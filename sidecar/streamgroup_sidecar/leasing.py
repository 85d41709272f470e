"""The lease keeper: keeps this consumer's claim on every entry it holds.

A peer's reclaim sweep takes any entry idle longer than ``--claim-min-idle``; an entry being
delivered to a slow app, waiting for its key or waiting to retry must not look idle. Every third
of ``--claim-min-idle`` the keeper resets the idle time of every held entry that is still pending
for this consumer, and stores the attempts made so far in Redis (RETRYCOUNT), so that a later
owner knows them. An entry a peer took over anyway (after a pause longer than the idle limit) is
marked lost in the tracker: its worker drops it instead of delivering it again.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from streamgroup_core.logs import Incident

from . import commands
from .config import Settings
from .health import Health
from .metrics import Metrics
from .tracking import InFlight

logger = logging.getLogger("streamgroup.sidecar")

LEASE_BATCH = 500
"""Entries renewed per script call: one call must not block Redis for long."""


class LeaseKeeper:
    def __init__(self, settings: Settings, redis: aioredis.Redis, tracker: InFlight, health: Health,
                 metrics: Metrics) -> None:
        self._streams = settings.group.streams
        self._group = settings.group.group
        self._consumer = settings.group.consumer
        self._every = settings.claim.min_idle / 3
        self._redis = redis
        self._tracker = tracker
        self._health = health
        self._metrics = metrics
        self._incident = Incident(logger, "renewing leases")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            for stream in self._streams:
                await self._renew(stream)

    async def _renew(self, stream: str) -> None:
        held = self._tracker.leases(stream)
        for start in range(0, len(held), LEASE_BATCH):
            try:
                lost = await commands.refresh_leases(
                    self._redis, stream, self._group, self._consumer, held[start:start + LEASE_BATCH])
            except commands.REDIS_FAILURES as exc:
                self._health.redis_failed("lease", self._incident, exc)
                return
            self._health.redis_recovered(self._incident)
            for entry_id in lost:
                if self._tracker.lose_lease(stream, entry_id):
                    self._metrics.leases_lost.labels(stream).inc()
                    logger.warning("another consumer took over an entry in delivery; abandoning it",
                                   extra={"sg": {"stream": stream, "id": entry_id}})
