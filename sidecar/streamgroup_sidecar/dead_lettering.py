"""Writing dead letters: entries that can never be delivered, moved to the dead-letter stream.

An entry leaves the pending list only by an XACK after the app accepted it, or atomically
together with its copy in the dead-letter stream (see :func:`.commands.dead_letter`). A dead
letter is therefore retried until Redis takes it, or until the sidecar stops: then the entry
simply stays pending, and its next owner delivers it again.
"""

from __future__ import annotations

import logging
import random

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streamgroup_core.deadletters import dead_letter_key
from streamgroup_core.logs import Incident

from . import commands
from .config import Settings
from .entries import Entry
from .health import REDIS_RETRY, Health
from .metrics import Metrics
from .replies import backoff, dead_letter_kind
from .stopping import Stop

logger = logging.getLogger("streamgroup.sidecar")


class DeadLetters:
    def __init__(self, settings: Settings, redis: aioredis.Redis, health: Health, metrics: Metrics,
                 stop: Stop) -> None:
        self._template = settings.delivery.dead_letter_stream
        self._group = settings.group.group
        self._consumer = settings.group.consumer
        self._redis = redis
        self._health = health
        self._metrics = metrics
        self._stop = stop
        self._rng = random.Random()
        self._trimmed_incident = Incident(logger, "recording trimmed entries")

    async def write(self, entry: Entry, reason: str, detail: str) -> None:
        """Move ``entry`` to the dead-letter stream (XACK and XADD in one step), retrying until done or stopped."""
        target = dead_letter_key(self._template, entry.stream)
        failures = 0
        incident = Incident(logger, "writing a dead letter")
        while True:
            try:
                moved = await commands.dead_letter(
                    self._redis, entry, target, self._group, self._consumer, reason, detail)
            except RedisError as exc:
                failures += 1
                self._health.redis_failed("dead_letter", incident, exc)
                if await self._stop.during(backoff(failures, REDIS_RETRY, self._rng)):
                    return
                continue
            self._health.redis_recovered(incident)
            break
        self._metrics.stream(entry.stream).dead_lettered += 1
        self._metrics.dead_letters.labels(entry.stream, dead_letter_kind(reason)).inc()
        logger.warning("entry dead-lettered", extra={"sg": {
            "stream": entry.stream, "id": entry.id, "dead_letter_stream": target, "reason": reason,
            "detail": detail, "deliveries": entry.deliveries, "was_pending": moved}})

    async def write_trimmed(self, stream: str, ids: list[str]) -> None:
        """Record entries XAUTOCLAIM found deleted (it already dropped them from the pending list): only
        their IDs are left. Retried until done; if the sidecar stops first, the IDs are logged instead."""
        target = dead_letter_key(self._template, stream)
        failures = 0
        while True:
            try:
                await commands.record_trimmed(self._redis, stream, target, self._group, self._consumer, ids)
            except RedisError as exc:
                failures += 1
                self._health.redis_failed("dead_letter", self._trimmed_incident, exc)
                if await self._stop.during(backoff(failures, REDIS_RETRY, self._rng)):
                    logger.error("trimmed entries not recorded before shutdown",
                                 extra={"sg": {"stream": stream, "ids": ids}})
                    return
                continue
            self._health.redis_recovered(self._trimmed_incident)
            break
        self._metrics.stream(stream).dead_lettered += len(ids)
        self._metrics.dead_letters.labels(stream, "trimmed").inc(len(ids))
        logger.warning("pending entries were trimmed before delivery; recorded as dead letters",
                       extra={"sg": {"stream": stream, "dead_letter_stream": target, "ids": ids}})
