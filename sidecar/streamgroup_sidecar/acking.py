"""Batched acknowledgements: many XACKs in one round trip, without a timer.

Successful deliveries hand their IDs to :class:`Acker`. One flusher task sends
everything collected so far in one pipeline; while that round trip is on the wire,
new IDs gather for the next one ("group commit"). Under load (the previous round trip
went less than 5 ms ago) a small batch waits a millisecond for company first, so batches
grow instead of one round trip per entry; when acks are rare it goes at once, sparing a
wake-up per entry. If Redis is down the IDs
stay in memory (few: nothing new is read while Redis is down, so at most the entries
that were in flight) and are sent when it comes back; an entry whose ack is lost
stays pending and is delivered again, never dropped. An ID is held once however often it is
acked meanwhile, and :meth:`Acker.holds` tells the reclaimer which of its own pending entries are
done already (their ack is waiting): those are not delivered again when XACK keeps failing
(Redis refusing it to the sidecar's user, say) and XAUTOCLAIM keeps handing them back.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable

AckSender = Callable[[dict[str, list[str]]], Awaitable[None]]


class Acker:
    def __init__(self, send: AckSender, on_error: Callable[[BaseException], None],
                 on_batch: Callable[[], None], retry_delay: float = 0.5, linger: float = 0.001,
                 linger_below: int = 64, busy_window: float = 0.005) -> None:
        """``on_error`` reports (and logs) a failed batch; ``on_batch`` counts a sent one.

        A batch smaller than ``linger_below`` waits ``linger`` seconds for company before it goes,
        but only when the previous one went less than ``busy_window`` seconds earlier (under load).
        """
        self._linger = linger
        self._busy_window = busy_window
        self._linger_below = linger_below
        self._send = send
        self._on_error = on_error
        self._on_batch = on_batch
        self._retry_delay = retry_delay
        self._buffer: defaultdict[str, list[str]] = defaultdict(list)
        # Per stream, sets of IDs rather than one set of (stream, ID): no tuple made and hashed per entry.
        self._held: defaultdict[str, set[str]] = defaultdict(set)
        """The IDs of every ack buffered or on the wire, by stream."""
        self._count = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def ack(self, stream: str, entry_ids: list[str]) -> None:
        """Queue XACKs for ``entry_ids`` of ``stream``: they go with the next round trip."""
        held = self._held[stream]
        new = [entry_id for entry_id in entry_ids if entry_id not in held]
        if not new:
            return
        held.update(new)
        self._buffer[stream].extend(new)
        self._count += len(new)
        self._idle.clear()
        self._wakeup.set()

    def holds(self, stream: str, entry_id: str) -> bool:
        """Whether the ack of ``entry_id`` is waiting to be sent (or on the wire): the entry is done."""
        held = self._held.get(stream)
        return held is not None and entry_id in held

    async def run(self) -> None:
        """Flush for ever; cancel to stop (call :meth:`flush` first to send what is left)."""
        loop = asyncio.get_running_loop()
        last_flush = 0.0
        while True:
            await self._wakeup.wait()
            if self._count < self._linger_below and loop.time() - last_flush < self._busy_window:
                # Under load, a millisecond's wait lets deliveries finishing meanwhile join this round
                # trip: the HTTP client completes requests one loop turn at a time. When acks are rare
                # (the last flush was a while ago) it would only add a wake-up. Acks only, never deliveries.
                await asyncio.sleep(self._linger)
            self._wakeup.clear()
            last_flush = loop.time()
            await self._flush_once_or_wait()

    async def _flush_once_or_wait(self) -> None:
        if not self._count:
            self._idle.set()
            return
        batch, self._buffer, count = self._buffer, defaultdict(list), self._count
        self._count = 0
        try:
            await self._send(dict(batch))
        except Exception as exc:  # Redis down: put the batch back and try again later
            self._on_error(exc)
            for stream, ids in batch.items():
                self._buffer[stream][:0] = ids
            self._count += count
            await asyncio.sleep(self._retry_delay)
            self._wakeup.set()
            return
        for stream, ids in batch.items():
            self._held[stream].difference_update(ids)
        self._on_batch()
        if self._count:
            self._wakeup.set()
        else:
            self._idle.set()

    async def flush(self, timeout: float) -> bool:
        """Wait until everything buffered has been sent; ``False`` if that took longer than ``timeout``."""
        self._wakeup.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
