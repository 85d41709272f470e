"""Looking at, or re-playing, a slice of a stream chosen by entry ID or by time.

Incidents are remembered in wall-clock time ("everything between 14:05 and 14:20"), streams in entry
IDs; both are accepted, and a time (with its zone) becomes the IDs of that millisecond. The slice is
printed as JSON lines, with exact bytes (see :mod:`rendering`), or re-added to a stream: the same
stream to have its group process the entries again, or another one to examine them in isolation.
Re-adding never deletes anything, and a range open at the end stops at the last entry that existed
when the command started, so re-adding into the source stream cannot chase its own tail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

import redis

from . import CLIError
from .parsing import position, position_key
from .reading import command, entries, last_id, require_stream
from .rendering import fields_json, id_ms, iso_ms, lossless, shorten, text, write_json_line, write_table


def bounds(start: str, end: str | None) -> tuple[str, str]:
    """XRANGE bounds for ``--from``/``--to`` (IDs or ISO-8601 times, both ends inclusive)."""
    first, last = position(start, end=False), position(end or "+", end=True)
    if position_key(first) > position_key(last):
        raise CLIError(f"--to {end} is before --from {start}")
    return first, last


def print_range(
    client: redis.Redis, stream: str, start: str, end: str, count: int | None, out: TextIO, output: str = "json"
) -> int:
    """Print the entries in the range; JSON lines ``{"id", "time", "fields"}`` or a table. Returns how many."""
    require_stream(client, stream)
    shown = 0
    if output == "table":
        rows = []
        for item in entries(client, stream, start, end, limit=count):
            fields = " ".join(f"{text(name)}={_short(value)}" for name, value in item.fields)
            rows.append([item.id, iso_ms(id_ms(item.id)), fields])
        write_table(out, ["ID", "TIME", "FIELDS"], rows)
        return len(rows)
    for item in entries(client, stream, start, end, limit=count):
        write_json_line(out, {"id": item.id, "time": iso_ms(id_ms(item.id)), **fields_json(item.fields)})
        shown += 1
    return shown


def _short(value: bytes) -> str:
    shown = lossless(value)
    return shorten(shown, 60) if isinstance(shown, str) else f"<{len(value)} bytes, not UTF-8>"


@dataclass(frozen=True)
class Replayed:
    count: int
    first_id: str | None = None
    last_id: str | None = None
    """IDs of the first and last entries added to the destination."""


def replay_into(
    client: redis.Redis, stream: str, start: str, end: str, count: int | None, destination: str, batch: int = 500
) -> Replayed:
    """XADD (new IDs, same fields in the same order) each entry in the range to ``destination``."""
    require_stream(client, stream)
    if end == "+":
        newest = last_id(client, stream)
        if newest is None:
            return Replayed(0)
        end = newest
    added: list[str] = []
    total, first = 0, None
    pipe = client.pipeline(transaction=False)
    try:
        for item in entries(client, stream, start, end, limit=count, batch=batch):
            command(pipe, "XADD", destination, "*", *(part for pair in item.fields for part in pair))
            if len(pipe) >= batch:
                added = [text(new_id) for new_id in pipe.execute()]
                first, total = first or added[0], total + len(added)
        if len(pipe):
            added = [text(new_id) for new_id in pipe.execute()]
            first, total = first or added[0], total + len(added)
    except redis.RedisError as exc:
        raise CLIError(f"Redis error after {total} entries were added to {destination!r} "
                       f"(the batch being sent may be partly added): {exc}") from None
    return Replayed(total, first, added[-1] if added else None)
