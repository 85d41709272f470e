"""Redis ceiling: entries/s a Python consumer gets out of a group with no HTTP at all.

Why: whatever the sidecar does per entry, it must read every entry with XREADGROUP and
acknowledge it with XACK, from Python, with the client library it uses (redis-py's asyncio
client with hiredis). This loop does only that, as cheaply as the library allows: each
round trip is one pipeline holding ``--depth`` XREADGROUP ... COUNT ``--count`` reads of new
entries plus one XACK of everything the previous round read. It drains a stream that is
already full (``--entries``), so the figure is the read-and-ack ceiling that batch mode is
measured against.

Usage: ``python -m bench.redis_ceiling --redis-url redis://127.0.0.1:PORT/0 --entries 100000``.
Expects the stream ``bench`` pre-filled with the group ``bench`` at its start (``bench.run``
does that). Prints one JSON line: entries, seconds, rate, round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import redis.asyncio as aioredis

from .common import GROUP, STREAM


async def drain(url: str, expected: int, count: int, depth: int, max_seconds: float) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url)
    await client.ping()
    read = 0
    round_trips = 0
    to_ack: list[bytes] = []
    started = time.perf_counter()
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        for _ in range(depth):
            pipe.xreadgroup(GROUP, "ceiling", {STREAM: ">"}, count=count)
        if to_ack:
            pipe.xack(STREAM, GROUP, *to_ack)
        replies = await pipe.execute()
        round_trips += 1
        to_ack = []
        for reply in replies[:depth]:
            for _stream, entries in reply or ():
                for entry_id, _fields in entries:
                    to_ack.append(entry_id)
        read += len(to_ack)
        if not to_ack:
            break
    seconds = time.perf_counter() - started
    pending = (await client.xpending(STREAM, GROUP))["pending"]
    await client.aclose()
    return {"entries": read, "seconds": seconds, "rate": read / seconds if seconds else 0.0,
            "round_trips": round_trips, "pending_after": pending, "expected": expected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--entries", type=int, required=True, help="entries expected in the stream")
    parser.add_argument("--count", type=int, default=100, help="COUNT of each XREADGROUP")
    parser.add_argument("--depth", type=int, default=4, help="XREADGROUP commands per pipeline")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args()
    result = asyncio.run(drain(args.redis_url, args.entries, args.count, args.depth, args.max_seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
