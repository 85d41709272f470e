"""Batch mode: several entries per POST, each acknowledged, retried or dead-lettered on its own."""

from __future__ import annotations

import collections

from aiohttp import web

from tests.sidecar.conftest import eventually, running, settings_for, wait_for_pending_zero
from tests.support.apps import Received, RecordingApp
from tests.support.redis_server import RedisServer


def produce(server: RedisServer, stream: str, count: int) -> list[str]:
    pipe = server.client().pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(stream, {"n": str(n)})
    return [i.decode() for i in pipe.execute()]


class TestBatchMode:
    async def test_thousands_of_entries_arrive_in_arrays_and_are_all_acked(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        expected = {("orders", i) for i in produce(redis_server, "orders", 1500)}
        expected |= {("refunds", i) for i in produce(redis_server, "refunds", 1500)}
        settings = settings_for(redis_server, app, streams="orders,refunds", max_in_flight="200", batch_size="50")
        async with running(settings) as sidecar:
            await wait_for_pending_zero(redis_server.client(), ["orders", "refunds"], timeout=60)
            await eventually(lambda: sum(sidecar.metrics.stream(s).acked for s in ("orders", "refunds")), len(expected))
        items = [item for request in app.received for item in request.json()]
        assert {(i["stream"], i["id"]) for i in items} == expected
        assert len(items) == len(expected)
        assert all(len(request.json()) <= 50 for request in app.received)
        assert len(app.received) <= len(expected) / 10, "entries travel together"
        assert all(r.headers["streamgroup-batch-size"] == str(len(r.json())) for r in app.received)

    async def test_each_entry_follows_its_own_status_in_the_reply(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        ids = produce(redis_server, "orders", 30)
        retry_once, drop, ignore_once = set(ids[0:5]), set(ids[5:8]), set(ids[8:10])
        asked: collections.Counter[str] = collections.Counter()

        def behaviour(got: Received) -> web.StreamResponse:
            statuses = []
            for item in got.json():
                asked[item["id"]] += 1
                first = asked[item["id"]] == 1
                if item["id"] in ignore_once and first:
                    continue  # not mentioned: must be retried, not lost
                status = "RETRY" if item["id"] in retry_once and first else (
                    "DROP" if item["id"] in drop else "SUCCESS")
                statuses.append({"entryId": item["entryId"], "status": status})
            return web.json_response({"statuses": statuses})

        app.behaviour = behaviour  # type: ignore[assignment]
        client = redis_server.client()
        async with running(settings_for(redis_server, app, max_in_flight="40", batch_size="10")):
            await wait_for_pending_zero(client, ["orders"], timeout=30)
        assert {i for i in ids if asked[i] == 2} == retry_once | ignore_once
        assert all(asked[i] == 1 for i in set(ids) - retry_once - ignore_once)
        dead = client.xrange("orders:dead")
        assert {f[b"sg:id"].decode() for _, f in dead} == drop
        assert {f[b"sg:reason"] for _, f in dead} == {b"dropped"}
        retried = [item for r in app.received for item in r.json() if item["id"] in retry_once]
        assert sorted(i["deliveries"] for i in retried) == [1] * 5 + [2] * 5

    async def test_a_failed_batch_request_is_retried_whole(self, redis_server: RedisServer, app: RecordingApp) -> None:
        calls = 0

        def behaviour(got: Received) -> web.StreamResponse:
            nonlocal calls
            calls += 1
            return web.Response(status=500 if calls <= 2 else 200)

        app.behaviour = behaviour  # type: ignore[assignment]
        ids = produce(redis_server, "orders", 8)
        async with running(settings_for(redis_server, app, max_in_flight="8", batch_size="8", batch_wait="50ms")):
            await wait_for_pending_zero(redis_server.client(), ["orders"], timeout=30)
        delivered = collections.Counter(item["id"] for r in app.received for item in r.json())
        assert set(delivered) == set(ids)
        assert sum(delivered.values()) >= 3 * len(ids) - 8, "the failed requests carried the entries again"
