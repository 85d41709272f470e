"""The reader: takes entries from the consumer group into the tracker, never more than it can deliver.

It creates the group where missing (``--start-from``), then reads this consumer's own pending
list (what it had read but not acked before a restart), then, in turn, runs a reclaim sweep
every ``--claim-interval`` (:mod:`.reclaiming`) and blocking reads of new entries. Each read
reserves the free slots first and asks Redis for at most that many entries, so memory is
bounded by ``--max-in-flight``. While the app is known to be down it takes nothing new.

A Redis failure is retried with back-off; a deleted group or stream (NOGROUP) is recreated, or
stops the sidecar with :class:`GroupLost` under ``--on-group-loss exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streamgroup_core import groups
from streamgroup_core.logs import Incident

from . import commands
from .config import Settings
from .entries import Entry
from .health import REDIS_RETRY, Health
from .metrics import Metrics
from .reclaiming import Reclaimer
from .replies import backoff
from .stopping import Stop
from .tracking import InFlight

logger = logging.getLogger("streamgroup.sidecar")


class GroupLost(RuntimeError):
    """The group or stream was deleted and ``--on-group-loss exit`` asks to stop."""


class Reader:
    def __init__(self, settings: Settings, redis: aioredis.Redis, tracker: InFlight, reclaimer: Reclaimer,
                 health: Health, metrics: Metrics, stop: Stop) -> None:
        self._settings = settings
        self._streams = settings.group.streams
        self._names = {s.encode(): s for s in settings.group.streams}
        self._group = settings.group.group
        self._consumer = settings.group.consumer
        self._redis = redis
        self._tracker = tracker
        self._reclaimer = reclaimer
        self._health = health
        self._metrics = metrics
        self._stop = stop
        self._rng = random.Random()
        self._incident = Incident(logger, "reading from Redis")

    async def run(self) -> None:
        """Read until the stop (it is noticed after the current blocking read, at most ``--read-block``)."""
        await self._ensure_groups()
        await self._with_redis_retries("xreadgroup", self._redeliver_own_pending)
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        new = {stream: ">" for stream in self._streams}
        block = self._settings.read.block
        while not self._stop.is_set():
            await self._gate()
            if self._stop.is_set():
                break
            if loop.time() >= next_sweep:
                await self._with_redis_retries("xautoclaim", self._reclaimer.sweep)
                next_sweep = loop.time() + self._settings.claim.interval
            block_ms = max(1, int(min(block, next_sweep - loop.time()) * 1000))
            await self._with_redis_retries("xreadgroup", functools.partial(self._read_new, new, block_ms))

    async def _gate(self) -> None:
        """While the app is down, take nothing new (entries in hand keep probing it)."""
        health = self._health
        while not health.app_up and not self._stop.is_set():
            if not self._settings.delivery.app_health_url and not self._tracker.held:
                return  # nothing in hand to find out whether the app is back: let one entry try
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(health.wait_app_up(), 0.5)

    async def _read_new(self, positions: dict[str, str], block_ms: int) -> None:
        tracker = self._tracker
        slots = await tracker.reserve()
        try:
            entries = await self._read(positions, slots, block_ms)
        except BaseException:
            tracker.unreserve(slots)
            raise
        tracker.hold(entries, slots)

    async def _read(self, ids: dict[str, str], slots: int, block_ms: int | None) -> list[Entry]:
        """One XREADGROUP whose reply can hold at most ``slots`` entries."""
        per_stream = slots // len(ids)
        if per_stream:
            positions = ids
        else:
            # Fewer slots than streams: read some streams now, rotating so none starves.
            names = list(ids)
            start = self._rng.randrange(len(names))
            positions = {name: ids[name] for name in (names[start:] + names[:start])[:slots]}
            per_stream = 1
        return await commands.read(self._redis, self._group, self._consumer, positions, per_stream, block_ms,
                                   self._names)

    async def _redeliver_own_pending(self) -> None:
        """Deliver again what this consumer had read but not acked before it restarted."""
        tracker = self._tracker
        cursor = {stream: "0" for stream in self._streams}
        total = 0
        while cursor and not self._stop.is_set():
            slots = await tracker.reserve()
            try:
                entries = await self._read(cursor, slots, None)
                by_stream: dict[str, list[Entry]] = {}
                for entry in entries:
                    by_stream.setdefault(entry.stream, []).append(entry)
                for stream in list(cursor):
                    got = by_stream.get(stream)
                    if not got:
                        del cursor[stream]
                        continue
                    cursor[stream] = got[-1].id
                    # History reads bump Redis' delivery counters: take the attempts from there.
                    await commands.load_delivery_counts(self._redis, stream, self._group, self._consumer, got)
            except BaseException:
                tracker.unreserve(slots)
                raise
            tracker.hold(entries, slots)
            total += len(entries)
        if total:
            logger.info("re-delivering own pending entries", extra={"sg": {"entries": total}})

    async def _with_redis_retries(self, operation: str, call: Callable[[], Awaitable[Any]]) -> Any:
        failures = 0
        while True:
            try:
                result = await call()
            except RedisError as exc:
                failures += 1
                self._health.redis_failed(operation, self._incident, exc)
                if commands.is_nogroup(exc):
                    await self._group_lost()
                else:
                    await asyncio.sleep(backoff(failures, REDIS_RETRY, self._rng))
                continue
            self._health.redis_recovered(self._incident)
            return result

    async def _ensure_groups(self) -> None:
        start_from = self._settings.group.start_from
        failures = 0
        incident = Incident(logger, "creating the consumer group")
        while True:
            try:
                for stream in self._streams:
                    if await groups.ensure_group(self._redis, stream, self._group, start_from):
                        logger.info("created consumer group", extra={"sg": {
                            "stream": stream, "group": self._group, "start_from": start_from}})
            except RedisError as exc:
                failures += 1
                self._health.redis_failed("xgroup_create", incident, exc)
                await asyncio.sleep(backoff(failures, REDIS_RETRY, self._rng))
                continue
            self._health.redis_recovered(incident)
            self._health.groups_ready()
            return

    async def _group_lost(self) -> None:
        """The group (or the stream) was deleted under us: recreate it, or stop, as configured."""
        self._health.groups_lost()
        self._metrics.group_recreated.inc()
        group = self._settings.group
        if group.on_loss == "exit":
            raise GroupLost(f"consumer group {group.group!r} or one of its streams was deleted")
        logger.error("consumer group or stream was deleted; recreating it", extra={"sg": {
            "group": group.group, "start_from": group.start_from}})
        await self._ensure_groups()
