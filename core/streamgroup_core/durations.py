"""Durations as people write them: ``250ms``, ``30s``, ``1m30s``, ``7d``: always with a unit.

One syntax for every part: the sidecar's options (``SG_REQUEST_TIMEOUT``), the StreamGroup's fields
(``claim.minIdle``, whose CRD pattern is a subset of this one) and the CLI's ``--min-idle`` or
``--older-than``. A bare number is refused everywhere rather than taken as seconds: for
``streamgroup trim --older-than 7`` a guessed unit deletes data, and ``SG_CLAIM_MIN_IDLE=30000``
meant as milliseconds would wait eight hours before reclaiming.
"""

from __future__ import annotations

import math
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
SYNTAX = "a duration with a unit, such as 500ms, 30s, 5m, 2h, 7d, 1w or 1h30m"


class InvalidDuration(ValueError):
    """Text that is not a duration; the message shows the accepted forms."""


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (never negative: there is no sign in the syntax)."""
    compact = text.strip().lower().replace(" ", "")
    if compact and not _PART.sub("", compact):
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(compact))
        # Hundreds of digits overflow the float: an infinite timeout or back-off is no duration.
        if not math.isfinite(seconds):
            raise InvalidDuration(f"{text!r} is too large a duration")
        return seconds
    hint = "; add a unit" if compact.replace(".", "", 1).isdigit() else ""
    raise InvalidDuration(f"{text!r} is not {SYNTAX}{hint}")
