"""Stream entry IDs: parsing, ordering and conversion from wall-clock time.

A Redis stream entry ID is ``<milliseconds>-<sequence>``. Users give start
positions as IDs or as timestamps; the sidecar turns timestamps into the
first possible ID of that millisecond so that ``XGROUP CREATE`` starts the
group right before the first entry written at or after that time.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_ID_RE = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")
_MAX_U64 = 2**64 - 1


class InvalidEntryID(ValueError):
    """A string that is neither a stream entry ID nor a supported start position."""


def parse_id(text: str) -> tuple[int, int]:
    """Split ``"ms-seq"`` (or a bare ``"ms"``) into integers, rejecting anything Redis would."""
    match = _ID_RE.match(text)
    if not match:
        raise InvalidEntryID(f"{text!r} is not a stream entry ID (expected <ms>-<seq>)")
    ms = int(match.group(1))
    seq = int(match.group(2) or 0)
    if ms > _MAX_U64 or seq > _MAX_U64:
        raise InvalidEntryID(f"{text!r} is out of range for a stream entry ID")
    return ms, seq


def id_time(entry_id: str) -> datetime:
    """The wall-clock time encoded in an entry ID (its millisecond part), in UTC."""
    ms, _ = parse_id(entry_id)
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def timestamp_to_id(text: str) -> str:
    """Turn an ISO-8601 timestamp into the smallest ID at or after it.

    A timestamp without a zone is rejected: guessing the zone would silently
    shift the start position by hours.
    """
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidEntryID(f"{text!r} is not an ISO-8601 timestamp") from exc
    if moment.tzinfo is None:
        raise InvalidEntryID(f"{text!r} has no time zone; add Z or an offset like +02:00")
    ms = int(moment.timestamp() * 1000)
    if ms < 0:
        raise InvalidEntryID(f"{text!r} is before 1970")
    return f"{ms}-0"


def start_position(text: str) -> str:
    """Normalise a start position: ``$`` (new entries only), ``0`` (whole stream), an ID or a timestamp.

    Returns the string to give ``XGROUP CREATE``. For an entry ID the group starts
    *after* that ID, as Redis defines it; for a timestamp, the group delivers the
    entries written at or after that instant.
    """
    text = text.strip()
    if text in ("$", "0", "0-0"):
        return text
    if _ID_RE.match(text):
        ms, seq = parse_id(text)
        return f"{ms}-{seq}"
    start = timestamp_to_id(text)
    # XGROUP CREATE delivers entries strictly after the given ID, so step one back.
    ms, _ = parse_id(start)
    if ms == 0:
        return "0"
    return f"{ms - 1}-{_MAX_U64}"
