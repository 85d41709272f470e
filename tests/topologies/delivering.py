"""What the sidecar tests on real topologies share: a producer whose counted entries a replica has,
an app that refuses poison entries for good, and a tally of what the app accepted.

Counted entries are the promise under test: an entry is counted only once ``WAIT 1`` says a replica
has it, so a failover cannot take it away, and every counted entry must reach the app (or, poison,
the dead-letter stream) however the primaries change meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from aiohttp import web

from tests.support.apps import Received, RecordingApp

POISON = b'"poison":"1"'
"""In the JSON body of an entry the app refuses for good (422: dead-lettered at once)."""


def refuse_poison(got: Received) -> web.StreamResponse:
    return web.Response(status=422 if POISON in got.body else 204)


@dataclass
class Counted:
    """Entries a replica acknowledged, as (stream, ID); poison ones apart."""

    good: set[tuple[str, str]] = field(default_factory=set)
    poison: set[tuple[str, str]] = field(default_factory=set)

    @property
    def total(self) -> int:
        return len(self.good) + len(self.poison)


def produce(primary_of: Callable[[str], redis.Redis], streams: list[str], numbers: range, counted: Counted,
            poison_every: int, batch: int = 10, timeout: float = 120.0) -> None:
    """XADD ``numbers`` round-robin over ``streams``, ``batch`` entries of one stream per round trip
    followed by ``WAIT 1`` on the same connection; only batches a replica acknowledged are counted.

    ``primary_of(stream)`` gives a client of the stream's primary now. A batch that fails (the primary
    died or moved, MOVED or ASK, no replica in time) is written again, to wherever its stream lives
    then, until ``timeout``; its first copies may exist or not, uncounted.
    """
    deadline = time.monotonic() + timeout
    per_stream: dict[str, list[int]] = {stream: [] for stream in streams}
    for n in numbers:
        per_stream[streams[n % len(streams)]].append(n)
    todo = [(stream, ns[i:i + batch]) for stream, ns in per_stream.items() for i in range(0, len(ns), batch)]
    todo.sort(key=lambda item: item[1][0])  # in the order of their numbers: streams interleaved
    for stream, ns in todo:
        while True:
            try:
                ids = _write(primary_of(stream), stream, ns, poison_every)
            except (redis.RedisError, OSError, LookupError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                continue
            for n, entry_id in zip(ns, ids, strict=True):
                (counted.poison if n % poison_every == poison_every // 2 else counted.good).add((stream, entry_id))
            break


def _write(client: redis.Redis, stream: str, ns: list[int], poison_every: int) -> list[str]:
    try:
        pipe = client.pipeline(transaction=False)
        for n in ns:
            fields = {"n": str(n)}
            if n % poison_every == poison_every // 2:
                fields["poison"] = "1"
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pipe.wait(1, 5000)
        *ids, replicas = pipe.execute()
    finally:
        client.close()
    if int(replicas) < 1:
        raise redis.TimeoutError(f"no replica acknowledged {len(ns)} entries of {stream}")
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


class Tally:
    """What the app accepted so far, read incrementally (the app's lists only grow)."""

    def __init__(self, app: RecordingApp) -> None:
        self.app = app
        self.accepted: set[tuple[str, str]] = set()
        self.by_consumer: dict[str, int] = {}
        self._seen = 0

    def update(self) -> Tally:
        answered = self.app.answered
        for got, status in answered[self._seen:]:
            if 200 <= status < 300:
                self.accepted.add(got.key)
                consumer = got.headers["streamgroup-consumer"]
                self.by_consumer[consumer] = self.by_consumer.get(consumer, 0) + 1
        self._seen = len(answered)
        return self
