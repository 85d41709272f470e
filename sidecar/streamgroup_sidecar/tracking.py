"""The in-flight tracker: every entry this sidecar holds, the slots they take, and the order of their keys.

Why a unit of its own: an entry in hand can be waiting for its key, queued for a worker, being
delivered or waiting to retry, and its lease can be lost meanwhile. A slot released twice lets the
sidecar hold more than ``--max-in-flight`` entries; a slot never released stalls it; a key released
twice breaks ``--ordering-field``'s promise. So every change goes through one named transition of
:class:`InFlight`, the counts change nowhere else, and :meth:`InFlight.check` states the invariants
that the tests verify after every step.

The transitions, each the only place where its counts change::

    reserve      free -> reserved                       a read is about to ask Redis (all free
                                                        slots, or at most as many as it asks)
    unreserve    reserved -> free                       the read failed
    hold         reserved -> queued, or waiting for     what the read returned; the slots
                 its key                                it did not fill are free again
    take         queued -> delivering                   a worker took it
    acked        delivering -> gone                     slot freed, key passed on (per request)
    finish       delivering or retrying -> gone         dead-lettered, taken over, abandoned
    retry_later  delivering -> retrying                 keeps its slot and its key
    requeue      retrying -> queued
    lose_lease   marks a held entry lost                its worker finishes it, undelivered
    close        from now on an entry that would be queued again leaves instead
    drain        queued, waiting -> gone                shutdown: they stay pending in Redis

Slots: ``free + reserved + held == max_in_flight``. A read reserves every free slot (in cluster mode
an idle slot group's blocking read reserves one, see :mod:`.reading`), then holds at most that many
entries and gives the rest back, so memory is bounded by ``--max-in-flight``. An
entry keeps its slot, and its key, until it leaves: while it waits to retry as well.

Per-key order (``--ordering-field``): the field's value, per stream, is the entry's key. One entry
of a key at a time is *active* (queued, delivering or retrying); the others wait, in the order they
were held, and the next one is queued when the active one leaves. Entries without the field are
never held back.

Pure bookkeeping: no I/O, no clock. Workers wait for queued entries and the reader for free slots
on asyncio primitives, which is all that needs an event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from .entries import Entry

Key = tuple[str, bytes]
"""(stream, value of the ordering field)."""


@dataclass(frozen=True)
class Counts:
    """Where the slots and the held entries are, at one moment."""

    free: int
    reserved: int
    """Slots taken by a read in progress, not holding entries yet."""
    held: int
    waiting: int
    """Held entries waiting for their key."""
    queued: int
    delivering: int
    retrying: int
    lost: int
    """Held entries whose lease a peer took (counted in their state above too)."""


class InFlight:
    def __init__(self, max_in_flight: int, streams: Iterable[str], ordering_field: str | None = None) -> None:
        self.size = max_in_flight
        self._low_water = min(max_in_flight, max(1, max_in_flight // 4))
        self._free = max_in_flight
        self._reserved = 0
        self._held: dict[str, dict[str, Entry]] = {stream: {} for stream in streams}
        self._lost: set[tuple[str, str]] = set()
        self._field = ordering_field.encode() if ordering_field else None
        self._waiting: dict[Key, deque[Entry]] = {}
        """Busy keys (one of their entries is active), each with the entries waiting behind it."""
        self._ready: asyncio.Queue[Entry | None] = asyncio.Queue()
        """Queued entries, and ``None`` as a worker's stop signal."""
        self._queued = 0
        self._stops = 0
        self._delivering = 0
        self._retrying: dict[tuple[str, str], Entry] = {}
        self._closed = False
        self._freed = asyncio.Event()

    # --- what the gauge, the reader's gate and the lease keeper read --------------------------

    @property
    def in_flight(self) -> int:
        """Entries held (plain integers: the metrics thread reads this while the event loop runs)."""
        return self.size - self._free - self._reserved

    @property
    def held(self) -> int:
        return sum(len(held) for held in self._held.values())

    def leases(self, stream: str) -> list[tuple[str, int]]:
        """(ID, attempts so far) of every entry held from ``stream``: the leases to renew."""
        return [(entry_id, entry.deliveries) for entry_id, entry in self._held[stream].items()]

    def is_lost(self, entry: Entry) -> bool:
        """A peer took ``entry`` over: it must not be delivered (again) by this sidecar."""
        return bool(self._lost) and (entry.stream, entry.id) in self._lost

    def counts(self) -> Counts:
        return Counts(free=self._free, reserved=self._reserved, held=self.held,
                      waiting=sum(len(queue) for queue in self._waiting.values()), queued=self._queued,
                      delivering=self._delivering, retrying=len(self._retrying), lost=len(self._lost))

    # --- slots: the reader ---------------------------------------------------------------------

    async def reserve(self, most: int | None = None) -> int:
        """Wait until a quarter of the slots are free (so reads stay batched under load), then reserve
        them all, or at most ``most``."""
        while self._free < self._low_water:
            self._freed.clear()
            await self._freed.wait()
        return self.reserve_free(most)

    def reserve_free(self, most: int | None = None) -> int:
        """Reserve every free slot (at most ``most``) for a read, at once; how many (maybe none)."""
        slots = self._free if most is None or most >= self._free else most
        self._free -= slots
        self._reserved += slots
        return slots

    def unreserve(self, slots: int) -> None:
        """The read that reserved ``slots`` failed: they are free again."""
        self._reserved -= slots
        self._release(slots)

    def hold(self, entries: list[Entry], slots: int) -> None:
        """The read that reserved ``slots`` returned ``entries`` (at most that many): each takes a slot.

        Each is queued, or waits for its key. The slots left over are free again. An entry already
        held (our own sweep reclaimed it after its lease was lost) is not held twice: the one in
        hand stays, its lease is ours again, and the read's slot is freed.
        """
        if len(entries) > slots:
            raise ValueError(f"{len(entries)} entries read into {slots} slots")
        self._reserved -= slots
        unused = slots
        ordered = self._field is not None
        for entry in entries:
            held = self._held[entry.stream]
            if entry.id in held:
                self._lost.discard((entry.stream, entry.id))
                continue
            held[entry.id] = entry
            unused -= 1
            if not ordered or self._admit(entry):
                self._ready.put_nowait(entry)
                self._queued += 1
        if unused:
            self._release(unused)

    # --- the workers ---------------------------------------------------------------------------

    async def take(self) -> Entry | None:
        """The next queued entry, now being delivered; ``None`` tells the worker to stop."""
        return self._taken(await self._ready.get())

    def take_nowait(self) -> Entry | None:
        """Like :meth:`take`, without waiting: :class:`asyncio.QueueEmpty` if nothing is queued."""
        return self._taken(self._ready.get_nowait())

    def _taken(self, entry: Entry | None) -> Entry | None:
        if entry is None:
            self._stops -= 1
        else:
            self._queued -= 1
            self._delivering += 1
        return entry

    def stop_workers(self, count: int) -> None:
        """Queue ``count`` stop signals (behind what is queued): each worker that takes one stops."""
        for _ in range(count):
            self._ready.put_nowait(None)
        self._stops += count

    def acked(self, stream: str, entries: list[Entry]) -> None:
        """The app accepted ``entries`` of ``stream``, being delivered: they leave, with their slots and keys.

        Written for a whole request's entries at once: this is the hot path.
        """
        if self._lost or self._field is not None:
            gone = sum(self._leave(entry) for entry in entries)
        else:
            held = self._held[stream]
            gone = 0
            for entry in entries:
                if held.pop(entry.id, None) is not None:
                    gone += 1
            self._release(gone)
        self._delivering -= gone

    def finish(self, entry: Entry) -> None:
        """``entry`` leaves without an ack of ours: dead-lettered, taken over by a peer, or abandoned at
        shutdown (it stays pending in Redis for its next owner). From delivering or retrying."""
        retried = self._retrying.pop((entry.stream, entry.id), None) if self._retrying else None
        if self._leave(entry) and retried is None:
            self._delivering -= 1

    def retry_later(self, entry: Entry) -> None:
        """The attempt failed; ``entry`` waits out a back-off, keeping its slot and its key."""
        self._delivering -= 1
        self._retrying[(entry.stream, entry.id)] = entry

    def requeue(self, entry: Entry) -> None:
        """The back-off is over: queue ``entry`` again (once closed, it leaves instead)."""
        del self._retrying[(entry.stream, entry.id)]
        if self._closed:
            self._leave(entry)
        else:
            self._ready.put_nowait(entry)
            self._queued += 1

    # --- the lease keeper ------------------------------------------------------------------------

    def lose_lease(self, stream: str, entry_id: str) -> bool:
        """A peer took ``entry_id`` over; ``False`` if it is not held (it left meanwhile)."""
        if entry_id not in self._held[stream]:
            return False
        self._lost.add((stream, entry_id))
        return True

    # --- shutdown --------------------------------------------------------------------------------

    def close(self) -> None:
        """No entry is queued any more: one whose key frees up, or whose back-off ends, leaves instead.

        Reads still in progress may hold entries; :meth:`drain` sends away whatever is queued.
        """
        self._closed = True

    def drain(self) -> list[Entry]:
        """Closes, and every queued and waiting entry leaves: not started, they stay pending in Redis.

        Entries being delivered or retried stay until their worker or timer finishes them, and so do
        the stop signals already queued. Returns the entries that left.
        """
        self._closed = True
        left: list[Entry] = []
        for queue in self._waiting.values():
            left.extend(queue)
            queue.clear()  # the key stays busy until its active entry leaves
        for waiting in left:
            self._forget(waiting)
        while not self._ready.empty():
            queued = self._ready.get_nowait()
            if queued is not None:
                self._queued -= 1
                self._leave(queued)
                left.append(queued)
        for _ in range(self._stops):
            self._ready.put_nowait(None)
        return left

    # --- the invariants --------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`AssertionError` naming every broken invariant (tests call this after each step).

        * no count is negative;
        * ``free + reserved + held == max_in_flight``: each held entry has exactly one slot;
        * ``held == waiting + queued + delivering + retrying``: each held entry is in one state;
        * the ready queue holds exactly the queued entries and the stop signals not yet taken;
        * lost, retrying and waiting entries are held (the very objects, for the last two);
        * with an ordering field, at most one entry per key is active, a busy key has one, and an
          active entry's key is busy; without one, no key is ever busy.
        """
        counts = self.counts()
        problems = []
        if min(counts.free, counts.reserved, counts.queued, counts.delivering) < 0:
            problems.append(f"a negative count: {counts}")
        if counts.free + counts.reserved + counts.held != self.size:
            problems.append(f"free + reserved + held != {self.size}: {counts}")
        if counts.held != counts.waiting + counts.queued + counts.delivering + counts.retrying:
            problems.append(f"held != waiting + queued + delivering + retrying: {counts}")
        if self._stops < 0 or counts.queued + self._stops != self._ready.qsize():
            problems.append(f"queued + {self._stops} stop signals != {self._ready.qsize()} in the ready queue: "
                            f"{counts}")
        held = {(stream, entry_id): entry for stream, by_id in self._held.items() for entry_id, entry in by_id.items()}
        if not self._lost <= held.keys():
            problems.append(f"lost but not held: {sorted(self._lost - held.keys())}")
        for place, entries in (("retrying", list(self._retrying.values())),
                               ("waiting", [e for q in self._waiting.values() for e in q])):
            strays = [e for e in entries if held.get((e.stream, e.id)) is not e]
            if strays:
                problems.append(f"{place} but not held: {strays}")
        if self._field is not None:
            problems += self._order_problems(held.values())
        elif self._waiting:
            problems.append(f"keys without an ordering field: {list(self._waiting)}")
        if problems:
            raise AssertionError("; ".join(problems))

    def _order_problems(self, held: Iterable[Entry]) -> list[str]:
        waiting = {id(e) for q in self._waiting.values() for e in q}
        active: dict[Key, list[Entry]] = {}
        for entry in held:
            key = self._key(entry)
            if key is not None and id(entry) not in waiting:
                active.setdefault(key, []).append(entry)
        problems = [f"{len(entries)} entries of key {key!r} active at once"
                    for key, entries in active.items() if len(entries) > 1]
        problems += [f"key {key!r} busy without an active entry"
                     for key in self._waiting if key not in active]
        problems += [f"key {key!r} active but not busy" for key in active if key not in self._waiting]
        return problems

    # --- steps shared by the transitions ---------------------------------------------------------

    def _release(self, slots: int) -> None:
        self._free += slots
        self._freed.set()

    def _key(self, entry: Entry) -> Key | None:
        if not entry.fields:
            return None
        for name, value in entry.fields:
            if name == self._field:
                return (entry.stream, value)
        return None

    def _admit(self, entry: Entry) -> bool:
        """``True`` if ``entry`` may go now; otherwise it waits behind the active entry of its key."""
        key = self._key(entry)
        if key is None:
            return True
        queue = self._waiting.get(key)
        if queue is None:
            self._waiting[key] = deque()
            return True
        queue.append(entry)
        return False

    def _forget(self, entry: Entry) -> bool:
        """Drop ``entry`` from the held entries and free its slot; ``False`` if it was not held."""
        if self._held[entry.stream].pop(entry.id, None) is None:
            return False
        if self._lost:
            self._lost.discard((entry.stream, entry.id))
        self._release(1)
        return True

    def _leave(self, entry: Entry) -> bool:
        """An active entry leaves: its slot is freed and its key goes to the next entry waiting for it."""
        if not self._forget(entry):
            return False
        if self._field is None:
            return True
        key = self._key(entry)
        if key is None:
            return True
        queue = self._waiting.get(key)
        while queue is not None:
            if not queue:
                del self._waiting[key]
                break
            after = queue.popleft()
            if not self._closed:
                self._ready.put_nowait(after)
                self._queued += 1
                break
            self._forget(after)  # closed: it stays pending in Redis, like every entry not started
        return True
