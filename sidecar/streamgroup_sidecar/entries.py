"""The entry model: one stream entry as the sidecar holds it from its read to its acknowledgement.

A module of its own because every part of the sidecar passes entries around (the Redis command
layer makes them, the tracker holds them, the workers deliver them, the request builder turns
them into HTTP requests) and none of those owns them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .encoding import header_value

Fields = list[tuple[bytes, bytes]]
"""An entry's field/value pairs, binary and in order (Redis allows a field name twice)."""


@dataclass(slots=True)
class Entry:
    """One stream entry as the sidecar holds it while delivering."""

    stream: str
    id: str
    fields: Fields | None
    """``None`` when the entry was deleted or trimmed after it was read into the group."""
    deliveries: int = 1
    """Attempts so far, including the current one (Redis' delivery counter plus local retries)."""
    failures: int = 0
    """Failed attempts by this sidecar, for its back-off."""

    @property
    def key(self) -> str:
        """``<stream>/<id>``, percent-encoded: unique per entry; the Idempotency-Key and batch key."""
        return f"{header_value(self.stream)}/{self.id}"
