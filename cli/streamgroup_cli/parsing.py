"""What operators type: stream entry IDs, ISO-8601 times and durations.

Why a module of its own: replay, pending, trim and purge all take positions or ages, and they must
agree on what ``30s`` or ``2024-05-01T12:00:00+02:00`` means. A time without a zone is refused rather
than guessed, since a guessed zone silently moves a replay or a trim by hours.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime

from . import CLIError

MAX_SEQ = 2**64 - 1
_ID_RE = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_id(text: str) -> tuple[int, int]:
    """``"ms-seq"`` (or a bare ``"ms"``, sequence 0) as integers; anything Redis would reject is a CLIError."""
    match = _ID_RE.match(text.strip())
    if not match:
        raise CLIError(f"{text!r} is not a stream entry ID (expected <milliseconds>-<sequence>, e.g. 1000-0)")
    ms, seq = int(match.group(1)), int(match.group(2) or 0)
    if ms > MAX_SEQ or seq > MAX_SEQ:
        raise CLIError(f"{text!r} is out of range for a stream entry ID")
    return ms, seq


def is_id(text: str) -> bool:
    return _ID_RE.match(text.strip()) is not None


def format_id(ms: int, seq: int) -> str:
    return f"{ms}-{seq}"


def next_id(entry_id: str) -> str:
    """The smallest ID after ``entry_id``."""
    ms, seq = parse_id(entry_id)
    return format_id(ms, seq + 1) if seq < MAX_SEQ else format_id(ms + 1, 0)


def parse_time_ms(text: str) -> int:
    """An ISO-8601 time with a zone (``Z`` or ``+02:00``), as milliseconds since the epoch."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise CLIError(f"{text!r} is neither an entry ID nor an ISO-8601 time (e.g. 2024-05-01T12:00:00Z)") from None
    if moment.tzinfo is None:
        raise CLIError(f"{text!r} has no time zone; add Z or an offset such as +02:00")
    ms = int(moment.timestamp() * 1000)
    if ms < 0:
        raise CLIError(f"{text!r} is before 1970, before any stream entry")
    return ms


def position(text: str, *, end: bool) -> str:
    """A range bound as XRANGE takes it: ``-``/``+``, an entry ID, or a time turned into an ID.

    A time as a start means the first entry written at or after it (``<ms>-0``); as an end, the last entry
    written in that millisecond or before (``<ms>-<max>``). A bare ID ``<ms>`` works the same way.
    """
    text = text.strip()
    if text in ("-", "+"):
        return text
    if is_id(text):
        ms, seq = parse_id(text)
        if "-" not in text:
            seq = MAX_SEQ if end else 0
        return format_id(ms, seq)
    ms = parse_time_ms(text)
    return format_id(ms, MAX_SEQ if end else 0)


def position_key(bound: str) -> tuple[int, int]:
    """For comparing bounds returned by :func:`position`."""
    if bound == "-":
        return (0, 0)
    if bound == "+":
        return (MAX_SEQ, MAX_SEQ)
    return parse_id(bound)


def parse_duration(text: str) -> float:
    """``500ms``, ``30s``, ``5m``, ``2h``, ``7d``, ``1w`` or combinations (``1h30m``), in seconds."""
    compact = text.strip().lower().replace(" ", "")
    if compact and _DURATION_PART.sub("", compact) == "":
        return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(compact))
    hint = "; add a unit" if compact.replace(".", "").isdigit() else ""
    raise CLIError(f"{text!r} is not a duration{hint} (e.g. 500ms, 30s, 5m, 2h, 7d, 1w, 1h30m)")


def _whole_number_at_least(low: int, words: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise CLIError(f"{text!r} is not a whole number") from None
        if value < low:
            raise CLIError(f"{text!r} {words}")
        return value
    return parse


# For ``--count`` and lengths: argparse calls them, a CLIError message becomes the one error line.
positive_int = _whole_number_at_least(1, "must be at least 1")
non_negative_int = _whole_number_at_least(0, "must not be negative")
