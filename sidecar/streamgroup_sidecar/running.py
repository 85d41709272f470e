"""The sidecar's life: read from the group, deliver, acknowledge, report, shut down cleanly.

Tasks and how they share work:

* the **reader** reserves free delivery slots, then reads at most that many entries
  (first this consumer's own pending entries, after a restart, then new ones with a
  blocking XREADGROUP ``>``) and queues them. It never reads more than it can deliver,
  so memory is bounded by ``max-in-flight`` and nothing waits in a local buffer long
  enough to look abandoned to the rest of the group;
* **workers** (one per slot) deliver one entry each, retrying with back-off until the
  app accepts it or it must be dead-lettered, then free their slot;
* the **acker** sends acknowledgements in batches (see :mod:`.acking`);
* the **stats** loop reads the group's lag and pending count for ``/metrics``.

Every Redis failure is retried with back-off and logged once per incident. An entry
leaves the pending list only by an XACK after the app accepted it, or atomically
with its copy into the dead-letter stream: never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from . import consuming
from .acking import Acker
from .config import RetrySettings, Settings, redacted_url
from .delivering import Deliverer
from .encoding import Entry, MissingBodyField, RequestBuilder
from .ids import id_time
from .logs import Incident
from .metrics import GroupSnapshot, Metrics
from .replies import Action, Attempt, backoff, decide
from .serving import Server, make_app

logger = logging.getLogger("streamgroup.sidecar")

# Back-off for Redis operations (connection loss, restarts): quick first, then calm.
REDIS_RETRY = RetrySettings(initial=0.1, maximum=5.0, multiplier=2.0, jitter=0.2)


class Sidecar:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        group = settings.group
        delivery = settings.delivery
        self._streams = group.streams
        self._names = {s.encode(): s for s in group.streams}
        self._redis = consuming.connect(settings.redis, socket_timeout=settings.read.block + 10.0)
        self._builder = RequestBuilder(
            group=group.group, consumer=group.consumer, body=delivery.body, body_field=delivery.body_field,
            content_type=delivery.content_type, cloudevents_type=delivery.cloudevents_type,
        )
        self._static = {s: self._builder.static_headers(s) for s in group.streams}
        self._deliverer = Deliverer(delivery.app_url, delivery.request_timeout, delivery.max_in_flight)
        self._acker = Acker(self._send_acks, self._on_ack_error, self.metrics.acks.inc)
        self._queue: asyncio.Queue[Entry | None] = asyncio.Queue()
        self._free = delivery.max_in_flight
        self._reading = 0  # slots reserved by the read in progress, not yet holding entries
        self.metrics.in_flight.set_function(lambda: delivery.max_in_flight - self._free - self._reading)
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._server = Server(
            make_app(self.registry, self._readiness, lambda: {"alive": True}),
            settings.server.host, settings.server.port,
        )
        self._rng = random.Random()
        self.redis_ok = False
        self.groups_ok = False
        self.app_ok = True
        self._read_incident = Incident(logger, "reading from Redis")
        self._stats_incident = Incident(logger, "reading group stats")
        self._app_incident = Incident(logger, "reaching the app")

    # --- life cycle ------------------------------------------------------------------------

    @property
    def health_port(self) -> int | None:
        return self._server.port

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down gracefully."""
        await self._server.start()
        await self._deliverer.start()
        s = self.settings
        logger.info("sidecar starting", extra={"sg": {
            "redis": redacted_url(s.redis.url), "streams": list(self._streams), "group": s.group.group,
            "consumer": s.group.consumer, "app": s.delivery.app_url, "health_port": self._server.port,
        }})
        workers = [asyncio.create_task(self._worker(), name=f"worker-{i}")
                   for i in range(s.delivery.max_in_flight)]
        background = [
            asyncio.create_task(self._acker.run(), name="acker"),
            asyncio.create_task(self._stats_loop(), name="stats"),
        ]
        reader = asyncio.create_task(self._read_loop(), name="reader")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait([reader, stopper, *background], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self._shutdown(reader, workers, background, stopper)

    async def _shutdown(
        self, reader: asyncio.Task[None], workers: list[asyncio.Task[None]],
        background: list[asyncio.Task[Any]], stopper: asyncio.Task[Any],
    ) -> None:
        deadline = time.monotonic() + self.settings.shutdown.grace
        logger.info("shutting down: no new reads; finishing in-flight deliveries")
        self._stopping.set()
        stopper.cancel()
        # The reader notices the stop after its current blocking read (at most --read-block).
        # Cancelling a blocking read is only the fallback: some redis-py releases swallow it.
        await _finish(reader, self.settings.read.block + 1.0)
        # Entries queued but not started stay pending in Redis for the next owner.
        while not self._queue.empty():
            self._queue.get_nowait()
            self._release()
        for _ in workers:
            self._queue.put_nowait(None)  # each worker exits after its current entry
        # Workers finish the attempt in progress; those waiting to retry stop at once.
        remaining = max(0.0, deadline - time.monotonic() - 1.0)
        _, late = await asyncio.wait(workers, timeout=remaining) if workers else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        flushed = await self._acker.flush(max(0.1, deadline - time.monotonic()))
        for task in background:
            await _finish(task, 0.0)
        await self._deliverer.close()
        await self._server.stop()
        await self._redis.aclose()
        logger.info("stopped", extra={"sg": {"acks_flushed": flushed, "unfinished": len(late)}})

    # --- readiness -------------------------------------------------------------------------

    def _readiness(self) -> dict[str, bool]:
        checks = {"redis": self.redis_ok, "group": self.groups_ok, "app": self.app_ok}
        self.metrics.ready.set(1 if all(checks.values()) else 0)
        return checks

    def _redis_failed(self, operation: str, incident: Incident, exc: BaseException) -> None:
        self.metrics.redis_errors.labels(operation).inc()
        if not consuming.is_nogroup(exc):
            self.redis_ok = False
        incident.failed(exc)

    def _on_ack_error(self, exc: BaseException) -> None:
        self.metrics.redis_errors.labels("xack").inc()
        self.redis_ok = False

    async def _send_acks(self, batch: dict[str, list[str]]) -> None:
        await consuming.ack(self._redis, self.settings.group.group, batch)
        self.redis_ok = True

    # --- reading ---------------------------------------------------------------------------

    async def _ensure_groups(self) -> None:
        group = self.settings.group
        failures = 0
        incident = Incident(logger, "creating the consumer group")
        while True:
            try:
                for stream in self._streams:
                    created = await consuming.ensure_group(self._redis, stream, group.group, group.start_from)
                    if created:
                        logger.info("created consumer group", extra={"sg": {
                            "stream": stream, "group": group.group, "start_from": group.start_from}})
            except RedisError as exc:
                failures += 1
                self._redis_failed("xgroup_create", incident, exc)
                await asyncio.sleep(backoff(failures, REDIS_RETRY, self._rng))
                continue
            incident.recovered()
            self.redis_ok = True
            self.groups_ok = True
            return

    def _release(self, n: int = 1) -> None:
        self._free += n
        self._slot_freed.set()

    async def _reserve(self) -> int:
        """Wait for free slots (a quarter of them, so reads stay batched under load) and take them all."""
        size = self.settings.delivery.max_in_flight
        low_water = min(size, max(1, size // 4))
        while self._free < low_water:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        taken, self._free = self._free, 0
        return taken

    def _positions(self, ids: dict[str, str], slots: int) -> tuple[dict[str, str], int]:
        """Positions and per-stream COUNT such that the reply can hold at most ``slots`` entries."""
        per_stream = slots // len(ids)
        if per_stream:
            return ids, per_stream
        # Fewer slots than streams: read some streams now, rotating so none starves.
        names = list(ids)
        start = self._rng.randrange(len(names))
        chosen = (names[start:] + names[:start])[:slots]
        return {name: ids[name] for name in chosen}, 1

    async def _read(self, ids: dict[str, str], block_ms: int | None) -> list[Entry]:
        slots = self._reading = await self._reserve()
        try:
            positions, count = self._positions(ids, slots)
            entries = await consuming.read(
                self._redis, self.settings.group.group, self.settings.group.consumer,
                positions, count, block_ms, self._names,
            )
        except BaseException:
            self._release(slots)
            raise
        finally:
            self._reading = 0
        self._release(slots - len(entries))
        return entries

    async def _read_loop(self) -> None:
        await self._ensure_groups()
        await self._with_redis_retries("xreadgroup", self._redeliver_own_pending)
        block_ms = int(self.settings.read.block * 1000)
        new = {stream: ">" for stream in self._streams}
        while not self._stopping.is_set():
            entries = await self._with_redis_retries("xreadgroup", lambda: self._read(new, block_ms))
            for entry in entries:
                self._queue.put_nowait(entry)

    async def _redeliver_own_pending(self) -> None:
        """Deliver again what this consumer had read but not acked before it restarted."""
        group = self.settings.group
        cursor = {stream: "0" for stream in self._streams}
        total = 0
        while cursor and not self._stopping.is_set():
            entries = await self._read(cursor, None)
            by_stream: dict[str, list[Entry]] = {}
            for entry in entries:
                by_stream.setdefault(entry.stream, []).append(entry)
            for stream in list(cursor):
                got = by_stream.get(stream)
                if not got:
                    del cursor[stream]
                    continue
                cursor[stream] = got[-1].id
                # The history read bumped Redis' delivery counters; use them.
                counts = await consuming.pending_counts(
                    self._redis, stream, group.group, group.consumer, got[0].id, got[-1].id, len(got))
                for entry in got:
                    entry.deliveries = counts.get(entry.id, entry.deliveries)
            for entry in entries:
                self._queue.put_nowait(entry)
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
                self._redis_failed(operation, self._read_incident, exc)
                if consuming.is_nogroup(exc):
                    await self._recreate_group()
                else:
                    await asyncio.sleep(backoff(failures, REDIS_RETRY, self._rng))
                continue
            self._read_incident.recovered()
            self.redis_ok = True
            return result

    async def _recreate_group(self) -> None:
        """The group (or the stream) was deleted under us: recreate it at the configured start."""
        self.groups_ok = False
        logger.error("consumer group or stream was deleted; recreating it", extra={"sg": {
            "group": self.settings.group.group, "start_from": self.settings.group.start_from}})
        await self._ensure_groups()

    # --- delivering ------------------------------------------------------------------------

    async def _worker(self) -> None:
        while (entry := await self._queue.get()) is not None:
            try:
                await self._deliver(entry)
            finally:
                self._release()

    async def _deliver(self, entry: Entry) -> None:
        if entry.fields is None:
            await self._dead_letter(entry, "trimmed", "entry was deleted from the stream before delivery")
            return
        stream = entry.stream
        failures = 0
        while True:
            try:
                request = self._builder.build(entry, self._static[stream])
            except MissingBodyField as exc:
                await self._dead_letter(entry, "missing-body-field", str(exc))
                return
            started = time.perf_counter()
            attempt = await self._deliverer.post(request)
            self.metrics.latency.labels(stream).observe(time.perf_counter() - started)
            self._note_app(attempt)
            verdict = decide(attempt, entry.deliveries, self.settings.delivery, self.settings.retry)
            result = "ok" if attempt.status is not None and 200 <= attempt.status < 300 else (
                f"status-{attempt.status}" if attempt.status is not None else (attempt.error or "error"))
            self.metrics.attempts.labels(stream, result).inc()
            if verdict.action is Action.ACK:
                self._acker.ack(stream, entry.id)
                self.metrics.entries.labels(stream, "acked").inc()
                self.metrics.end_to_end.labels(stream).observe(
                    max(0.0, time.time() - id_time(entry.id).timestamp()))
                return
            if verdict.action is Action.DEAD_LETTER:
                await self._dead_letter(entry, verdict.reason, f"last attempt: {result}")
                return
            self.metrics.retries.labels(stream, verdict.reason).inc()
            failures += 1
            delay = verdict.delay if verdict.delay is not None else backoff(
                failures, self.settings.retry, self._rng)
            if await self._stopped_during(delay):
                return  # left pending in Redis for the next owner
            entry.deliveries += 1

    def _note_app(self, attempt: Attempt) -> None:
        if attempt.error == "connection":
            self.app_ok = False
            self._app_incident.failed("connection refused or unreachable")
        elif attempt.status is not None:
            self.app_ok = True
            self._app_incident.recovered()

    async def _stopped_during(self, delay: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        return self._stopping.is_set()

    async def _dead_letter(self, entry: Entry, reason: str, detail: str) -> None:
        group = self.settings.group
        target = self.settings.delivery.dead_letter_stream.format(stream=entry.stream)
        failures = 0
        incident = Incident(logger, "writing a dead letter")
        while True:
            try:
                moved = await consuming.dead_letter(
                    self._redis, entry, target, group.group, group.consumer, reason, detail)
            except RedisError as exc:
                failures += 1
                self._redis_failed("dead_letter", incident, exc)
                if await self._stopped_during(backoff(failures, REDIS_RETRY, self._rng)):
                    return
                continue
            incident.recovered()
            break
        self.metrics.entries.labels(entry.stream, "dead_lettered").inc()
        logger.warning("entry dead-lettered", extra={"sg": {
            "stream": entry.stream, "id": entry.id, "dead_letter_stream": target, "reason": reason,
            "detail": detail, "deliveries": entry.deliveries, "was_pending": moved}})

    # --- stats -----------------------------------------------------------------------------

    async def _stats_loop(self) -> None:
        group = self.settings.group.group
        while True:
            try:
                for stream in self._streams:
                    info = await consuming.group_info(self._redis, stream, group)
                    if info is None:
                        self.metrics.groups.snapshots.pop(stream, None)
                        continue
                    lag = info.get("lag")
                    self.metrics.groups.snapshots[stream] = GroupSnapshot(
                        stream=stream, group=group,
                        lag=int(lag) if isinstance(lag, int) and lag >= 0 else None,
                        pending=int(info.get("pending") or 0),
                        oldest_pending_age_seconds=await consuming.oldest_pending_age(
                            self._redis, stream, group),
                    )
                self._stats_incident.recovered()
            except RedisError as exc:
                self._redis_failed("stats", self._stats_incident, exc)
            await asyncio.sleep(self.settings.server.stats_interval)


async def _finish(task: asyncio.Task[Any], wait: float) -> None:
    """Let ``task`` end by itself within ``wait`` seconds, else cancel it; never hang on it."""
    done, _ = await asyncio.wait([task], timeout=wait) if wait > 0 else (set(), set())
    if not done:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2.0)
    if not done:
        logger.error("a task ignored cancellation; leaving it behind", extra={"sg": {"task": task.get_name()}})
    elif not task.cancelled() and task.exception() is not None:
        logger.error("task failed during shutdown", exc_info=task.exception(),
                     extra={"sg": {"task": task.get_name()}})
