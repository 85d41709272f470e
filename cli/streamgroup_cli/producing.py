"""Feeding a stream by hand: ``produce`` turns JSON lines on stdin into stream entries.

For smoke tests, demos and small back-fills. A bad line stops the command with its line number, and the
entries before it stay added (they are sent in batches, flushed before the error is raised), so a
re-run can start from that line.
"""

from __future__ import annotations

from typing import TextIO

import orjson
import redis

from . import CLIError


def produce(client: redis.Redis, stream: str, lines: TextIO, maxlen: int | None = None) -> int:
    """XADD one entry per JSON line; values that are not strings are stored as their JSON text."""
    count = 0
    pipe = client.pipeline(transaction=False)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
            if not isinstance(obj, dict) or not obj:
                raise ValueError("expected a non-empty JSON object")
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            pipe.execute()
            raise CLIError(f"line {number}: {exc}; the {count} entries before it were added, none after") from None
        fields = {k: v if isinstance(v, str) else orjson.dumps(v) for k, v in obj.items()}
        pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
        count += 1
        if len(pipe) >= 500:
            pipe.execute()
    pipe.execute()
    return count
