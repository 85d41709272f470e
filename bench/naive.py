"""Naive baseline: the consumer-group loop from a tutorial, for the "how much better" ratio.

Why: people replacing such a loop with the sidecar want to know what they gain. This is the
loop most write first, kept as written: redis-py (synchronous) reads one entry at a time
with ``XREADGROUP ... COUNT 1 BLOCK``, ``requests.post(url, json=fields)`` delivers it (no
session: a new connection per entry, as in the tutorials), and one ``XACK`` per entry
follows. ``--session`` reuses one ``requests.Session`` instead, the first fix anyone makes.
It runs until the stream is drained or ``--max-seconds`` pass, whichever is first, and
reports the rate over what it did.

Usage: ``python -m bench.naive --redis-url redis://127.0.0.1:PORT/0 --app-url http://127.0.0.1:PORT/``.
Expects the stream ``bench`` pre-filled with the group ``bench`` at its start. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import redis
import requests

from .common import GROUP, STREAM


def loop(redis_url: str, app_url: str, max_entries: int, max_seconds: float, session: bool) -> dict[str, Any]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    post = requests.Session().post if session else requests.post
    done = errors = 0
    started = time.perf_counter()
    deadline = time.monotonic() + max_seconds
    while done < max_entries and time.monotonic() < deadline:
        reply: Any = r.xreadgroup(GROUP, "naive", {STREAM: ">"}, count=1, block=1000)
        if not reply:
            break
        for _stream, entries in reply:
            for entry_id, fields in entries:
                response = post(app_url, json=fields, timeout=30)
                if response.ok:
                    r.xack(STREAM, GROUP, entry_id)
                    done += 1
                else:
                    errors += 1
    seconds = time.perf_counter() - started
    return {"entries": done, "seconds": seconds, "rate": done / seconds if seconds else 0.0, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--app-url", required=True)
    parser.add_argument("--entries", type=int, default=1_000_000, help="stop after this many entries")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="stop after this long")
    parser.add_argument("--session", action="store_true",
                        help="reuse one requests.Session (keep-alive): the tutorial loop's first fix")
    args = parser.parse_args()
    print(json.dumps(loop(args.redis_url, args.app_url, args.entries, args.max_seconds, args.session)))


if __name__ == "__main__":
    main()
