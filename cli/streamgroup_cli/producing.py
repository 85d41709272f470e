"""Feeding a stream by hand: ``produce`` turns JSON lines on stdin into stream entries.

For smoke tests, demos and small back-fills. A bad line stops the command with its line number, and the
entries before it stay added (they are sent in batches, flushed before the error is raised), so a
re-run can start from that line.

To a partitioned stream, each entry goes to the partition its ``--partition-key`` field picks, with the
core's documented function (:func:`streamgroup_core.partitions.partition_of`), the one producers in other
languages copy: entries sharing that field's value share a partition, in order.
"""

from __future__ import annotations

from typing import TextIO

import orjson
import redis

from streamgroup_core.partitions import partition_keys, partition_of

from . import CLIError


def produce(client: redis.Redis, stream: str, lines: TextIO, maxlen: int | None = None,
            partitions: int | None = None, partition_key: str | None = None) -> int:
    """XADD one entry per JSON line; values that are not strings are stored as their JSON text.

    With ``partitions``, ``stream`` is a partitioned stream and each entry goes to ``stream:{n}``, ``n``
    chosen from its ``partition_key`` field (which every line must have).
    """
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
        key = stream
        if partitions is not None and partition_key is not None:
            if partition_key not in fields:
                pipe.execute()
                raise CLIError(f"line {number}: no field {partition_key!r} to pick a partition with; the {count} "
                               "entries before it were added, none after")
            key = partition_keys(stream, partitions)[partition_of(fields[partition_key], partitions)]
        pipe.xadd(key, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
        count += 1
        if len(pipe) >= 500:
            pipe.execute()
    pipe.execute()
    return count
