"""Delivery end to end: a real redis-server, a real sidecar, a real HTTP app."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time

import orjson
import pytest
from aiohttp import web

from streamgroup_sidecar import framing
from streamgroup_sidecar.acking import Acker
from streamgroup_sidecar.running import Sidecar
from tests.sidecar.conftest import eventually, group_pending, running, settings_for, wait_for_pending_zero
from tests.support.apps import Received, RecordingApp
from tests.support.redis_server import RedisServer


def produce(server: RedisServer, stream: str, count: int, **extra: str) -> list[str]:
    client = server.client()
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(stream, {"n": str(n), **extra})
    return [i.decode() for i in pipe.execute()]


class TestEveryEntryIsDeliveredAndAcked:
    async def test_thousands_of_entries_on_two_streams_arrive_once_each_and_leave_nothing_pending(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        client = redis_server.client()
        client.config_resetstat()
        expected = {("orders", i) for i in produce(redis_server, "orders", 2500)}
        expected |= {("refunds", i) for i in produce(redis_server, "refunds", 2500)}
        settings = settings_for(redis_server, app, streams="orders,refunds", max_in_flight="16")
        async with running(settings) as sidecar:
            await app.wait_until(lambda: len(app.succeeded()) >= len(expected), timeout=120)
            await wait_for_pending_zero(client, ["orders", "refunds"])
            round_trips = sidecar.metrics.acks._value.get()
        got = [r.key for r in app.received]
        assert set(got) == expected
        assert len(got) == len(expected), "no entry is delivered twice in a run without faults"
        # Acks travel in batches: far fewer XACK round trips than entries, one XACK per stream in each.
        assert round_trips < len(expected) / 4
        assert int(client.info("commandstats")["cmdstat_xack"]["calls"]) <= 2 * round_trips

    async def test_entries_added_while_running_are_delivered_in_stream_order_per_stream_with_one_in_flight(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        async with running(settings_for(redis_server, app, max_in_flight="1", start_from="$")):
            ids = produce(redis_server, "orders", 50)
            await app.wait_until(lambda: len(app.succeeded()) >= 50)
        assert [r.id for r in app.received] == ids

    async def test_the_sidecar_never_holds_more_entries_than_its_in_flight_limit(
        self, redis_server: RedisServer
    ) -> None:
        async def slow(_: Received) -> web.StreamResponse:
            await asyncio.sleep(0.05)
            return web.Response(status=200)

        app = await RecordingApp(slow).start()
        try:
            client = redis_server.client()
            produce(redis_server, "orders", 120)
            held, pending = [], []
            async with running(settings_for(redis_server, app, max_in_flight="4")) as sidecar:
                while len(app.succeeded()) < 120:
                    held.append(sidecar.metrics.registry.get_sample_value("streamgroup_sidecar_in_flight"))
                    pending.append(group_pending(client, "orders"))
                    await asyncio.sleep(0.01)
                await wait_for_pending_zero(client, ["orders"])
            assert max(held) <= 4
            assert max(held) >= 2, "deliveries overlap"
            # Redis' pending list also holds entries already accepted whose XACK is on its way.
            assert max(pending) <= 2 * 4
        finally:
            await app.stop()


class TestAcknowledgementBatching:
    async def test_a_lone_ack_goes_at_once_and_acks_under_load_wait_to_share_a_round_trip(self) -> None:
        loop = asyncio.get_running_loop()
        sent: list[dict[str, list[str]]] = []

        async def send(batch: dict[str, list[str]]) -> None:
            sent.append(batch)

        acker = Acker(send, lambda _: None, lambda: None, linger=0.3, busy_window=1.0)
        task = asyncio.create_task(acker.run())
        try:
            started = loop.time()
            acker.ack("orders", ["1-0"])  # nothing was sent for a while: no reason to wait
            while not sent:
                await asyncio.sleep(0.005)
            assert loop.time() - started < 0.25 and sent == [{"orders": ["1-0"]}]
            acker.ack("orders", ["2-0"])  # right after a round trip: wait for company
            await asyncio.sleep(0.05)
            acker.ack("orders", ["3-0"])
            assert await acker.flush(2.0)
            assert sent[1:] == [{"orders": ["2-0", "3-0"]}]
        finally:
            task.cancel()


class TestContentArrivesIntact:
    async def test_unicode_empty_values_many_fields_and_binary_bytes_survive(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        client = redis_server.client()
        many = {f"f{i}": f"v{i}" for i in range(500)}
        blob = bytes(range(256)) * 4
        ids = {
            "unicode": client.xadd("orders", {"text": "naïve café — 東京 🚀", "emoji": "🙂"}).decode(),
            "empty": client.xadd("orders", {"empty": "", "": "nameless"}).decode(),
            "many": client.xadd("orders", many).decode(),
            "binary": client.xadd("orders", {"blob": blob, b"\xc3\x28": b"bad-name"}).decode(),
        }
        async with running(settings_for(redis_server, app)):
            await app.wait_until(lambda: len(app.succeeded()) >= 4)
        by_id = {r.id: r for r in app.received}
        assert by_id[ids["unicode"]].json() == {"text": "naïve café — 東京 🚀", "emoji": "🙂"}
        assert by_id[ids["empty"]].json() == {"empty": "", "": "nameless"}
        assert by_id[ids["many"]].json() == many
        binary = by_id[ids["binary"]]
        assert binary.headers["streamgroup-binary"] == "base64"
        body = binary.json()
        assert base64.b64decode(body["blob"]["base64"]) == blob
        assert body["base64:" + base64.b64encode(b"\xc3\x28").decode()] == "bad-name"
        assert "streamgroup-binary" not in by_id[ids["unicode"]].headers

    async def test_raw_mode_posts_the_payload_field_byte_for_byte_with_its_content_type(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        client = redis_server.client()
        payload = orjson.dumps({"order": 7, "items": ["a", "b"]})
        good = client.xadd("orders", {"type": "order", "payload": payload}).decode()
        missing = client.xadd("orders", {"type": "order"}).decode()
        settings = settings_for(redis_server, app, body="raw", body_field="payload",
                                content_type="application/json")
        async with running(settings):
            await app.wait_until(lambda: len(app.succeeded()) >= 1)
            await wait_for_pending_zero(client, ["orders"])
        [received] = app.received
        assert (received.id, received.body) == (good, payload)
        assert received.headers["content-type"] == "application/json"
        # The entry without the payload field is not lost: it is a dead letter, with the reason.
        [(_, dead)] = client.xrange("orders:dead")
        assert dead[b"sg:id"].decode() == missing
        assert dead[b"sg:reason"] == b"missing-body-field"
        assert dead[b"type"] == b"order"

    async def test_headers_identify_the_entry_and_form_a_cloudevent(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        entry_id = redis_server.client().xadd("orders", {"k": "v"}, id="1700000000250-0").decode()
        async with running(settings_for(redis_server, app, consumer="pod-a", cloudevents_type="com.example.order")):
            await app.wait_until(lambda: len(app.succeeded()) >= 1)
        headers = app.received[0].headers
        assert headers["streamgroup-stream"] == "orders"
        assert headers["streamgroup-id"] == entry_id == headers["ce-id"]
        assert headers["idempotency-key"] == f"orders/{entry_id}"
        assert headers["streamgroup-group"] == "workers"
        assert headers["streamgroup-consumer"] == "pod-a"
        assert headers["streamgroup-delivery-count"] == "1"
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-type"] == "com.example.order"
        assert headers["ce-source"] == "/streams/orders"
        assert headers["ce-time"] == "2023-11-14T22:13:20.250Z"


def failing_first(times: int, reply: web.StreamResponse | None = None) -> object:
    """A behaviour answering 500 (or ``reply``) to the first ``times`` attempts of each entry."""
    seen: dict[str, int] = {}

    def behaviour(got: Received) -> web.StreamResponse:
        seen[got.id] = seen.get(got.id, 0) + 1
        if seen[got.id] <= times:
            return reply if reply is not None else web.Response(status=500)
        return web.Response(status=204)

    return behaviour


class TestFailuresAreRetried:
    async def test_server_errors_are_retried_until_the_app_accepts(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        app.behaviour = failing_first(3)  # type: ignore[assignment]
        produce(redis_server, "orders", 20)
        async with running(settings_for(redis_server, app)) as sidecar:
            await app.wait_until(lambda: len(app.succeeded()) >= 20)
            await wait_for_pending_zero(redis_server.client(), ["orders"])
            retries = sidecar.metrics.retries.labels("orders", "status-500")._value.get()
        assert len(app.received) == 80
        first = app.received[0].id
        counts = sorted(int(r.headers["streamgroup-delivery-count"]) for r in app.received if r.id == first)
        assert counts == [1, 2, 3, 4]
        assert retries == 60

    async def test_timeouts_are_retried(self, redis_server: RedisServer) -> None:
        calls = 0

        async def slow_once(_: Received) -> web.StreamResponse:
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.sleep(1.0)
            return web.Response(status=200)

        app = await RecordingApp(slow_once).start()
        try:
            produce(redis_server, "orders", 1)
            async with running(settings_for(redis_server, app, request_timeout="200ms")) as sidecar:
                await app.wait_until(lambda: len(app.succeeded()) >= 2)
                await wait_for_pending_zero(redis_server.client(), ["orders"])
                assert sidecar.metrics.retries.labels("orders", "timeout")._value.get() == 1
        finally:
            await app.stop()

    async def test_an_app_that_is_not_listening_yet_gets_every_entry_once_it_starts(
        self, redis_server: RedisServer
    ) -> None:
        app = RecordingApp()  # not started: connections are refused
        produce(redis_server, "orders", 30)
        async with running(settings_for(redis_server, app)) as sidecar:
            await asyncio.sleep(0.5)
            assert app.received == []
            assert sidecar.metrics.retries.labels("orders", "connection")._value.get() > 0
            assert sidecar.health.app_up is False
            await app.start()
            try:
                await app.wait_until(lambda: len(app.succeeded()) >= 30)
                await wait_for_pending_zero(redis_server.client(), ["orders"])
                assert sidecar.health.app_up is True
            finally:
                await app.stop()

    async def test_a_refused_app_is_retried_on_a_short_back_off_of_its_own_that_settles_near_a_second(
        self, redis_server: RedisServer
    ) -> None:
        app = RecordingApp()  # not started: connections are refused
        produce(redis_server, "orders", 1)
        # The --retry-* back-off would wait 10 s after the first failure; an unreachable app is not the
        # entry's fault and gets 100 ms doubling to 1 s (± 20%) instead, never counted.
        settings = settings_for(redis_server, app, retry_initial="10s", retry_max="1m", max_deliveries="1")
        loop = asyncio.get_running_loop()
        times: list[float] = []
        async with running(settings) as sidecar:
            tally = sidecar.metrics.stream("orders")
            deadline = loop.time() + 15  # 4.5 s nominal for 8 attempts
            while len(times) < 8:
                times += [loop.time()] * (tally.attempts.get("connection", 0) - len(times))
                assert loop.time() < deadline, f"only {len(times)} attempts"
                await asyncio.sleep(0.01)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert times[4] - times[0] < 3, gaps  # 0.1 + 0.2 + 0.4 + 0.8 s nominal
        assert all(gap >= 0.8 for gap in gaps[4:]), gaps  # then capped at 1 s ± 20%: it does not hammer the app
        assert redis_server.client().exists("orders:dead") == 0

    async def test_an_app_whose_tls_handshake_fails_is_unreachable_and_those_attempts_never_count(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        produce(redis_server, "orders", 3)
        https = app.url.replace("http://", "https://")  # the app speaks plain HTTP: every handshake fails
        settings = settings_for(redis_server, app, app_url=https, max_deliveries="1", claim_min_idle="600ms")
        async with running(settings) as sidecar:
            await eventually(lambda: sidecar.metrics.retries.labels("orders", "tls")._value.get() >= 6, True)
            assert sidecar.health.app_up is False
            await asyncio.sleep(0.5)  # a lease renewal stores the attempts made so far in Redis
            pending = redis_server.client().xpending_range("orders", "workers", "-", "+", 10)
        assert [int(row["times_delivered"]) for row in pending] == [1, 1, 1]
        assert app.received == [] and redis_server.client().exists("orders:dead") == 0

    async def test_back_off_grows_between_attempts(self, redis_server: RedisServer, app: RecordingApp) -> None:
        app.behaviour = failing_first(4)  # type: ignore[assignment]
        produce(redis_server, "orders", 1)
        settings = settings_for(redis_server, app, retry_initial="100ms", retry_max="10s", retry_jitter="0")
        async with running(settings):
            await app.wait_until(lambda: len(app.succeeded()) >= 1)
        times = [r.at for r in app.received]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # 100ms, 200ms, 400ms, 800ms: each at least its back-off, each clearly longer than the last.
        for gap, expected in zip(gaps, [0.1, 0.2, 0.4, 0.8], strict=True):
            assert gap >= expected
        assert all(b > a * 1.5 for a, b in itertools.pairwise(gaps))

    @pytest.mark.parametrize("status", [429, 503])
    async def test_retry_after_is_honoured(self, redis_server: RedisServer, app: RecordingApp, status: int) -> None:
        app.behaviour = failing_first(1, web.Response(status=status, headers={"Retry-After": "1"}))  # type: ignore
        produce(redis_server, "orders", 1)
        async with running(settings_for(redis_server, app)):
            await app.wait_until(lambda: len(app.succeeded()) >= 1)
        first, second = app.received
        assert second.at - first.at >= 1.0  # not the 20ms back-off


class TestTheAppDecides:
    async def test_retry_and_drop_replies_are_obeyed_and_drop_is_kept_as_a_dead_letter(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        client = redis_server.client()
        retry_id, drop_id = produce(redis_server, "orders", 2)
        asked: dict[str, int] = {}

        def behaviour(got: Received) -> web.StreamResponse:
            asked[got.id] = asked.get(got.id, 0) + 1
            if got.id == drop_id:
                return web.json_response({"status": "DROP"})
            return web.json_response({"status": "RETRY" if asked[got.id] < 3 else "SUCCESS"})

        app.behaviour = behaviour  # type: ignore[assignment]
        async with running(settings_for(redis_server, app)):
            await app.wait_until(lambda: asked.get(retry_id) == 3)
            await wait_for_pending_zero(client, ["orders"])
        assert asked == {retry_id: 3, drop_id: 1}
        [(_, dead)] = client.xrange("orders:dead")
        assert (dead[b"sg:id"].decode(), dead[b"sg:reason"]) == (drop_id, b"dropped")

    async def test_a_status_that_can_never_succeed_dead_letters_at_once_with_the_original_fields(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        client = redis_server.client()
        app.behaviour = lambda got: web.Response(status=422)  # type: ignore[assignment]
        [entry_id] = produce(redis_server, "orders", 1, customer="ada")
        async with running(settings_for(redis_server, app, dead_letter_stream="dlq:{stream}")):
            await wait_for_pending_zero(client, ["orders"])
            await asyncio.sleep(0.1)
        assert len(app.received) == 1
        [(_, dead)] = client.xrange("dlq:orders")
        assert dead[b"sg:stream"] == b"orders"
        assert dead[b"sg:id"].decode() == entry_id
        assert dead[b"sg:group"] == b"workers"
        assert dead[b"sg:consumer"] == b"c1"
        assert dead[b"sg:deliveries"] == b"1"
        assert dead[b"sg:reason"] == b"status-422"
        assert dead[b"sg:detail"] == b"last attempt: status-422"
        assert abs(int(dead[b"sg:time"]) / 1000 - time.time()) < 60
        assert (dead[b"n"], dead[b"customer"]) == (b"0", b"ada")

    async def test_an_entry_that_keeps_failing_is_dead_lettered_after_max_deliveries(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        client = redis_server.client()
        app.behaviour = lambda got: web.Response(status=500)  # type: ignore[assignment]
        produce(redis_server, "orders", 3)
        async with running(settings_for(redis_server, app, max_deliveries="4")) as sidecar:
            await wait_for_pending_zero(client, ["orders"])
            await eventually(lambda: sidecar.metrics.stream("orders").dead_lettered, 3)
        assert len(app.received) == 12
        rows = client.xrange("orders:dead")
        assert [(f[b"sg:reason"], f[b"sg:deliveries"]) for _, f in rows] == [
            (b"max-deliveries (status-500)", b"4")] * 3


class TestABrokenWorker:
    async def test_a_worker_that_dies_of_a_bug_stops_the_sidecar_and_leaves_its_entries_pending(
        self, redis_server: RedisServer, app: RecordingApp, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def broken(*_: object, **__: object) -> object:
            raise RuntimeError("a bug in the reply contract")

        monkeypatch.setattr(framing, "decide", broken)
        produce(redis_server, "orders", 3)
        sidecar = Sidecar(settings_for(redis_server, app))
        with pytest.raises(RuntimeError, match="a bug in the reply contract"):
            await asyncio.wait_for(sidecar.run(asyncio.Event()), 30)
        # Nothing was acknowledged: the entries wait, pending, for a restart or a peer to deliver them.
        assert group_pending(redis_server.client(), "orders") == 3


class TestRestart:
    async def test_a_restarted_sidecar_first_redelivers_its_own_pending_entries(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        client = redis_server.client()
        app.behaviour = lambda got: web.Response(status=503)  # type: ignore[assignment]
        ids = produce(redis_server, "orders", 5)
        async with running(settings_for(redis_server, app)):
            await app.wait_until(lambda: len(app.received) >= 5)
        assert group_pending(client, "orders") == 5  # stopped while failing: nothing acked, nothing lost
        first_run = len(app.received)

        app.behaviour = lambda got: web.Response(status=200)  # type: ignore[assignment]
        async with running(settings_for(redis_server, app)):
            await app.wait_until(lambda: len(app.succeeded()) >= 5)
            await wait_for_pending_zero(client, ["orders"])
        second_run = app.received[first_run:]
        assert sorted(r.id for r in second_run) == sorted(ids)
        # Redis counted the first run's reads and the re-read: the count is at least 2.
        assert all(int(r.headers["streamgroup-delivery-count"]) >= 2 for r in second_run)


class TestStartPositions:
    async def _delivered(self, server: RedisServer, app: RecordingApp, start: str) -> list[str]:
        client = server.client()
        for ms in (1000, 2000, 3000):
            client.xadd("orders", {"ms": str(ms)}, id=f"{ms}-0")
        async with running(settings_for(server, app, start_from=start)):
            await asyncio.sleep(0.3)
            client.xadd("orders", {"ms": "later"}, id="4000-0")
            await app.wait_until(lambda: any(r.id == "4000-0" for r in app.received))
        return [r.id for r in app.received]

    @pytest.mark.parametrize("start, expected", [
        ("$", ["4000-0"]),
        ("0", ["1000-0", "2000-0", "3000-0", "4000-0"]),
        ("1000-0", ["2000-0", "3000-0", "4000-0"]),
        ("1970-01-01T00:00:02Z", ["2000-0", "3000-0", "4000-0"]),
        ("1970-01-01T00:00:02.001+00:00", ["3000-0", "4000-0"]),
    ])
    async def test_a_new_group_starts_where_configured(
        self, redis_server: RedisServer, app: RecordingApp, start: str, expected: list[str]
    ) -> None:
        assert await self._delivered(redis_server, app, start) == expected

    async def test_an_existing_group_is_never_moved(self, redis_server: RedisServer, app: RecordingApp) -> None:
        client = redis_server.client()
        client.xadd("orders", {"old": "1"}, id="1000-0")
        client.xgroup_create("orders", "workers", id="$")
        async with running(settings_for(redis_server, app, start_from="0")):
            client.xadd("orders", {"new": "1"}, id="2000-0")
            await app.wait_until(lambda: len(app.received) >= 1)
            await asyncio.sleep(0.2)
        assert [r.id for r in app.received] == ["2000-0"]

    async def test_a_missing_stream_is_created_with_the_group(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        client = redis_server.client()
        async with running(settings_for(redis_server, app, start_from="$")):
            await asyncio.sleep(0.2)
            assert [g["name"] for g in client.xinfo_groups("orders")] == [b"workers"]
