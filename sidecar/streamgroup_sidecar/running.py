"""The sidecar's life: read from the group, deliver, acknowledge, recover, shut down cleanly.

Tasks and how they share work:

* the **reader** reserves free delivery slots, then takes at most that many entries: first
  this consumer's own pending entries (after a restart), then, in turn, a reclaim sweep
  (XAUTOCLAIM of entries other consumers left idle longer than ``--claim-min-idle``) and
  blocking reads of new entries. It never takes more than it can deliver, so memory is
  bounded by ``--max-in-flight``. While the app is known to be down it takes nothing new;
* **workers** (one per slot) deliver one entry each, retrying with back-off until the app
  accepts it or it must be dead-lettered. With ``--ordering-field``, entries that share a
  key wait for each other (see :mod:`.ordering`);
* the **lease** loop renews, every third of ``--claim-min-idle``, this consumer's ownership
  of every entry it holds (delivering, retrying or waiting), so that a slow delivery is
  never taken over by a peer's sweep; it also stores the attempts made so far in Redis;
* the **acker** sends acknowledgements in batches (see :mod:`.acking`);
* the **stats** loop reads the group's lag and pending count for ``/metrics``;
* with ``--app-health-url``, the **app health** loop decides when the app is up.

Every Redis failure is retried with back-off and logged once per incident. An entry leaves
the pending list only by an XACK after the app accepted it, or atomically with its copy into
the dead-letter stream. On SIGTERM the sidecar stops taking entries, lets in-flight
deliveries finish, flushes acknowledgements, hands what is still pending to a live peer and
leaves the group only if nothing is pending for it any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamgroup_core import groups
from streamgroup_core.deadletters import dead_letter_key
from streamgroup_core.ids import entry_ms
from streamgroup_core.logs import Incident
from streamgroup_core.redaction import hide_url_passwords
from streamgroup_core.serving import Server, make_app

from . import commands
from .acking import Acker
from .config import RetrySettings, Settings
from .delivering import make_deliverer
from .encoding import MissingBodyField, RequestBuilder
from .entries import Entry
from .metrics import GroupSnapshot, Metrics
from .ordering import Sequencer
from .replies import Action, Attempt, Verdict, backoff, dead_letter_kind, decide, decide_batch

logger = logging.getLogger("streamgroup.sidecar")

# Back-off for Redis operations (connection loss, restarts): quick first, then calm.
REDIS_RETRY = RetrySettings(initial=0.1, maximum=5.0, multiplier=2.0, jitter=0.2)
# Back-off while the app refuses connections: short, so deliveries resume soon after it is back.
APP_DOWN_RETRY = RetrySettings(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.2)
LEASE_BATCH = 500
# /healthz fails (and the kubelet restarts the pod) once the event loop has not run for this long.
LOOP_STALL_LIMIT = 30.0


class GroupLost(RuntimeError):
    """The group or stream was deleted and ``--on-group-loss exit`` asks to stop."""


class Sidecar:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        for stream in settings.group.streams:
            self.metrics.stream(stream)  # every stream's series exist from the start, at zero
        group = settings.group
        delivery = settings.delivery
        self._streams = group.streams
        self._names = {s.encode(): s for s in group.streams}
        self._redis = commands.connect(settings.redis, socket_timeout=settings.read.block + 10.0)
        self._builder = RequestBuilder(
            group=group.group, consumer=group.consumer, body=delivery.body, body_field=delivery.body_field,
            content_type=delivery.content_type, cloudevents_type=delivery.cloudevents_type,
        )
        self._static = {s: self._builder.static_headers(s) for s in group.streams}
        self._batch_headers = self._builder.batch_headers()
        self._deliverer = make_deliverer(delivery.http_client, delivery.app_url, delivery.request_timeout,
                                         delivery.max_in_flight)
        self._acker = Acker(self._send_acks, self._on_ack_error, self.metrics.acks.inc)
        self._sequencer = Sequencer(delivery.ordering_field)
        self._queue: asyncio.Queue[Entry | None] = asyncio.Queue()
        self._held: dict[str, dict[str, Entry]] = {s: {} for s in group.streams}
        """Every entry this sidecar holds (queued, waiting for its key, delivering, retrying): leased."""
        self._lost: set[tuple[str, str]] = set()
        self._retrying: set[asyncio.Task[None]] = set()
        self._free = delivery.max_in_flight
        self._reading = 0  # slots reserved by the read in progress, not yet holding entries
        self.metrics.in_flight.set_function(lambda: delivery.max_in_flight - self._free - self._reading)
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._app_up = asyncio.Event()
        self._app_up.set()
        self._server = Server(
            make_app(self.registry, self._readiness, self._liveness),
            settings.server.host, settings.server.port,
        )
        self._rng = random.Random()
        self._beat = time.monotonic()
        """When the event loop last ran the heartbeat task: /healthz is served from another thread."""
        self._dropped_at = 0.0
        self._drop_task: asyncio.Future[None] | None = None
        self._min_idle_ms = int(settings.claim.min_idle * 1000)
        self.redis_ok = False
        self.groups_ok = False
        # Connection loss is one incident whichever task notices it first; other errors
        # (a missing group, a script error) are logged per task.
        self._redis_incident = Incident(logger, "reaching Redis")
        self._read_incident = Incident(logger, "reading from Redis")
        self._stats_incident = Incident(logger, "reading group stats")
        self._lease_incident = Incident(logger, "renewing leases")
        self._ack_incident = Incident(logger, "acknowledging entries (XACK)")
        self._app_incident = Incident(logger, "reaching the app")

    # --- life cycle ------------------------------------------------------------------------

    @property
    def health_port(self) -> int | None:
        return self._server.port

    @property
    def app_ok(self) -> bool:
        return self._app_up.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down gracefully."""
        await self._server.start()
        await self._deliverer.start()
        s = self.settings
        logger.info("sidecar starting", extra={"sg": {
            "redis": hide_url_passwords(s.redis.url), "streams": list(self._streams), "group": s.group.group,
            "consumer": s.group.consumer, "app": s.delivery.app_url, "health_port": self._server.port,
        }})
        # One worker per request in flight: each holds one entry, or one batch in batch mode.
        workers = [asyncio.create_task(self._worker(), name=f"worker-{i}")
                   for i in range(max(1, s.delivery.max_in_flight // s.delivery.batch_size))]
        background = [
            asyncio.create_task(self._acker.run(), name="acker"),
            asyncio.create_task(self._stats_loop(), name="stats"),
            asyncio.create_task(self._lease_loop(), name="lease"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]
        if s.delivery.app_health_url:
            background.append(asyncio.create_task(self._app_health_loop(s.delivery.app_health_url), name="health"))
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
        grace = self.settings.shutdown.grace
        deadline = time.monotonic() + grace
        # Time kept back for flushing acks and handing pending entries over.
        handover_reserve = min(2.0, grace / 4)
        logger.info("shutting down: no new reads; finishing in-flight deliveries")
        self._stopping.set()
        stopper.cancel()
        # The reader notices the stop after its current blocking read (at most --read-block).
        # Cancelling a blocking read is only the fallback: some redis-py releases swallow it.
        await _finish(reader, min(self.settings.read.block + 1.0, max(0.0, deadline - time.monotonic())))
        # Entries not started yet stay pending in Redis; they are handed over below.
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            if entry is not None:
                self._forget(entry)
                self._release()
        for entry in self._sequencer.drain():
            self._forget(entry)
            self._release()
        for _ in workers:
            self._queue.put_nowait(None)  # each worker exits after its current entry
        # Workers finish the attempt in progress; those waiting to retry stop at once.
        remaining = max(0.0, deadline - time.monotonic() - handover_reserve)
        _, late = await asyncio.wait(workers, timeout=remaining) if workers else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        # Entries waiting to be retried give up their wait at once (the stop is set).
        await asyncio.gather(*self._retrying, return_exceptions=True)
        flushed = await self._acker.flush(max(0.1, deadline - time.monotonic() - handover_reserve / 2))
        for task in background:
            await _finish(task, 0.0)
        handed: dict[str, int] = {}
        left = False
        if flushed:
            try:
                handed, left = await asyncio.wait_for(self._hand_over(), max(0.1, deadline - time.monotonic()))
            except (RedisError, TimeoutError) as exc:
                logger.warning("could not hand pending entries over; peers will reclaim them after "
                               "--claim-min-idle", extra={"sg": {"error": repr(exc)}})
        await self._deliverer.close()
        await self._server.stop()
        await self._redis.aclose()
        logger.info("stopped", extra={"sg": {"acks_flushed": flushed, "unfinished": len(late),
                                             "handed_over": handed, "left_group": left}})

    async def _hand_over(self) -> tuple[dict[str, int], bool]:
        """Give our pending entries to a live peer, then leave the group where nothing is pending."""
        group, me = self.settings.group.group, self.settings.group.consumer
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
                self.metrics.handed_over.labels(stream).inc(moved)
            if handed.get(stream):
                logger.info("handed pending entries over", extra={"sg": {
                    "stream": stream, "peer": peers[0], "entries": handed[stream]}})
            left_everywhere &= await groups.leave_group(self._redis, stream, group, me)
        return handed, left_everywhere

    # --- readiness -------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(1.0)

    def _liveness(self) -> dict[str, bool]:
        """Alive while the event loop keeps turning (called from the health server's thread)."""
        return {"event_loop": time.monotonic() - self._beat < LOOP_STALL_LIMIT}

    def _readiness(self) -> dict[str, bool]:
        checks = {"redis": self.redis_ok, "group": self.groups_ok, "app": self.app_ok}
        self.metrics.ready.set(1 if all(checks.values()) else 0)
        return checks

    def _redis_failed(self, operation: str, incident: Incident, exc: BaseException) -> None:
        self.metrics.redis_errors.labels(operation).inc()
        if commands.is_failover(exc):
            # A replica answers at this address now (a failover moved the primary): drop every
            # connection, so that the next ones resolve the name again and reach the new primary.
            self._drop_connections()
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError)) or commands.is_failover(exc):
            self.redis_ok = False
            self._redis_incident.failed(exc)
        else:
            incident.failed(exc)

    def _drop_connections(self) -> None:
        now = time.monotonic()
        if now - self._dropped_at < 1.0:
            return  # once a second at most, whichever task noticed
        self._dropped_at = now
        self.metrics.reconnects.inc()
        # Kept referenced until done (the loop holds only weak references to tasks).
        self._drop_task = asyncio.ensure_future(self._redis.connection_pool.disconnect(inuse_connections=True))

    def _redis_recovered(self, incident: Incident) -> None:
        self.redis_ok = True
        self._redis_incident.recovered()
        incident.recovered()

    def _on_ack_error(self, exc: BaseException) -> None:
        self._redis_failed("xack", self._ack_incident, exc)

    async def _send_acks(self, batch: dict[str, list[str]]) -> None:
        await commands.ack(self._redis, self.settings.group.group, batch)
        self._redis_recovered(self._ack_incident)

    def _app_state(self, up: bool, why: str = "") -> None:
        if up:
            self._app_up.set()
            self._app_incident.recovered()
        else:
            self._app_up.clear()
            self._app_incident.failed(why)

    async def _app_health_loop(self, url: str) -> None:
        while True:
            self._app_state(await self._deliverer.probe(url), f"{url} did not answer 2xx")
            await asyncio.sleep(self.settings.delivery.app_health_interval)

    # --- taking entries --------------------------------------------------------------------

    async def _ensure_groups(self) -> None:
        group = self.settings.group
        failures = 0
        incident = Incident(logger, "creating the consumer group")
        while True:
            try:
                for stream in self._streams:
                    created = await groups.ensure_group(self._redis, stream, group.group, group.start_from)
                    if created:
                        logger.info("created consumer group", extra={"sg": {
                            "stream": stream, "group": group.group, "start_from": group.start_from}})
            except RedisError as exc:
                failures += 1
                self._redis_failed("xgroup_create", incident, exc)
                await asyncio.sleep(backoff(failures, REDIS_RETRY, self._rng))
                continue
            self._redis_recovered(incident)
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

    async def _with_slots(self, take: Callable[[int], Awaitable[list[Entry]]]) -> list[Entry]:
        """Reserve slots, let ``take`` fetch at most that many entries, give back the unused slots."""
        slots = self._reading = await self._reserve()
        try:
            entries = await take(slots)
        except BaseException:
            self._release(slots)
            raise
        finally:
            self._reading = 0
        self._release(slots - len(entries))
        return entries

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
        async def take(slots: int) -> list[Entry]:
            positions, count = self._positions(ids, slots)
            return await commands.read(self._redis, self.settings.group.group, self.settings.group.consumer,
                                        positions, count, block_ms, self._names)
        return await self._with_slots(take)

    def _hold(self, entries: list[Entry]) -> None:
        for entry in entries:
            held = self._held[entry.stream]
            if entry.id in held:
                # Reclaimed while still in our hands (its lease had been lost): keep the one we have.
                self._lost.discard((entry.stream, entry.id))
                self._release()
                continue
            held[entry.id] = entry
            if self._sequencer.admit(entry):
                self._queue.put_nowait(entry)

    def _forget(self, entry: Entry) -> None:
        self._forget_all(entry.stream, [entry.id])

    def _forget_all(self, stream: str, ids: list[str]) -> None:
        held = self._held[stream]
        for entry_id in ids:
            held.pop(entry_id, None)
        if self._lost:
            self._lost.difference_update((stream, entry_id) for entry_id in ids)

    def _holding(self) -> int:
        return sum(len(h) for h in self._held.values())

    async def _gate(self) -> None:
        """While the app is down, take nothing new (entries in hand keep probing it)."""
        while not self._app_up.is_set() and not self._stopping.is_set():
            if not self.settings.delivery.app_health_url and not self._holding():
                return  # nothing in hand to find out whether the app is back: let one entry try
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._app_up.wait(), 0.5)

    async def _read_loop(self) -> None:
        await self._ensure_groups()
        await self._with_redis_retries("xreadgroup", self._redeliver_own_pending)
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        new = {stream: ">" for stream in self._streams}
        while not self._stopping.is_set():
            await self._gate()
            if self._stopping.is_set():
                break
            if loop.time() >= next_sweep:
                await self._with_redis_retries("xautoclaim", self._sweep)
                next_sweep = loop.time() + self.settings.claim.interval
            block_ms = max(1, int(min(self.settings.read.block, next_sweep - loop.time()) * 1000))
            self._hold(await self._with_redis_retries("xreadgroup", functools.partial(self._read, new, block_ms)))

    async def _redeliver_own_pending(self) -> None:
        """Deliver again what this consumer had read but not acked before it restarted."""
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
                await self._load_delivery_counts(stream, got)
            self._hold(entries)
            total += len(entries)
        if total:
            logger.info("re-delivering own pending entries", extra={"sg": {"entries": total}})

    async def _load_delivery_counts(self, stream: str, entries: list[Entry]) -> None:
        """History reads and claims bump Redis' delivery counters: take them from there."""
        group = self.settings.group
        counts = await commands.pending_counts(
            self._redis, stream, group.group, group.consumer, entries[0].id, entries[-1].id, len(entries))
        for entry in entries:
            entry.deliveries = counts.get(entry.id, entry.deliveries)

    async def _sweep(self) -> None:
        """Take over entries that other consumers left idle too long (and record trimmed ones)."""
        group, me = self.settings.group.group, self.settings.group.consumer
        for stream in self._streams:
            cursor = "0-0"
            for _ in range(self.settings.claim.max_pages):
                if self._stopping.is_set():
                    return
                deleted: list[str] = []

                async def take(slots: int, stream: str = stream) -> list[Entry]:
                    nonlocal cursor, deleted
                    cursor, claimed, deleted = await commands.autoclaim(
                        self._redis, stream, group, me, self._min_idle_ms, cursor, slots)
                    return claimed

                claimed = await self._with_slots(take)
                if deleted:
                    await self._record_trimmed(stream, deleted)
                if claimed:
                    await self._load_delivery_counts(stream, claimed)
                    self.metrics.reclaimed.labels(stream).inc(len(claimed))
                    logger.info("reclaimed idle entries", extra={"sg": {"stream": stream, "entries": len(claimed)}})
                    self._hold(claimed)
                if cursor == "0-0":
                    break

    async def _record_trimmed(self, stream: str, ids: list[str]) -> None:
        """XAUTOCLAIM already dropped these from the PEL: write their dead letters, retrying until done."""
        settings = self.settings
        target = dead_letter_key(settings.delivery.dead_letter_stream, stream)
        failures = 0
        while True:
            try:
                await commands.record_trimmed(
                    self._redis, stream, target, settings.group.group, settings.group.consumer, ids)
                break
            except RedisError as exc:
                failures += 1
                self._redis_failed("dead_letter", self._read_incident, exc)
                if await self._stopped_during(backoff(failures, REDIS_RETRY, self._rng)):
                    logger.error("trimmed entries not recorded before shutdown",
                                 extra={"sg": {"stream": stream, "ids": ids}})
                    return
        self.metrics.stream(stream).dead_lettered += len(ids)
        self.metrics.dead_letters.labels(stream, "trimmed").inc(len(ids))
        logger.warning("pending entries were trimmed before delivery; recorded as dead letters",
                       extra={"sg": {"stream": stream, "dead_letter_stream": target, "ids": ids}})

    async def _with_redis_retries(self, operation: str, call: Callable[[], Awaitable[Any]]) -> Any:
        failures = 0
        while True:
            try:
                result = await call()
            except RedisError as exc:
                failures += 1
                self._redis_failed(operation, self._read_incident, exc)
                if commands.is_nogroup(exc):
                    await self._group_lost()
                else:
                    await asyncio.sleep(backoff(failures, REDIS_RETRY, self._rng))
                continue
            self._redis_recovered(self._read_incident)
            return result

    async def _group_lost(self) -> None:
        """The group (or the stream) was deleted under us: recreate it, or stop, as configured."""
        self.groups_ok = False
        self.metrics.group_recreated.inc()
        group = self.settings.group
        if group.on_loss == "exit":
            raise GroupLost(f"consumer group {group.group!r} or one of its streams was deleted")
        logger.error("consumer group or stream was deleted; recreating it", extra={"sg": {
            "group": group.group, "start_from": group.start_from}})
        await self._ensure_groups()

    # --- leases ----------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        group, me = self.settings.group.group, self.settings.group.consumer
        while True:
            await asyncio.sleep(self.settings.claim.min_idle / 3)
            for stream, held in self._held.items():
                snapshot = [(entry_id, entry.deliveries) for entry_id, entry in held.items()]
                for start in range(0, len(snapshot), LEASE_BATCH):
                    try:
                        lost = await commands.refresh_leases(
                            self._redis, stream, group, me, snapshot[start:start + LEASE_BATCH])
                    except RedisError as exc:
                        self._redis_failed("lease", self._lease_incident, exc)
                        break
                    self._redis_recovered(self._lease_incident)
                    for entry_id in lost:
                        if entry_id in held:
                            self._lost.add((stream, entry_id))
                            self.metrics.leases_lost.labels(stream).inc()
                            logger.warning("another consumer took over an entry in delivery; abandoning it",
                                           extra={"sg": {"stream": stream, "id": entry_id}})

    # --- delivering ------------------------------------------------------------------------

    async def _worker(self) -> None:
        while batch := await self._take_batch():
            await self._deliver(batch)

    async def _take_batch(self) -> list[Entry]:
        """The next entries to send in one request: one, or in batch mode up to ``--batch-size``."""
        first = await self._queue.get()
        if first is None:
            return []
        batch = [first]
        size = self.settings.delivery.batch_size
        if size > 1:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.delivery.batch_wait
            while len(batch) < size:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                if item is None:
                    self._queue.put_nowait(None)  # a worker's stop signal: leave it for the next take
                    break
                batch.append(item)
        return batch

    def _done(self, entry: Entry) -> None:
        """``entry`` left this sidecar's hands (acked, dead-lettered, given up): free its slot."""
        self._forget(entry)
        self._release()
        self._next_in_order(entry)

    def _next_in_order(self, entry: Entry) -> None:
        """With ``--ordering-field``: queue the entry that waited for ``entry``'s key, if any."""
        after = self._sequencer.finish(entry)
        if after is not None:
            if self._stopping.is_set():
                self._done(after)  # stays pending in Redis, handed over at shutdown
            else:
                self._queue.put_nowait(after)

    async def _deliver(self, batch: list[Entry]) -> None:
        """One attempt for ``batch`` (one entry, or several in batch mode), then settle each entry."""
        ready = []
        for entry in batch:
            if entry.fields is None:
                await self._dead_letter(entry, "trimmed", "entry was deleted from the stream before delivery")
                self._done(entry)
            elif (entry.stream, entry.id) in self._lost:
                self._done(entry)  # a peer owns it now
            else:
                ready.append(entry)
        if not ready:
            return
        if self.settings.delivery.app_health_url and not self._app_up.is_set():
            await _first(self._app_up.wait(), self._stopping.wait())
            if self._stopping.is_set():
                for entry in ready:
                    self._done(entry)
                return
        first = ready[0]
        try:
            if self.settings.delivery.batch_size > 1:
                request = self._builder.build_batch(ready, self._batch_headers)
            else:
                request = self._builder.build(first, self._static[first.stream])
        except MissingBodyField as exc:
            await self._dead_letter(first, "missing-body-field", str(exc))
            self._done(first)
            return
        started = time.perf_counter()
        attempt = await self._deliverer.post(request)
        elapsed = time.perf_counter() - started
        self._note_app(attempt)
        result = "ok" if attempt.status is not None and 200 <= attempt.status < 300 else (
            f"status-{attempt.status}" if attempt.status is not None else (attempt.error or "error"))
        if self.settings.delivery.batch_size > 1:
            verdicts = decide_batch(attempt, ready, self.settings.delivery, self.settings.retry)
        else:
            verdicts = [decide(attempt, first.deliveries, self.settings.delivery, self.settings.retry)]
        self.metrics.stream(first.stream).latency.observe(elapsed)  # one observation per request
        for stream, entries in _by_stream(ready):
            self.metrics.stream(stream).attempt(result, len(entries))
        accepted = [entry for entry, verdict in zip(ready, verdicts, strict=True) if verdict.action is Action.ACK]
        for stream, entries in _by_stream(accepted):
            self._acknowledge(stream, entries)
        if len(accepted) < len(ready):
            for entry, verdict in zip(ready, verdicts, strict=True):
                if verdict.action is not Action.ACK:
                    await self._settle(entry, verdict, attempt, result)

    def _acknowledge(self, stream: str, entries: list[Entry]) -> None:
        """The app accepted ``entries`` of ``stream``: queue their XACKs, count them, free their slots.

        Even those a peer took over meanwhile are acked: that spares it a duplicate delivery.
        Written for whole batches (one call per request, not per entry): this is the hot path.
        """
        now = time.time()
        ids = [entry.id for entry in entries]
        self._acker.ack(stream, ids)
        tally = self.metrics.stream(stream)
        tally.acked += len(ids)
        observe = tally.age.observe
        for entry_id in ids:
            observe(max(0.0, now - entry_ms(entry_id) / 1000))
        self._forget_all(stream, ids)
        self._release(len(ids))
        if self._sequencer.ordered:
            for entry in entries:
                self._next_in_order(entry)

    async def _settle(self, entry: Entry, verdict: Verdict, attempt: Attempt, result: str) -> None:
        """An entry the app did not accept: dead-letter it, or retry it after a back-off."""
        stream = entry.stream
        if verdict.action is Action.DEAD_LETTER:
            await self._dead_letter(entry, verdict.reason, f"last attempt: {result}")
            self._done(entry)
            return
        self.metrics.retries.labels(stream, verdict.reason).inc()
        entry.failures += 1
        unreachable = attempt.error == "connection"
        delay = verdict.delay if verdict.delay is not None else backoff(
            entry.failures, APP_DOWN_RETRY if unreachable else self.settings.retry, self._rng)
        task = asyncio.create_task(self._retry_later(entry, delay, counts=not unreachable))
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)

    async def _retry_later(self, entry: Entry, delay: float, counts: bool) -> None:
        """Back off, then queue ``entry`` again; it keeps its slot (and its key) meanwhile."""
        if await self._stopped_during(delay):
            self._done(entry)  # left pending in Redis for the next owner
            return
        if counts:
            entry.deliveries += 1
        self._queue.put_nowait(entry)

    def _note_app(self, attempt: Attempt) -> None:
        if self.settings.delivery.app_health_url:
            return  # the health loop decides
        if attempt.error == "connection":
            self._app_state(False, "connection refused or unreachable")
        elif attempt.status is not None:
            self._app_state(True)

    async def _stopped_during(self, delay: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        return self._stopping.is_set()

    async def _dead_letter(self, entry: Entry, reason: str, detail: str) -> None:
        group = self.settings.group
        target = dead_letter_key(self.settings.delivery.dead_letter_stream, entry.stream)
        failures = 0
        incident = Incident(logger, "writing a dead letter")
        while True:
            try:
                moved = await commands.dead_letter(
                    self._redis, entry, target, group.group, group.consumer, reason, detail)
            except RedisError as exc:
                failures += 1
                self._redis_failed("dead_letter", incident, exc)
                if await self._stopped_during(backoff(failures, REDIS_RETRY, self._rng)):
                    return
                continue
            self._redis_recovered(incident)
            break
        self.metrics.stream(entry.stream).dead_lettered += 1
        self.metrics.dead_letters.labels(entry.stream, dead_letter_kind(reason)).inc()
        logger.warning("entry dead-lettered", extra={"sg": {
            "stream": entry.stream, "id": entry.id, "dead_letter_stream": target, "reason": reason,
            "detail": detail, "deliveries": entry.deliveries, "was_pending": moved}})

    # --- stats -----------------------------------------------------------------------------

    async def _stats_loop(self) -> None:
        group = self.settings.group.group
        while True:
            try:
                for stream in self._streams:
                    info = await groups.group_info(self._redis, stream, group)
                    if info is None:
                        self.metrics.groups.snapshots.pop(stream, None)
                        continue
                    lag = info.get("lag")
                    self.metrics.groups.snapshots[stream] = GroupSnapshot(
                        stream=stream, group=group,
                        lag=int(lag) if isinstance(lag, int) and lag >= 0 else None,
                        pending=int(info.get("pending") or 0),
                        oldest_pending_age_seconds=await groups.oldest_pending_age(
                            self._redis, stream, group),
                    )
                # Only its own incident: reads succeed on a replica too, so they prove nothing about writes.
                self._stats_incident.recovered()
            except RedisError as exc:
                self._redis_failed("stats", self._stats_incident, exc)
            await asyncio.sleep(self.settings.server.stats_interval)


def _by_stream(entries: list[Entry]) -> list[tuple[str, list[Entry]]]:
    """``entries`` grouped by stream, in order of first appearance (one group in the usual case)."""
    if not entries:
        return []
    first = entries[0].stream
    if all(entry.stream == first for entry in entries):
        return [(first, entries)]
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.stream, []).append(entry)
    return list(groups.items())


async def _first(*waits: Awaitable[Any]) -> None:
    """Wait until the first of ``waits`` completes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _finish(task: asyncio.Task[Any], wait: float) -> None:
    """Let ``task`` end by itself within ``wait`` seconds, else cancel it; never hang on it."""
    done, _ = await asyncio.wait([task], timeout=wait) if wait > 0 else (set(), set())
    # Cancel again until it ends: on Python 3.11 ``asyncio.wait_for`` (which redis-py uses to send
    # commands) drops a cancellation that arrives as the awaited operation completes.
    for _ in range(20):
        if done:
            break
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=0.1)
    if not done:
        logger.error("a task ignored cancellation; leaving it behind", extra={"sg": {"task": task.get_name()}})
    elif not task.cancelled() and task.exception() is not None:
        logger.error("task failed during shutdown", exc_info=task.exception(),
                     extra={"sg": {"task": task.get_name()}})
