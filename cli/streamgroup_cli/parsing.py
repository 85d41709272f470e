"""What operators type: stream entry IDs, ISO-8601 times and durations, as the CLI's arguments take them.

The meaning of each lives in the core (:mod:`streamgroup_core.ids`, :mod:`streamgroup_core.durations`),
shared with the sidecar and the operator so that ``30s`` or ``2024-05-01T12:00:00+02:00`` means the
same everywhere; this module only turns their errors into :class:`CLIError` lines.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from streamgroup_core import durations, ids

from . import CLIError

MAX_SEQ = ids.MAX_PART
format_id = ids.format_id
is_id = ids.is_id
position_key = ids.position_key

P = ParamSpec("P")
T = TypeVar("T")


def _user_facing(parse: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(parse)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return parse(*args, **kwargs)
        except ValueError as exc:
            raise CLIError(str(exc)) from None

    return wrapped


parse_id = _user_facing(ids.parse_id)
next_id = _user_facing(ids.next_id)
parse_time_ms = _user_facing(ids.parse_time_ms)
position = _user_facing(ids.position)
parse_duration = _user_facing(durations.parse_duration)


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
