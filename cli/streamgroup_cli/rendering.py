"""How the command shows things: tables for people, JSON for scripts, and bytes shown without loss.

Stream fields are bytes. Most are UTF-8 text and are shown as strings; the rest are shown as
``{"base64": "..."}`` so that a script can get the exact bytes back (decoding with replacement
characters would silently change the payload someone is about to replay or re-drive).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import orjson

Pairs = Sequence[tuple[bytes, bytes]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_FIRST_MS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _MS
_LAST_MS = (datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC) - _EPOCH) // _MS


def text(value: Any) -> str:
    """For display only (names, IDs): undecodable bytes as backslash escapes."""
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)


def lossless(value: bytes) -> str | dict[str, str]:
    """The value as a string when it is UTF-8, otherwise marked base64."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def fields_json(pairs: Pairs) -> dict[str, Any]:
    """``{"fields": {name: value}}``, or ``{"pairs": [[name, value], ...]}`` when an object would lose something.

    An object cannot hold a field name twice (Redis allows it) nor a name that is not UTF-8; only then do
    the exact pairs, in order, replace the object.
    """
    names = [name.decode("utf-8", errors="strict") if _is_utf8(name) else None for name, _ in pairs]
    if None in names or len(set(names)) != len(names):
        return {"pairs": [[lossless(name), lossless(value)] for name, value in pairs]}
    return {"fields": {name: lossless(value) for name, (_, value) in zip(names, pairs, strict=True)}}


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def iso_ms(ms: int | float) -> str:
    """Milliseconds since the epoch as ``2024-05-01T12:00:00.123Z``, or ``<ms> ms since 1970`` past the year 9999.

    Stream IDs go to 2**64 - 1 ms (XADD takes any), far beyond what ISO-8601's four-digit years can write.
    """
    whole = math.floor(ms)
    if not _FIRST_MS <= whole <= _LAST_MS:
        return f"{whole} ms since 1970"
    # In integers: ms / 1000 as a float is a millisecond off for some IDs (28166203111168 gave ...167).
    moment = _EPOCH + whole * _MS
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def id_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def duration(seconds: float | None) -> str:
    """A short, human age: ``850ms``, ``42.0s``, ``3m12s``, ``2h05m``, ``7d``, ``3d04h``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    for size, unit, small, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s")):
        if whole >= size:
            rest = whole % size // small
            return f"{whole // size}{unit}" + (f"{rest:02d}{small_unit}" if rest else "")
    raise AssertionError("unreachable")


def write_table(out: TextIO, headers: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[str] = ()) -> None:
    """Columns padded to their widest cell; the last column is never padded (it may be long)."""
    materialised = [list(headers), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in materialised) for i in range(len(headers))]
    for row in materialised:
        cells = []
        for i, cell in enumerate(row):
            if i == len(row) - 1:
                cells.append(cell)
            elif headers[i] in right:
                cells.append(cell.rjust(widths[i]))
            else:
                cells.append(cell.ljust(widths[i]))
        print("  ".join(cells).rstrip(), file=out)


def write_json(out: TextIO, value: Any) -> None:
    out.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def write_json_line(out: TextIO, value: Any) -> None:
    out.write(orjson.dumps(value).decode() + "\n")


def shorten(value: str, width: int) -> str:
    one_line = " ".join(value.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"
