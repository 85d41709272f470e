"""Stream entry IDs and the times they encode: parsing, ordering, range bounds, start positions.

A Redis stream entry ID is ``<milliseconds>-<sequence>``. People give positions as IDs or as
ISO-8601 times; the sidecar (a group's start), the operator (creating the group) and the CLI
(replay, pending, trim ranges) must agree on what each means, so it is defined here once.
A time without a zone is refused rather than guessed: a guessed zone silently moves a start,
a replay or a trim by hours.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

MAX_PART = 2**64 - 1
"""The largest millisecond or sequence part Redis accepts."""
_ID_RE = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class InvalidEntryID(ValueError):
    """A string that is neither a stream entry ID nor a supported position; the message says why."""


def is_id(text: str) -> bool:
    return _ID_RE.match(text.strip()) is not None


def parse_id(text: str) -> tuple[int, int]:
    """Split ``"ms-seq"`` (or a bare ``"ms"``, sequence 0) into integers, refusing anything Redis would."""
    match = _ID_RE.match(text.strip())
    if not match:
        raise InvalidEntryID(f"{text!r} is not a stream entry ID (expected <milliseconds>-<sequence>, e.g. 1000-0)")
    ms, seq = int(match.group(1)), int(match.group(2) or 0)
    if ms > MAX_PART or seq > MAX_PART:
        raise InvalidEntryID(f"{text!r} is out of range for a stream entry ID")
    return ms, seq


def format_id(ms: int, seq: int) -> str:
    return f"{ms}-{seq}"


def next_id(entry_id: str) -> str:
    """The smallest ID after ``entry_id``; :class:`InvalidEntryID` after the largest one Redis accepts."""
    ms, seq = parse_id(entry_id)
    if seq < MAX_PART:
        return format_id(ms, seq + 1)
    if ms == MAX_PART:
        raise InvalidEntryID(f"{entry_id!r} is the largest stream entry ID: no ID comes after it")
    return format_id(ms + 1, 0)


def entry_ms(entry_id: str) -> int:
    """The millisecond part of an ID that Redis returned (well-formed: no validation, it is the hot path)."""
    return int(entry_id.partition("-")[0])


def parse_time_ms(text: str) -> int:
    """An ISO-8601 time with a zone (``Z`` or ``+02:00``), as milliseconds since the epoch."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEntryID(f"{text!r} is neither an entry ID nor an ISO-8601 time (e.g. 2024-05-01T12:00:00Z)"
                             ) from None
    if moment.tzinfo is None:
        raise InvalidEntryID(f"{text!r} has no time zone; add Z or an offset such as +02:00")
    # In integers: timestamp() is a float, a millisecond off for some times (3059-01-01T00:00:00.046Z
    # gave ...045), and truncating towards zero took the last half millisecond of 1969 for 1970.
    ms = (moment - _EPOCH) // _MS
    if ms < 0:
        raise InvalidEntryID(f"{text!r} is before 1970, before any stream entry")
    return ms


def start_position(text: str) -> str:
    """Normalise a group's start: ``$`` (new entries only), ``0`` (whole stream), an ID or a time.

    Returns the string to give ``XGROUP CREATE``. For an entry ID the group starts *after* that
    ID, as Redis defines it; for a time, the group delivers the entries written at or after it.
    """
    text = text.strip()
    if text in ("$", "0", "0-0"):
        return text
    if is_id(text):
        return format_id(*parse_id(text))
    ms = parse_time_ms(text)
    # XGROUP CREATE delivers entries strictly after the given ID, so step one back.
    return "0" if ms == 0 else format_id(ms - 1, MAX_PART)


def position(text: str, *, end: bool) -> str:
    """A range bound as XRANGE takes it: ``-``/``+``, an entry ID, or a time turned into an ID.

    A time as a start means the first entry written at or after it (``<ms>-0``); as an end, the last
    entry written in that millisecond or before (``<ms>-<max>``). A bare ID ``<ms>`` works the same way.
    """
    text = text.strip()
    if text in ("-", "+"):
        return text
    if is_id(text):
        ms, seq = parse_id(text)
        if "-" not in text:
            seq = MAX_PART if end else 0
        return format_id(ms, seq)
    return format_id(parse_time_ms(text), MAX_PART if end else 0)


def position_key(bound: str) -> tuple[int, int]:
    """For comparing bounds returned by :func:`position`."""
    if bound == "-":
        return (0, 0)
    if bound == "+":
        return (MAX_PART, MAX_PART)
    return parse_id(bound)
