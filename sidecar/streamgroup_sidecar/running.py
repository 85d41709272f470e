"""The sidecar's life: build the units, run them, and stop them in order.

Each unit has one job and says so in its module:

* :mod:`.tracking` (``InFlight``): every entry in hand, its slot, its key, its lease;
* :mod:`.reading` (``Reader``): takes entries from the group into the tracker, never more than
  there are free slots; runs the :mod:`.reclaiming` sweep (``Reclaimer``) between reads;
* :mod:`.working` (``Workers``): deliver what the tracker queues and settle each entry: ack
  (batched by :mod:`.acking`), retry after a back-off, or dead-letter (:mod:`.dead_lettering`);
* :mod:`.leasing` (``LeaseKeeper``): keeps peers' sweeps off the entries in hand;
* :mod:`.measuring` (``GroupStats``): the group's lag and pending count for ``/metrics``;
* :mod:`.health` (``Health``): Redis, group, app and event loop, for ``/readyz``, ``/healthz``
  and the ``ready`` gauge; logs each outage once;
* :mod:`.leaving` (``Handover``): at shutdown, hands pending entries to a live peer and leaves.

An entry leaves the pending list only by an XACK after the app accepted it, or atomically with
its copy into the dead-letter stream. On SIGTERM the sidecar stops taking entries, lets the
deliveries in progress finish, flushes acknowledgements, hands what is still pending to a live
peer and leaves the group only if nothing is pending for it any more, all within
``--shutdown-grace``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry

from streamgroup_core.logs import Incident
from streamgroup_core.redaction import hide_url_passwords
from streamgroup_core.serving import Server, make_app

from . import commands
from .acking import Acker
from .config import Settings
from .dapr import DaprFraming, Subscriptions
from .dead_lettering import DeadLetters, dead_letter_keys
from .delivering import make_deliverer
from .framing import Framing, StreamgroupFraming
from .health import Health
from .leasing import LeaseKeeper
from .leaving import Handover
from .measuring import GroupStats
from .metrics import Metrics
from .reading import Reader
from .reclaiming import Reclaimer
from .stopping import Stop
from .tracking import InFlight
from .working import Workers

logger = logging.getLogger("streamgroup.sidecar")

_HANDOVER_FAILURES: tuple[type[Exception], ...] = (*commands.REDIS_FAILURES, TimeoutError)


class Sidecar:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        registry = registry if registry is not None else CollectorRegistry()
        self.metrics = metrics = Metrics(registry)
        for stream in settings.group.streams:
            metrics.stream(stream)  # every stream's series exist from the start, at zero
        delivery = settings.delivery
        self._redis = redis = commands.connect(settings.redis, socket_timeout=settings.read.block + 10.0,
                                               name=commands.client_name(settings.group.group,
                                                                         settings.group.consumer))
        self._stop = stop = Stop()
        self.health = health = Health(metrics, redis, cluster=settings.redis.mode == "cluster")
        self._tracker = tracker = InFlight(delivery.max_in_flight, settings.group.streams, delivery.ordering_field)
        metrics.in_flight.set_function(lambda: tracker.in_flight)
        self._deliverer = make_deliverer(delivery.http_client, delivery.app_url, delivery.request_timeout,
                                         delivery.max_in_flight)
        self._ack_incident = Incident(logger, "acknowledging entries (XACK)")
        self._acker = Acker(self._send_acks, self._on_ack_error, metrics.acks.inc)
        dead_letters = DeadLetters(settings, redis, health, metrics, stop)
        framing: Framing
        self._subscriptions: Subscriptions | None = None
        if delivery.protocol == "dapr":
            framing = DaprFraming(settings)
            keys = dead_letter_keys(delivery.dead_letter_stream, settings.group.streams, settings.redis.mode)
            self._subscriptions = Subscriptions(settings, health, framing, keys)
        else:
            framing = StreamgroupFraming(settings)
        self._workers = Workers(settings, tracker, self._deliverer, self._acker, dead_letters, health, metrics, stop,
                                framing)
        reclaimer = Reclaimer(settings, redis, tracker, dead_letters, metrics, stop, done=self._acker.holds)
        self._reader = Reader(settings, redis, tracker, reclaimer, health, metrics, stop)
        self._leases = LeaseKeeper(settings, redis, tracker, health, metrics)
        self._stats = GroupStats(settings, redis, health, metrics)
        self._handover = Handover(settings, redis, metrics)
        self._server = Server(make_app(registry, health.readiness, health.liveness, health.problems),
                              settings.server.host, settings.server.port)

    @property
    def health_port(self) -> int | None:
        return self._server.port

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down gracefully; :class:`.reading.GroupLost` ends it early."""
        await self._server.start()
        await self._deliverer.start()
        s = self.settings
        logger.info("sidecar starting", extra={"sg": {
            "redis": hide_url_passwords(s.redis.url), "redis_mode": s.redis.mode, "streams": list(s.group.streams),
            "group": s.group.group, "consumer": s.group.consumer, "app": hide_url_passwords(s.delivery.app_url),
            "health_port": self._server.port, "app_protocol": s.delivery.protocol,
        }})
        if self._subscriptions is not None and not await self._discover(stop):
            await self._shutdown_before_start()
            return
        self._workers.start()
        background = [
            asyncio.create_task(self._workers.watch(), name="workers"),
            asyncio.create_task(self._acker.run(), name="acker"),
            asyncio.create_task(self._stats.run(), name="stats"),
            asyncio.create_task(self._leases.run(), name="lease"),
            asyncio.create_task(self.health.heartbeat(), name="heartbeat"),
        ]
        if self._subscriptions is not None:
            background.append(asyncio.create_task(self._subscriptions.watch(), name="subscriptions"))
        if s.delivery.app_health_url:
            background.append(asyncio.create_task(self.health.probe_app(
                self._deliverer, s.delivery.app_health_url, s.delivery.app_health_interval), name="health"))
        reader = asyncio.create_task(self._reader.run(), name="reader")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait([reader, stopper, *background], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self._shutdown(reader, background, stopper)

    async def _discover(self, stop: asyncio.Event) -> bool:
        """``--app-protocol dapr``: read the app's subscriptions before anything is read; ``False`` if stopped first.

        Raises :class:`~streamgroup_sidecar.dapr.SubscriptionError` (a ConfigError: exit 2) if they cannot be served.
        """
        assert self._subscriptions is not None
        relay = asyncio.create_task(self._relay_stop(stop), name="stop-relay")
        try:
            return await self._subscriptions.discover(self._stop)
        except BaseException:
            await self._shutdown_before_start()
            raise
        finally:
            relay.cancel()

    async def _relay_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stop.set()

    async def _shutdown_before_start(self) -> None:
        """Stop what :meth:`run` started before the workers and the reader: nothing was read, nothing is held."""
        self._stop.set()
        await self._deliverer.close()
        await self._server.stop()
        await self._redis.aclose()
        logger.info("stopped before delivering anything")

    async def _shutdown(self, reader: asyncio.Task[None], background: list[asyncio.Task[Any]],
                        stopper: asyncio.Task[Any]) -> None:
        """Stop in order, within ``--shutdown-grace``: reads, deliveries, acks, then the handover."""
        grace = self.settings.shutdown.grace
        deadline = time.monotonic() + grace
        # Time kept back for flushing acks and handing pending entries over.
        handover_reserve = min(2.0, grace / 4)
        logger.info("shutting down: no new reads; finishing in-flight deliveries")
        self._stop.set()
        self._tracker.close()
        stopper.cancel()
        # The reader notices the stop after its current blocking read (at most --read-block).
        # Cancelling a blocking read is only the fallback: some redis-py releases swallow it.
        await _finish(reader, min(self.settings.read.block + 1.0, max(0.0, deadline - time.monotonic())))
        # Entries not started yet stay pending in Redis; they are handed over below.
        self._tracker.drain()
        # Workers finish the attempt in progress; those waiting to retry stop at once.
        unfinished = await self._workers.stop(max(0.0, deadline - time.monotonic() - handover_reserve))
        flushed = await self._acker.flush(max(0.1, deadline - time.monotonic() - handover_reserve / 2))
        for task in background:
            await _finish(task, 0.0)
        handed: dict[str, int] = {}
        left = False
        if flushed:
            try:
                handed, left = await asyncio.wait_for(self._handover.run(), max(0.1, deadline - time.monotonic()))
            except _HANDOVER_FAILURES as exc:
                logger.warning("could not hand pending entries over; peers will reclaim them after "
                               "--claim-min-idle", extra={"sg": {"error": repr(exc)}})
        await self._deliverer.close()
        await self._server.stop()
        await self._redis.aclose()
        logger.info("stopped", extra={"sg": {"acks_flushed": flushed, "unfinished": unfinished,
                                             "handed_over": handed, "left_group": left}})

    # The acker's link to Redis: its batches go out through the command layer, and its failures
    # count as Redis failures like any other unit's.

    async def _send_acks(self, batch: dict[str, list[str]]) -> None:
        await commands.ack(self._redis, self.settings.group.group, batch)
        self.health.redis_recovered(self._ack_incident)

    def _on_ack_error(self, exc: BaseException) -> None:
        self.health.redis_failed("xack", self._ack_incident, exc)


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
