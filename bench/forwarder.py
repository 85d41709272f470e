"""What-if: the simplest forwarder built from the sidecar's own parts, for the per-entry ratio's "why".

Why: the HTTP ceiling is a process that only posts. A sidecar must also read from Redis and
acknowledge, in the same process. This loop does just that and nothing else: no retries, no
leases, no dead letters, no metrics, no ordering. It reads ``XREADGROUP COUNT <free slots>``,
posts each entry with the best client (the sidecar's built-in one on uvloop, its ``RequestBuilder``
and the same request), at most ``--in-flight`` at once, and acknowledges what the app accepted
with one ``XACK`` per read. Whatever it reaches is what "the best client plus Redis in one
Python process" costs; the sidecar's distance to it is the cost of its guarantees.

Usage: ``python -m bench.forwarder --redis-url redis://127.0.0.1:PORT/0 --app-url http://127.0.0.1:PORT/``.
Expects the stream ``bench`` pre-filled with the group ``bench`` at its start. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import redis.asyncio as aioredis
import uvloop

from streamgroup_sidecar.encoding import RequestBuilder
from streamgroup_sidecar.entries import Entry
from streamgroup_sidecar.posting import ConnectionPool

from .common import GROUP, STREAM


async def forward(redis_url: str, app_url: str, entries: int, in_flight: int, max_seconds: float) -> dict[str, Any]:
    redis = aioredis.Redis.from_url(redis_url)
    redis.set_response_callback("XREADGROUP", lambda reply, **_: reply)  # raw field pairs, like the sidecar
    client = ConnectionPool(app_url, 30.0, in_flight)
    builder = RequestBuilder(group=GROUP, consumer="forwarder")
    static = builder.static_headers(STREAM)
    accepted: list[bytes] = []
    free = in_flight
    slot_freed = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    done = errors = 0

    async def deliver(raw_id: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        nonlocal free, done, errors
        request = builder.build(Entry(STREAM, raw_id.decode(), fields), static)
        reply = await client.request("POST", request.headers, request.body)
        if reply.status is not None and 200 <= reply.status < 300:
            accepted.append(raw_id)
            done += 1
        else:
            errors += 1
        free += 1
        slot_freed.set()

    started = time.perf_counter()
    cpu = time.process_time()
    deadline = time.monotonic() + max_seconds
    while done + errors < entries and time.monotonic() < deadline:
        while free < max(1, in_flight // 4):  # batched reads, as the sidecar does
            slot_freed.clear()
            await slot_freed.wait()
        if accepted:
            ids, accepted[:] = list(accepted), []
            await redis.xack(STREAM, GROUP, *ids)
        reply: Any = await redis.execute_command(
            "XREADGROUP", "GROUP", GROUP, "forwarder", "COUNT", free, "BLOCK", 100, "STREAMS", STREAM, ">")
        for _stream, raw_entries in reply or []:
            for raw_id, flat in raw_entries:
                it = iter(flat)
                free -= 1
                task = asyncio.create_task(deliver(raw_id, list(zip(it, it, strict=True))))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    if accepted:
        await redis.xack(STREAM, GROUP, *accepted)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    client.close()
    await redis.aclose()
    return {"entries": done, "seconds": seconds, "rate": done / seconds if seconds else 0.0, "errors": errors,
            "cpu_seconds": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--app-url", required=True)
    parser.add_argument("--entries", type=int, required=True, help="stop after this many entries")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop after this long")
    args = parser.parse_args()
    result = uvloop.run(forward(args.redis_url, args.app_url, args.entries, args.in_flight, args.max_seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
