"""The in-flight tracker on its own: slots, held entries, lost leases, per-key order, shutdown.

Every step of every test goes through :class:`Checked`, which verifies the tracker's invariants
after each call, so a test fails at the first step that breaks one, whatever it asserts itself.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Callable
from typing import Any

import pytest

from streamgroup_sidecar.entries import Entry
from streamgroup_sidecar.tracking import InFlight


def entry(n: int, key: bytes | None = None, stream: str = "s") -> Entry:
    fields = [(b"n", str(n).encode())] + ([(b"acct", key)] if key is not None else [])
    return Entry(stream, f"{n}-0", fields)


class Checked:
    """The tracker, with :meth:`InFlight.check` run after every call."""

    def __init__(self, tracker: InFlight) -> None:
        self.tracker = tracker
        tracker.check()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.tracker, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if asyncio.iscoroutine(result):
                return self._checked(result)
            self.tracker.check()
            return result

        return call

    async def _checked(self, coroutine: Any) -> Any:
        result = await coroutine
        self.tracker.check()
        return result


def tracker(size: int = 4, ordering_field: str | None = None) -> Any:
    return Checked(InFlight(size, ("s", "t"), ordering_field))


def read(t: Any, *entries: Entry) -> int:
    """What the reader does: reserve every free slot, hold what came back."""
    slots = t.reserve_free()
    t.hold(list(entries), slots)
    return int(slots)


def take_all(t: Any) -> list[Entry | None]:
    taken = []
    while True:
        try:
            taken.append(t.take_nowait())
        except asyncio.QueueEmpty:
            return taken


class TestSlots:
    def test_a_read_reserves_every_free_slot_and_gives_back_those_it_did_not_fill(self) -> None:
        t = tracker(size=4)
        slots = t.reserve_free()
        assert slots == 4 and t.counts().free == 0 and t.counts().reserved == 4 and t.in_flight == 0
        t.hold([entry(1), entry(2)], slots)
        assert (t.counts().free, t.counts().reserved, t.counts().held, t.in_flight) == (2, 0, 2, 2)

    def test_a_failed_read_gives_its_slots_back(self) -> None:
        t = tracker(size=4)
        read(t, entry(1))
        slots = t.reserve_free()
        assert slots == 3
        t.unreserve(slots)
        assert t.counts().free == 3 and t.counts().reserved == 0

    def test_an_entry_keeps_its_slot_until_it_leaves(self) -> None:
        t = tracker(size=2)
        read(t, entry(1), entry(2))
        assert t.reserve_free() == 0, "nothing is free while both are held"
        t.unreserve(0)
        first, second = take_all(t)
        assert first is not None and second is not None
        t.acked("s", [first])
        assert t.counts().free == 1
        t.finish(second)
        assert t.counts().free == 2 and t.counts().held == 0

    def test_a_read_cannot_hold_more_entries_than_it_reserved(self) -> None:
        t = InFlight(1, ("s",))
        slots = t.reserve_free()
        with pytest.raises(ValueError, match="2 entries read into 1 slots"):
            t.hold([entry(1), entry(2)], slots)

    async def test_the_reader_waits_until_a_quarter_of_the_slots_are_free(self) -> None:
        t = tracker(size=8)
        read(t, *(entry(n) for n in range(8)))
        taken = take_all(t)
        reserving = asyncio.ensure_future(t.reserve())
        t.acked("s", taken[:1])
        await asyncio.sleep(0.01)
        assert not reserving.done(), "one free slot of eight is not enough for a read"
        t.acked("s", taken[1:2])
        assert await asyncio.wait_for(reserving, 1.0) == 2
        assert t.counts().free == 0 and t.counts().reserved == 2


    async def test_a_read_may_reserve_at_most_a_given_number_of_slots(self) -> None:
        # Cluster mode: an idle slot group's blocking read takes one slot, a busy one all that are free.
        t = tracker(size=8)
        assert await t.reserve(1) == 1
        assert t.reserve_free(100) == 7
        t.unreserve(8)
        assert t.reserve_free(3) == 3 and t.counts().free == 5
        t.hold([entry(1)], 3)
        assert t.counts().free == 7 and t.counts().held == 1


class TestDelivering:
    def test_held_entries_are_queued_in_read_order_and_taken_one_by_one(self) -> None:
        t = tracker(size=4)
        entries = [entry(1), entry(2), entry(3, stream="t")]
        read(t, *entries)
        assert t.counts().queued == 3
        assert take_all(t) == entries
        assert t.counts().delivering == 3 and t.counts().queued == 0

    async def test_a_worker_waits_for_the_next_entry(self) -> None:
        t = tracker()
        taking = asyncio.ensure_future(t.take())
        await asyncio.sleep(0.01)
        assert not taking.done()
        e = entry(1)
        read(t, e)
        assert await asyncio.wait_for(taking, 1.0) is e
        assert t.counts().delivering == 1

    def test_a_request_s_accepted_entries_leave_together_with_their_slots(self) -> None:
        t = tracker(size=4)
        read(t, entry(1), entry(2), entry(3))
        a, b, c = take_all(t)
        assert a is not None and b is not None and c is not None
        t.acked("s", [a, b])
        assert (t.counts().held, t.counts().delivering, t.counts().free) == (1, 1, 3)
        assert t.leases("s") == [("3-0", 1)]

    def test_a_failed_entry_keeps_its_slot_while_it_waits_to_retry_then_is_queued_again(self) -> None:
        t = tracker(size=2)
        e = entry(1)
        read(t, e)
        assert take_all(t) == [e]
        t.retry_later(e)
        assert (t.counts().retrying, t.counts().delivering, t.counts().free) == (1, 0, 1)
        t.requeue(e)
        assert t.counts().queued == 1 and take_all(t) == [e]
        t.acked("s", [e])
        assert t.counts().free == 2

    def test_an_entry_waiting_to_retry_can_leave_without_being_queued_again(self) -> None:
        t = tracker(size=2)
        e = entry(1)
        read(t, e)
        take_all(t)
        t.retry_later(e)
        t.finish(e)
        assert t.counts().retrying == 0 and t.counts().free == 2

    def test_an_entry_that_already_left_frees_no_second_slot(self) -> None:
        t = tracker(size=2)
        e = entry(1)
        read(t, e)
        take_all(t)
        t.finish(e)
        t.finish(e)
        t.acked("s", [e])
        assert t.counts().free == 2

    def test_stop_signals_come_after_the_entries_queued_before_them(self) -> None:
        t = tracker()
        e = entry(1)
        read(t, e)
        t.stop_workers(2)
        assert take_all(t) == [e, None, None]


class TestLostLeases:
    def test_a_lost_lease_marks_the_entry_until_it_leaves(self) -> None:
        t = tracker()
        e, other = entry(1), entry(2)
        read(t, e, other)
        assert t.lose_lease("s", "1-0")
        assert t.is_lost(e) and not t.is_lost(other)
        take_all(t)
        t.finish(e)
        assert not t.is_lost(e) and t.counts().lost == 0

    def test_a_lease_lost_by_an_entry_that_already_left_is_ignored(self) -> None:
        t = tracker()
        e = entry(1)
        read(t, e)
        take_all(t)
        t.acked("s", [e])
        assert not t.lose_lease("s", "1-0")
        assert t.counts().lost == 0

    def test_acking_a_lost_entry_clears_the_mark(self) -> None:
        t = tracker()
        e = entry(1)
        read(t, e)
        take_all(t)
        t.lose_lease("s", "1-0")
        t.acked("s", [e])
        assert t.counts().lost == 0 and t.counts().free == 4

    def test_an_entry_reclaimed_while_still_held_is_kept_once_and_its_lease_is_ours_again(self) -> None:
        t = tracker(size=4)
        e = entry(1)
        read(t, e)
        t.lose_lease("s", "1-0")
        again = entry(1)
        read(t, again, entry(2))
        assert t.counts().held == 2 and t.counts().free == 2, "the duplicate took no slot"
        assert not t.is_lost(e)
        assert take_all(t) == [e, entry(2)], "the one in hand stays queued; the copy is dropped"

    def test_leases_list_every_held_entry_with_its_attempts_so_far(self) -> None:
        t = tracker(ordering_field="acct")
        a, b, c = entry(1, b"k"), entry(2, b"k"), entry(3, stream="t")
        a.deliveries = 3
        read(t, a, b, c)
        assert t.leases("s") == [("1-0", 3), ("2-0", 1)], "waiting entries are leased too"
        assert t.leases("t") == [("3-0", 1)]


class TestPerKeyOrder:
    def test_entries_of_one_key_go_one_at_a_time_in_read_order(self) -> None:
        t = tracker(size=8, ordering_field="acct")
        a1, a2, a3, b1 = entry(1, b"a"), entry(2, b"a"), entry(3, b"a"), entry(4, b"b")
        read(t, a1, a2, a3, b1)
        assert t.counts().waiting == 2
        assert take_all(t) == [a1, b1]
        t.acked("s", [a1])
        assert take_all(t) == [a2]
        t.acked("s", [a2])
        assert take_all(t) == [a3]
        t.acked("s", [a3])
        a4 = entry(5, b"a")
        read(t, a4)
        assert take_all(t) == [a4], "a key is free again once its last entry left"

    def test_keys_are_per_stream_and_entries_without_the_field_never_wait(self) -> None:
        t = tracker(size=8, ordering_field="acct")
        entries = [entry(1, b"a", stream="s"), entry(2, b"a", stream="t"), entry(3), entry(4)]
        read(t, *entries)
        assert take_all(t) == entries

    def test_an_entry_waiting_to_retry_keeps_its_key(self) -> None:
        t = tracker(ordering_field="acct")
        a1, a2 = entry(1, b"a"), entry(2, b"a")
        read(t, a1, a2)
        take_all(t)
        t.retry_later(a1)
        assert take_all(t) == [], "the next one waits for the retry"
        t.requeue(a1)
        assert take_all(t) == [a1]
        t.finish(a1)  # dead-lettered: the key passes on all the same
        assert take_all(t) == [a2]

    def test_a_batch_acked_at_once_passes_each_key_on(self) -> None:
        t = tracker(size=8, ordering_field="acct")
        a1, b1, a2, b2 = entry(1, b"a"), entry(2, b"b"), entry(3, b"a"), entry(4, b"b")
        read(t, a1, b1, a2, b2)
        assert take_all(t) == [a1, b1]
        t.acked("s", [a1, b1])
        assert take_all(t) == [a2, b2]

    def test_without_an_ordering_field_nothing_waits(self) -> None:
        t = tracker(size=8)
        entries = [entry(n, b"a") for n in range(3)]
        read(t, *entries)
        assert t.counts().waiting == 0 and take_all(t) == entries


class TestShutdown:
    def test_drain_sends_away_queued_and_waiting_entries_and_frees_their_slots(self) -> None:
        t = tracker(size=8, ordering_field="acct")
        a1, a2, b1, c1 = entry(1, b"a"), entry(2, b"a"), entry(3, b"b"), entry(4)
        read(t, a1, a2, b1, c1)
        [taken] = [t.take_nowait()]
        assert taken is a1
        left = t.drain()
        assert sorted(e.id for e in left) == ["2-0", "3-0", "4-0"]
        assert (t.counts().held, t.counts().delivering, t.counts().free) == (1, 1, 7)
        t.acked("s", [a1])
        assert t.counts().free == 8

    def test_an_entry_in_delivery_keeps_its_key_after_drain(self) -> None:
        t = tracker(size=8, ordering_field="acct")
        a1, a2 = entry(1, b"a"), entry(2, b"a")
        read(t, a1, a2)
        take_all(t)
        t.retry_later(a1)
        assert t.drain() == [a2]
        t.requeue(a1)  # closed: its back-off ended, but it leaves instead
        assert take_all(t) == [] and t.counts().held == 0

    def test_after_close_an_entry_whose_key_frees_up_leaves_instead_of_being_queued(self) -> None:
        t = tracker(size=8, ordering_field="acct")
        a1, a2, a3 = entry(1, b"a"), entry(2, b"a"), entry(3, b"a")
        read(t, a1, a2, a3)
        take_all(t)
        t.close()
        t.acked("s", [a1])
        assert take_all(t) == [] and t.counts().held == 0 and t.counts().free == 8

    def test_reads_finishing_after_close_are_still_held_until_drained(self) -> None:
        t = tracker()
        slots = t.reserve_free()
        t.close()
        t.hold([entry(1)], slots)
        assert t.counts().queued == 1
        assert [e.id for e in t.drain()] == ["1-0"]

    def test_drain_keeps_the_stop_signals_already_queued(self) -> None:
        t = tracker()
        read(t, entry(1))
        t.stop_workers(2)
        t.drain()
        assert take_all(t) == [None, None]


class TestInvariants:
    def test_check_catches_transitions_from_the_wrong_state(self) -> None:
        t = InFlight(2, ("s",))
        e = entry(1)
        read(t, e)
        t.unreserve(1)  # a read that reserved nothing gives a slot back
        with pytest.raises(AssertionError, match="a negative count"):
            t.check()
        t = InFlight(2, ("s",))
        read(t, e)
        t.finish(e)  # finished while still queued: no worker ever took it
        with pytest.raises(AssertionError, match="a negative count"):
            t.check()

    def test_check_finds_two_entries_of_one_key_active_at_once(self) -> None:
        t = InFlight(4, ("s",), "acct")
        a1, a2 = entry(1, b"a"), entry(2, b"a")
        read(t, a1, a2)
        take_all(t)
        t.retry_later(a1)
        t.requeue(a1)
        t.retry_later(a2)  # a2 was never taken: the bookkeeping now believes two are active
        with pytest.raises(AssertionError):
            t.check()

    @pytest.mark.parametrize("ordering_field", [None, "acct"])
    def test_random_sequences_of_operations_keep_every_invariant(self, ordering_field: str | None) -> None:
        rng = random.Random(20261130)
        model = Model(InFlight(16, ("s", "t"), ordering_field), ordering_field, rng)
        for _ in range(5000):
            model.step()
        model.shut_down()


class Model:
    """Plays reader, workers, retry timers and lease keeper at random, and keeps what they know.

    After each step the tracker's own invariants are checked, and its counts against this model;
    each key's entries must be delivered in the order they were held.
    """

    def __init__(self, tracker: InFlight, ordering_field: str | None, rng: random.Random) -> None:
        self.t = tracker
        self.ordered = ordering_field is not None
        self.rng = rng
        self.next_id = 1
        self.held: dict[tuple[str, str], Entry] = {}
        self.delivering: list[Entry] = []
        self.retrying: list[Entry] = []
        self.order_held: dict[tuple[str, bytes], list[str]] = collections.defaultdict(list)
        self.order_taken: dict[tuple[str, bytes], list[str]] = collections.defaultdict(list)

    def step(self) -> None:
        moves: list[tuple[int, Callable[[], None]]] = [
            (3, self.read), (1, self.failed_read), (4, self.take), (3, self.ack), (1, self.dead_letter),
            (2, self.retry), (2, self.back_off_ends), (1, self.lose_lease),
        ]
        weights, actions = zip(*moves, strict=True)
        self.rng.choices(actions, weights)[0]()
        self.t.check()
        counts = self.t.counts()
        assert counts.held == len(self.held)
        assert counts.delivering == len(self.delivering)
        assert counts.retrying == len(self.retrying)

    def new_entry(self) -> Entry:
        n = self.next_id
        self.next_id += 1
        key = self.rng.choice([b"a", b"b", b"c", None])
        return entry(n, key, stream=self.rng.choice(["s", "t"]))

    def read(self) -> None:
        slots = self.t.reserve_free()
        entries = [self.new_entry() for _ in range(self.rng.randint(0, slots))]
        if entries and self.held and self.rng.random() < 0.2:
            # Our own sweep reclaims an entry we still hold: a copy with the same ID.
            stream, entry_id = self.rng.choice(list(self.held))
            entries[0] = Entry(stream, entry_id, self.held[(stream, entry_id)].fields)
        self.t.hold(entries, slots)
        for e in entries:
            if (e.stream, e.id) not in self.held:
                self.held[(e.stream, e.id)] = e
                if (key := self.key(e)) is not None:
                    self.order_held[key].append(e.id)

    def failed_read(self) -> None:
        self.t.unreserve(self.t.reserve_free())

    def take(self) -> None:
        try:
            e = self.t.take_nowait()
        except asyncio.QueueEmpty:
            return
        assert e is not None and self.held[(e.stream, e.id)] is e
        self.delivering.append(e)
        if (key := self.key(e)) is not None and e.id not in self.order_taken[key]:
            self.order_taken[key].append(e.id)
            assert self.order_taken[key] == self.order_held[key][:len(self.order_taken[key])]

    def ack(self) -> None:
        """One request's worth: some of the entries in delivery, of one stream."""
        if not self.delivering:
            return
        stream = self.rng.choice(self.delivering).stream
        batch = [e for e in self.delivering if e.stream == stream][:self.rng.randint(1, 4)]
        self.t.acked(stream, batch)
        for e in batch:
            self.leave(e, self.delivering)

    def dead_letter(self) -> None:
        if self.delivering:
            e = self.rng.choice(self.delivering)
            self.t.finish(e)
            self.leave(e, self.delivering)

    def retry(self) -> None:
        if self.delivering:
            e = self.rng.choice(self.delivering)
            self.t.retry_later(e)
            self.delivering.remove(e)
            self.retrying.append(e)

    def back_off_ends(self) -> None:
        if self.retrying:
            e = self.rng.choice(self.retrying)
            self.retrying.remove(e)
            self.t.requeue(e)

    def lose_lease(self) -> None:
        if self.held:
            stream, entry_id = self.rng.choice(list(self.held))
            assert self.t.lose_lease(stream, entry_id)
            assert self.t.is_lost(self.held[(stream, entry_id)])

    def leave(self, e: Entry, where: list[Entry]) -> None:
        where.remove(e)
        del self.held[(e.stream, e.id)]

    def key(self, e: Entry) -> tuple[str, bytes] | None:
        if not self.ordered or e.fields is None:
            return None
        values = [v for n, v in e.fields if n == b"acct"]
        return (e.stream, values[0]) if values else None

    def shut_down(self) -> None:
        self.t.close()
        self.t.check()
        for e in self.t.drain():
            del self.held[(e.stream, e.id)]
        self.t.check()
        for e in list(self.retrying):
            self.retrying.remove(e)
            self.t.finish(e)
            del self.held[(e.stream, e.id)]
            self.t.check()
        stream_entries = list(self.delivering)
        for e in stream_entries:
            self.t.acked(e.stream, [e])
            self.leave(e, self.delivering)
            self.t.check()
        counts = self.t.counts()
        assert counts.held == 0 and counts.free == self.t.size and self.held == {}
