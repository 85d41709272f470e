"""Writing dead letters: entries that can never be delivered, moved to the dead-letter stream.

An entry leaves the pending list only by an XACK after the app accepted it, or atomically
together with its copy in the dead-letter stream (see :func:`.commands.dead_letter`). A dead
letter is therefore retried until Redis takes it, or until the sidecar stops: then the entry
simply stays pending, and its next owner delivers it again.

In Redis Cluster the script's two keys must share a slot: the core's
:func:`~streamgroup_core.deadletters.dead_letter_key_for` resolves the default template so that they
do, and :func:`dead_letter_keys` refuses, at start-up, a configured template that puts a dead-letter
stream in another slot than its source.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable

import redis.asyncio as aioredis

from streamgroup_core.deadletters import DEFAULT_TEMPLATE, dead_letter_key_for
from streamgroup_core.logs import Incident
from streamgroup_core.partitions import keyslot

from . import commands
from .config import ConfigError, Settings
from .entries import Entry
from .health import REDIS_RETRY, Health
from .metrics import Metrics
from .replies import backoff, dead_letter_kind
from .stopping import Stop

logger = logging.getLogger("streamgroup.sidecar")


class DeadLetterSlotError(ConfigError):
    """Cluster mode: a dead-letter stream would be in another slot than its source (the script needs both)."""


def dead_letter_keys(template: str, streams: Iterable[str], mode: str) -> dict[str, str]:
    """Each stream's dead-letter stream (:func:`~streamgroup_core.deadletters.dead_letter_key_for`).

    In cluster mode :class:`DeadLetterSlotError` names the first stream whose dead-letter stream is
    in another slot, and both slots: the sidecar refuses to start rather than fail on the first dead letter.
    """
    keys = {stream: dead_letter_key_for(template, stream, mode) for stream in streams}
    if mode == "cluster":
        for stream, key in keys.items():
            if keyslot(key) != keyslot(stream):
                if template == DEFAULT_TEMPLATE:
                    # Only a stream without a hash tag whose name has a brace in it: it cannot be one.
                    hint = "name the stream without a brace, or with a hash tag"
                else:
                    hint = (f"use the default template {DEFAULT_TEMPLATE} (cluster mode keeps it in its source's "
                            "slot) or one whose keys carry their source's hash tag")
                raise DeadLetterSlotError(
                    f"--dead-letter-stream / SG_DEAD_LETTER_STREAM {template!r} puts the dead letters of "
                    f"{stream!r} (slot {keyslot(stream)}) in {key!r} (slot {keyslot(key)}): in cluster mode a dead "
                    "letter is written by one script together with the ack of its source, so both keys must "
                    f"share a slot; {hint}")
    return keys


WRITERS = 4
"""Dead letters written at once. Each takes a Redis connection while it runs: without a bound, an app
refusing everything would open a connection per worker on every node (64 at the default in-flight
limit); four keep up with any refusal rate an app reaches (one script call each, well under a
millisecond), and the connections per node stay a fixed number (README, "Redis topologies")."""


class DeadLetters:
    def __init__(self, settings: Settings, redis: aioredis.Redis, health: Health, metrics: Metrics,
                 stop: Stop) -> None:
        self._keys = dead_letter_keys(settings.delivery.dead_letter_stream, settings.group.streams,
                                      settings.redis.mode)
        self._group = settings.group.group
        self._consumer = settings.group.consumer
        self._redis = redis
        self._health = health
        self._metrics = metrics
        self._stop = stop
        self._rng = random.Random()
        self._trimmed_incident = Incident(logger, "recording trimmed entries")
        self._writers = asyncio.Semaphore(WRITERS)

    async def write(self, entry: Entry, reason: str, detail: str) -> None:
        """Move ``entry`` to the dead-letter stream (XACK and XADD in one step), retrying until done or stopped."""
        target = self._keys[entry.stream]
        failures = 0
        incident = Incident(logger, "writing a dead letter")
        while True:
            try:
                async with self._writers:
                    moved = await commands.dead_letter(
                        self._redis, entry, target, self._group, self._consumer, reason, detail)
            except commands.REDIS_FAILURES as exc:
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
        target = self._keys[stream]
        failures = 0
        while True:
            try:
                await commands.record_trimmed(self._redis, stream, target, self._group, self._consumer, ids)
            except commands.REDIS_FAILURES as exc:
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
