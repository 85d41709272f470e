"""Per-key ordering: entries that share a key go one at a time, in the order they were read.

With ``--ordering-field`` set, the value of that field is the entry's key (per stream).
An entry whose key is busy (an earlier entry with that key is being delivered or retried)
waits here; when the earlier one finishes (acknowledged or dead-lettered) the next one is
released. Entries with different keys, or without the field, are not held back. This is
bookkeeping only: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque

from .entries import Entry

Key = tuple[str, bytes]


class Sequencer:
    def __init__(self, field: str | None) -> None:
        self._field = field.encode() if field else None
        self._waiting: dict[Key, deque[Entry]] = {}
        """Busy keys; each maps to the entries waiting behind the one in delivery (maybe none)."""

    @property
    def ordered(self) -> bool:
        """``False`` without an ordering field: nothing ever waits."""
        return self._field is not None

    def key(self, entry: Entry) -> Key | None:
        if self._field is None or not entry.fields:
            return None
        for name, value in entry.fields:
            if name == self._field:
                return (entry.stream, value)
        return None

    def admit(self, entry: Entry) -> bool:
        """``True`` if ``entry`` may be delivered now; otherwise it waits for its key."""
        key = self.key(entry)
        if key is None:
            return True
        queue = self._waiting.get(key)
        if queue is None:
            self._waiting[key] = deque()
            return True
        queue.append(entry)
        return False

    def finish(self, entry: Entry) -> Entry | None:
        """``entry`` is done: the next entry with its key, now due for delivery, if any."""
        key = self.key(entry)
        if key is None:
            return None
        queue = self._waiting.get(key)
        if queue is None:
            return None
        if queue:
            return queue.popleft()
        del self._waiting[key]
        return None

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def drain(self) -> list[Entry]:
        """Forget every waiting entry (at shutdown; they stay pending in Redis) and return them."""
        left = [entry for queue in self._waiting.values() for entry in queue]
        self._waiting.clear()
        return left
