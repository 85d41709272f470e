"""The reader: takes entries from the consumer group into the tracker, never more than it can deliver.

It creates the group where missing (``--start-from``), then reads this consumer's own pending
list (what it had read but not acked before a restart), then, in turn, runs a reclaim sweep
every ``--claim-interval`` (:mod:`.reclaiming`) and blocking reads of new entries. Each read
reserves the free slots first and asks Redis for at most that many entries, so memory is
bounded by ``--max-in-flight``. While the app is known to be down it takes nothing new.

A Redis failure is retried with back-off; a deleted group or stream (NOGROUP) is recreated, or
stops the sidecar with :class:`GroupLost` under ``--on-group-loss exit``.

**Standalone and sentinel mode**: one task; one XREADGROUP covers every stream.

**Cluster mode**: one XREADGROUP may only name keys of one slot, so the streams are grouped by
slot (:func:`slot_groups`; the partitions ``orders:{n}`` and ``refunds:{n}`` share one) and each
group gets a task of its own, a *lane*, that reads it with blocking reads sent to the primary
owning that slot (:func:`.commands.read_slot`). A blocking read of an idle group therefore never
holds up the others. Lanes reserve their slots from the tracker like any read, so memory stays
bounded by ``--max-in-flight``; since a blocking read keeps its slots until something arrives, a
lane whose last read came back short (its streams are drained) blocks with a single slot, and a
lane whose last read filled every slot it had (more is waiting) reserves every free slot. Idle
groups thus hold one slot each, and busy ones share the rest. With fewer slots than twice the
number of groups, lanes block for at most 100 ms, so an idle group cannot keep a busy one waiting
for long. The reader's own task runs the reclaim sweeps, every ``--claim-interval``, beside the
lanes. Redis connections per primary: one per lane whose slot it owns (a blocked read holds its
connection), plus one for each other command in progress at the same moment (acks, lease renewals,
stats, a sweep, dead letters being written).
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

from streamgroup_core import groups
from streamgroup_core.logs import Incident
from streamgroup_core.partitions import keyslot

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


SCARCE_BLOCK = 0.1
"""Cluster mode, fewer slots than twice the slot groups: the longest blocking read, seconds."""


def slot_groups(streams: tuple[str, ...]) -> list[tuple[str, ...]]:
    """``streams`` grouped by Redis Cluster slot, in order of first appearance: one XREADGROUP each."""
    by_slot: dict[int, list[str]] = {}
    for stream in streams:
        by_slot.setdefault(keyslot(stream), []).append(stream)
    return [tuple(group) for group in by_slot.values()]


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
        self._cluster = settings.redis.mode == "cluster"
        self._groups = slot_groups(self._streams) if self._cluster else [self._streams]
        self._read_command = commands.read_slot if self._cluster else commands.read
        self._recreating = asyncio.Lock()

    async def run(self) -> None:
        """Read until the stop (it is noticed after the current blocking read, at most ``--read-block``)."""
        await self._ensure_groups()
        await self._with_redis_retries("xreadgroup", self._redeliver_own_pending)
        if self._cluster:
            await self._run_lanes()
            return
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
            if not self._settings.delivery.app_watched and not self._tracker.held:
                return  # nothing in hand to find out whether the app is back: let one entry try
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(health.wait_app_up(), 0.5)

    async def _read_new(self, positions: dict[str, str], block_ms: int) -> None:
        await self._read_held(positions, block_ms, None)

    async def _read_held(self, positions: dict[str, str], block_ms: int, most: int | None) -> bool:
        """Reserve free slots (at most ``most``), read into them and hold what came; the slots a read does
        not fill, or a failed read took, go back. ``True`` if it filled every slot it had."""
        tracker = self._tracker
        slots = await tracker.reserve(most)
        try:
            entries = await self._read(positions, slots, block_ms)
        except BaseException:
            tracker.unreserve(slots)
            raise
        tracker.hold(entries, slots)
        return len(entries) == slots

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
        return await self._read_command(self._redis, self._group, self._consumer, positions,  # type: ignore[arg-type]
                                        per_stream, block_ms, self._names)

    # --- cluster mode: one lane per slot group ----------------------------------------------------

    async def _run_lanes(self) -> None:
        """Run a lane per slot group and the reclaim sweeps until the stop; a lane's failure ends them all."""
        tasks = [asyncio.create_task(self._lane(streams), name=f"reader-slot-{keyslot(streams[0])}")
                 for streams in self._groups]
        tasks.append(asyncio.create_task(self._sweeps(), name="reclaim"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _lane(self, streams: tuple[str, ...]) -> None:
        """Blocking reads of one slot group's new entries until the stop."""
        positions = {stream: ">" for stream in streams}
        block = self._settings.read.block
        if self._tracker.size < 2 * len(self._groups):
            block = min(block, SCARCE_BLOCK)
        block_ms = max(1, int(block * 1000))
        more = False
        while not self._stop.is_set():
            await self._gate()
            if self._stop.is_set():
                break
            more = await self._with_redis_retries(
                "xreadgroup", functools.partial(self._read_lane, positions, block_ms, more))

    async def _read_lane(self, positions: dict[str, str], block_ms: int, more: bool) -> bool:
        """One blocking read of a slot group: every free slot if ``more`` may be waiting, else one.
        ``True`` if it filled every slot it had."""
        return await self._read_held(positions, block_ms, None if more else 1)

    async def _sweeps(self) -> None:
        """A reclaim sweep every ``--claim-interval`` (the first at once), until the stop."""
        while not self._stop.is_set():
            await self._gate()
            if self._stop.is_set():
                break
            await self._with_redis_retries("xautoclaim", self._reclaimer.sweep)
            if await self._stop.during(self._settings.claim.interval):
                break

    # --- both modes ---------------------------------------------------------------------------------

    async def _redeliver_own_pending(self) -> None:
        """Deliver again what this consumer had read but not acked before it restarted."""
        total = 0
        for streams in self._groups:
            total += await self._redeliver_from(streams)
        if total:
            logger.info("re-delivering own pending entries", extra={"sg": {"entries": total}})

    async def _redeliver_from(self, streams: tuple[str, ...]) -> int:
        """Our own pending entries of ``streams`` (one slot group in cluster mode) into the tracker; how many."""
        tracker = self._tracker
        cursor = {stream: "0" for stream in streams}
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
        return total

    async def _with_redis_retries(self, operation: str, call: Callable[[], Awaitable[Any]]) -> Any:
        failures = 0
        while True:
            try:
                result = await call()
            except commands.REDIS_FAILURES as exc:
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
            except commands.REDIS_FAILURES as exc:
                failures += 1
                self._health.redis_failed("xgroup_create", incident, exc)
                await asyncio.sleep(backoff(failures, REDIS_RETRY, self._rng))
                continue
            self._health.redis_recovered(incident)
            self._health.groups_ready()
            return

    async def _group_lost(self) -> None:
        """The group (or the stream) was deleted under us: recreate it, or stop, as configured.

        In cluster mode several lanes may find out at once: they recreate the groups one after the other.
        """
        async with self._recreating:
            await self._recreate()

    async def _recreate(self) -> None:
        self._health.groups_lost()
        self._metrics.group_recreated.inc()
        group = self._settings.group
        if group.on_loss == "exit":
            raise GroupLost(f"consumer group {group.group!r} or one of its streams was deleted")
        logger.error("consumer group or stream was deleted; recreating it", extra={"sg": {
            "group": group.group, "start_from": group.start_from}})
        await self._ensure_groups()
