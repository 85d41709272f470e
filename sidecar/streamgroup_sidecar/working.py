"""The delivery workers: each takes what the tracker queued, posts it to the app, and settles it.

One worker per request in flight (``--max-in-flight``, divided by ``--batch-size`` in batch mode).
A worker takes one entry, or in batch mode up to ``--batch-size`` entries gathered for at most
``--batch-wait``, makes one attempt, and settles each entry by the reply contract
(:mod:`.replies`): accepted entries are acknowledged (the XACKs go in batches, see
:mod:`.acking`), entries that can never succeed are dead-lettered, the others wait out a back-off
in a timer, keeping their slot and their key, and are queued again. A worker never sleeps
through a back-off itself, so one failing entry does not hold up the others.

This is the hot path: per request, one take, one build, one post, one verdict and one
acknowledgement step for all the accepted entries (per-entry CPU is what the sidecar is
measured by, see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import random
import time

from streamgroup_core.ids import entry_ms

from .acking import Acker
from .commands import TRIMMED_DETAIL
from .config import RetrySettings, Settings
from .dead_lettering import DeadLetters
from .delivering import Deliverer
from .entries import Entry
from .framing import Framing, Part
from .health import Health
from .metrics import Metrics
from .replies import Action, Attempt, Verdict, backoff, unreachable
from .stopping import Stop
from .tracking import InFlight

# Back-off while the app refuses connections: short, so deliveries resume soon after it is back.
APP_DOWN_RETRY = RetrySettings(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.2)


class Workers:
    def __init__(self, settings: Settings, tracker: InFlight, deliverer: Deliverer, acker: Acker,
                 dead_letters: DeadLetters, health: Health, metrics: Metrics, stop: Stop, framing: Framing) -> None:
        delivery = settings.delivery
        self._delivery = delivery
        self._retry = settings.retry
        self._tracker = tracker
        self._deliverer = deliverer
        self._acker = acker
        self._dead_letters = dead_letters
        self._health = health
        self._metrics = metrics
        self._stop = stop
        self._framing = framing
        self._count = max(1, delivery.max_in_flight // delivery.batch_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._retrying: set[asyncio.Task[None]] = set()
        self._rng = random.Random()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"worker-{i}") for i in range(self._count)]

    async def watch(self) -> None:
        """Raise what a worker died of; never return otherwise (cancel it).

        A worker ends only at shutdown. One that dies of an unexpected error (a bug) would leave its
        entries held and their leases renewed for ever, so no peer could take them over: the sidecar
        stops instead, and its pending entries are delivered after the restart or by a peer.
        """
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
        await asyncio.Event().wait()  # every worker ended cleanly: the shutdown is under way

    async def stop(self, timeout: float) -> int:
        """Let each worker finish the attempt in progress, within ``timeout``; retry timers end at once.

        Call once the tracker is drained: each worker then takes its stop signal. Returns how many
        workers were still busy at the deadline (they are cancelled; their entries stay pending).
        """
        self._tracker.stop_workers(len(self._tasks))
        _, late = await asyncio.wait(self._tasks, timeout=timeout) if self._tasks else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Timers end their back-off as soon as the stop is set; their entries leave the tracker.
        await asyncio.gather(*self._retrying, return_exceptions=True)
        return len(late)

    async def _work(self) -> None:
        if self._delivery.batch_size > 1:
            while batch := await self._take_batch():
                await self._deliver(batch)
            return
        take = self._tracker.take
        while (entry := await take()) is not None:
            await self._deliver([entry])

    async def _take_batch(self) -> list[Entry]:
        """Up to ``--batch-size`` entries for one request, gathered for at most ``--batch-wait``."""
        tracker = self._tracker
        first = await tracker.take()
        if first is None:
            return []
        batch = [first]
        size = self._delivery.batch_size
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._delivery.batch_wait
        while len(batch) < size:
            try:
                item = tracker.take_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(tracker.take(), remaining)
                except TimeoutError:
                    break
            if item is None:
                tracker.stop_workers(1)  # a worker's stop signal: leave it for the next take
                break
            batch.append(item)
        return batch

    async def _deliver(self, batch: list[Entry]) -> None:
        """One attempt for ``batch`` (one entry, or several in batch mode), then settle each entry."""
        tracker = self._tracker
        ready = []
        for entry in batch:
            if entry.fields is None:
                await self._dead_letters.write(entry, "trimmed", TRIMMED_DETAIL)
                tracker.finish(entry)
            elif tracker.is_lost(entry):
                tracker.finish(entry)  # a peer owns it now
            else:
                ready.append(entry)
        if not ready:
            return
        delivery = self._delivery
        if (delivery.app_watched and not self._health.app_up
                and await self._stop.before(self._health.wait_app_up())):
            for entry in ready:
                tracker.finish(entry)  # not attempted: it stays pending, handed over at shutdown
            return
        parts, settled = self._framing.frame(ready)
        for item in settled:
            await self._settle(item.entry, item.verdict, item.detail, item.counts)
        if len(parts) == 1:
            await self._post(parts[0])
        elif parts:  # a routing protocol split them (several routes): the requests go at once
            await asyncio.gather(*(self._post(part) for part in parts))

    async def _post(self, part: Part) -> None:
        """One attempt for the entries of ``part``, then settle each by its verdict."""
        started = time.perf_counter()
        attempt = await self._deliverer.post(part.request)
        elapsed = time.perf_counter() - started
        self._note_app(attempt)
        result = "ok" if attempt.status is not None and 200 <= attempt.status < 300 else (
            f"status-{attempt.status}" if attempt.status is not None else (attempt.error or "error"))
        entries = part.entries
        verdicts = self._framing.decide(part, attempt)
        self._metrics.stream(entries[0].stream).latency.observe(elapsed)  # one observation per request
        for stream, of_stream in _by_stream(entries):
            self._metrics.stream(stream).attempt(result, len(of_stream))
        accepted = [entry for entry, verdict in zip(entries, verdicts, strict=True) if verdict.action is Action.ACK]
        for stream, of_stream in _by_stream(accepted):
            self._acknowledge(stream, of_stream)
        if len(accepted) < len(entries):
            # Never the entry's fault when the app could not be reached: such an attempt does not count.
            counts = not unreachable(attempt)
            for entry, verdict in zip(entries, verdicts, strict=True):
                if verdict.action is not Action.ACK:
                    await self._settle(entry, verdict, f"last attempt: {result}", counts)

    def _acknowledge(self, stream: str, entries: list[Entry]) -> None:
        """The app accepted ``entries`` of ``stream``: queue their XACKs, count them, let them leave the tracker.

        Even those a peer took over meanwhile are acked: that spares it a duplicate delivery.
        Written for whole batches (one call per request, not per entry): this is the hot path.
        """
        now = time.time()
        ids = [entry.id for entry in entries]
        self._acker.ack(stream, ids)
        tally = self._metrics.stream(stream)
        tally.acked += len(ids)
        observe = tally.age.observe
        for entry_id in ids:
            observe(max(0.0, now - entry_ms(entry_id) / 1000))
        self._tracker.acked(stream, entries)

    async def _settle(self, entry: Entry, verdict: Verdict, detail: str, counts: bool) -> None:
        """An entry the app did not accept: dead-letter it, or retry it after a back-off.

        ``counts``: whether the attempt counts towards ``--max-deliveries`` (not when the app was unreachable:
        then the short back-off of :data:`APP_DOWN_RETRY` applies).
        """
        if verdict.action is Action.DEAD_LETTER:
            await self._dead_letters.write(entry, verdict.reason, detail)
            self._tracker.finish(entry)
            return
        self._metrics.retries.labels(entry.stream, verdict.reason).inc()
        entry.failures += 1
        delay = verdict.delay if verdict.delay is not None else backoff(
            entry.failures, self._retry if counts else APP_DOWN_RETRY, self._rng)
        self._tracker.retry_later(entry)
        task = asyncio.create_task(self._retry_later(entry, delay, counts=counts))
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)

    async def _retry_later(self, entry: Entry, delay: float, counts: bool) -> None:
        """Back off, then queue ``entry`` again; it keeps its slot (and its key) meanwhile."""
        if await self._stop.during(delay):
            self._tracker.finish(entry)  # left pending in Redis for its next owner
            return
        if counts:
            entry.deliveries += 1
        self._tracker.requeue(entry)

    def _note_app(self, attempt: Attempt) -> None:
        if self._delivery.app_health_url:
            return  # the probe decides
        if attempt.error is not None and unreachable(attempt):
            self._health.app_state(False, "TLS handshake failed" if attempt.error == "tls"
                                   else "connection refused or unreachable")
        elif attempt.status is not None and not self._delivery.app_watched:
            # (With --app-protocol dapr the app is back once its subscriptions are read again.)
            self._health.app_state(True)


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
