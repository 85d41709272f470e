"""Faults, injected for real: killed sidecars, a restarted Redis, a failing or absent app, trimming.

Each test is bounded in entries and time and asserts what users rely on: every entry is
delivered at least once, the group ends with nothing pending, and what cannot be delivered
is in the dead-letter stream with its reason.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import zlib

import pytest
from aiohttp import web

from streamgroup_sidecar import running as running_module
from streamgroup_sidecar.reading import GroupLost
from streamgroup_sidecar.running import Sidecar
from tests.sidecar.conftest import eventually, group_pending, running, settings_for, wait_for_pending_zero
from tests.support.apps import Received, RecordingApp
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.sidecar_process import SidecarProcess

FAST_RECLAIM = {"claim_min_idle": "1s", "claim_interval": "300ms"}


def produce(server: RedisServer, stream: str, count: int, **fields: str) -> list[str]:
    client = server.client()
    ids: list[str] = []
    for start in range(0, count, 1000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(count, start + 1000)):
            pipe.xadd(stream, {"n": str(n), **fields})
        ids += [i.decode() for i in pipe.execute()]
    return ids


def process_env(server: RedisServer, app: RecordingApp, consumer: str, **extra: str) -> dict[str, str]:
    env = {
        "SG_REDIS_URL": server.url, "SG_STREAMS": "orders", "SG_GROUP": "workers", "SG_CONSUMER": consumer,
        "SG_APP_URL": app.url, "SG_START_FROM": "0", "SG_READ_BLOCK": "200ms", "SG_STATS_INTERVAL": "1s",
        "SG_RETRY_INITIAL": "20ms", "SG_RETRY_MAX": "200ms", "SG_LOG_LEVEL": "info",
    }
    env.update({f"SG_{k.upper()}": v for k, v in extra.items()})
    return env


@pytest.mark.slow
class TestCrashedConsumers:
    async def test_a_sidecar_killed_mid_run_loses_nothing_and_duplicates_stay_within_its_window(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        total, window = 20_000, 32
        ids = set(produce(redis_server, "orders", total))
        victim = SidecarProcess(process_env(redis_server, app, "victim", max_in_flight=str(window), **FAST_RECLAIM))
        survivor = SidecarProcess(process_env(redis_server, app, "survivor", max_in_flight=str(window),
                                              **FAST_RECLAIM))
        try:
            victim.start()
            survivor.start()
            # Both must be delivering before the kill: the survivor alone can pass a quarter of the
            # stream while the victim is still importing, and a victim with nothing pending proves nothing.
            seen = {"scanned": 0, "victim": 0}

            def both_delivering() -> bool:
                fresh = app.received[seen["scanned"]:]
                seen["scanned"] += len(fresh)
                seen["victim"] += sum(r.headers["streamgroup-consumer"] == "victim" for r in fresh)
                return seen["scanned"] >= total // 4 and seen["victim"] >= window

            await app.wait_until(both_delivering, timeout=120)
            victim.kill()
            killed_at = len(app.received)
            await app.wait_until(lambda: {r.id for r in app.succeeded()} >= ids, timeout=180)
            await wait_for_pending_zero(redis_server.client(), ["orders"], timeout=30)
        finally:
            victim.cleanup()
            survivor.cleanup()
        counts = collections.Counter(r.id for r in app.received)
        duplicates = sum(n - 1 for n in counts.values())
        print(f"\nkill -9 after {killed_at} of {total} deliveries: {duplicates} duplicates "
              f"(in-flight window {window}, ack batches in flight at most as many)")
        assert set(counts) == ids
        assert duplicates <= 2 * window
        assert any(r.headers["streamgroup-consumer"] == "survivor" and
                   int(r.headers["streamgroup-delivery-count"]) >= 2 for r in app.received), \
            "the survivor reclaimed the victim's pending entries"

    async def test_entries_left_by_a_vanished_consumer_are_reclaimed_with_their_delivery_count(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        client = redis_server.client()
        produce(redis_server, "orders", 5)
        client.xgroup_create("orders", "workers", id="0")
        client.xreadgroup("workers", "ghost", {"orders": ">"})  # read, never acked
        async with running(settings_for(redis_server, app, **FAST_RECLAIM)) as sidecar:
            await app.wait_until(lambda: len(app.succeeded()) >= 5, timeout=15)
            await wait_for_pending_zero(client, ["orders"])
            assert sidecar.metrics.reclaimed.labels("orders")._value.get() == 5
        assert all(r.headers["streamgroup-delivery-count"] == "2" for r in app.received)

    async def test_entries_trimmed_before_delivery_are_recorded_as_dead_letters(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        client = redis_server.client()
        ids = produce(redis_server, "orders", 5)
        client.xgroup_create("orders", "workers", id="0")
        client.xreadgroup("workers", "ghost", {"orders": ">"})
        client.xtrim("orders", maxlen=0, approximate=False)  # the payloads are gone, the PEL still has them
        async with running(settings_for(redis_server, app, **FAST_RECLAIM)) as sidecar:
            await wait_for_pending_zero(client, ["orders"], timeout=15)
            await eventually(lambda: sidecar.metrics.dead_letters.labels("orders", "trimmed")._value.get(), 5)
        dead = client.xrange("orders:dead")
        assert [f[b"sg:id"].decode() for _, f in dead] == ids
        assert {f[b"sg:reason"] for _, f in dead} == {b"trimmed"}
        assert app.received == []

    async def test_a_slow_app_never_gets_an_entry_twice_because_of_a_peers_sweep(
        self, redis_server: RedisServer
    ) -> None:
        async def slow(_: Received) -> web.StreamResponse:
            await asyncio.sleep(1.5)  # much longer than --claim-min-idle
            return web.Response(status=200)

        app = await RecordingApp(slow).start()
        try:
            produce(redis_server, "orders", 12)
            fast = {"claim_min_idle": "500ms", "claim_interval": "100ms", "max_in_flight": "4"}
            async with running(settings_for(redis_server, app, consumer="a", **fast)) as a, \
                    running(settings_for(redis_server, app, consumer="b", **fast)) as b:
                await app.wait_until(lambda: len(app.succeeded()) >= 12, timeout=30)
                await wait_for_pending_zero(redis_server.client(), ["orders"])
                lost = a.metrics.leases_lost.labels("orders")._value.get() + \
                    b.metrics.leases_lost.labels("orders")._value.get()
        finally:
            await app.stop()
        counts = collections.Counter(r.id for r in app.received)
        assert len(counts) == 12 and max(counts.values()) == 1
        assert lost == 0


@pytest.mark.slow
class TestRedisFaults:
    async def test_a_redis_restart_mid_run_loses_nothing_and_the_sidecar_recovers_by_itself(
        self, app: RecordingApp
    ) -> None:
        server = RedisServer(appendonly=True).start()
        try:
            client = server.client()
            ids = set(produce(server, "orders", 3000))
            async with running(settings_for(server, app, max_in_flight="16")) as sidecar:
                await app.wait_until(lambda: len(app.received) >= 1000, timeout=60)
                server.restart()
                ids |= set(produce(server, "orders", 1000))
                await app.wait_until(lambda: {r.id for r in app.succeeded()} >= ids, timeout=90)
                await wait_for_pending_zero(server.client(), ["orders"], timeout=30)
                assert sidecar.health.redis_ok
            assert client.xlen("orders:dead") == 0
        finally:
            server.cleanup()

    async def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
        self, app: RecordingApp, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="streamgroup")
        server = RedisServer(appendonly=True).start()
        try:
            settings = settings_for(server, app, stats_interval="100ms", claim_min_idle="300ms",
                                    claim_interval="100ms")
            async with running(settings):
                server.client().xadd("orders", {"k": "v"})
                await app.wait_until(lambda: len(app.succeeded()) >= 1)
                server.stop()
                await asyncio.sleep(2.5)  # reads, stats, leases and sweeps all fail meanwhile
                server.start()
                server.client().xadd("orders", {"k": "again"})
                await app.wait_until(lambda: len(app.succeeded()) >= 2, timeout=20)
                await asyncio.sleep(0.5)
        finally:
            server.cleanup()
        messages = [r.getMessage() for r in caplog.records if r.name == "streamgroup.sidecar"]
        assert messages.count("reaching Redis failed; retrying quietly until it recovers") == 1
        assert messages.count("reaching Redis recovered") == 1
        assert not [m for m in messages if "failed" in m and "reaching Redis" not in m]

    async def test_a_deleted_group_is_recreated_and_delivery_goes_on(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        client = redis_server.client()
        async with running(settings_for(redis_server, app, start_from="$")) as sidecar:
            client.xadd("orders", {"before": "1"})
            await app.wait_until(lambda: len(app.succeeded()) >= 1)
            client.xgroup_destroy("orders", "workers")
            await asyncio.sleep(0.5)
            client.xadd("orders", {"after": "1"})
            await app.wait_until(lambda: len(app.succeeded()) >= 2, timeout=15)
            assert sidecar.metrics.group_recreated._value.get() >= 1
        assert [g["name"] for g in client.xinfo_groups("orders")] == [b"workers"]

    async def test_with_on_group_loss_exit_the_sidecar_stops_instead(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        settings = settings_for(redis_server, app, start_from="$", on_group_loss="exit")
        sidecar = Sidecar(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(sidecar.run(stop))
        while not sidecar.health.groups_ok:
            await asyncio.sleep(0.01)
        redis_server.client().xgroup_destroy("orders", "workers")
        with pytest.raises(GroupLost):
            await asyncio.wait_for(task, 15)


@pytest.mark.slow
class TestAnUnhealthyApp:
    async def test_entries_failing_for_good_go_to_the_dead_letter_stream_and_the_rest_are_delivered(
        self, redis_server: RedisServer
    ) -> None:
        def behaviour(got: Received) -> web.StreamResponse:
            return web.Response(status=500 if got.json().get("poison") else 200)

        app = await RecordingApp(behaviour).start()
        try:
            client = redis_server.client()
            good = produce(redis_server, "orders", 200)
            bad = produce(redis_server, "orders", 5, poison="1")
            async with running(settings_for(redis_server, app, max_deliveries="3")):
                await wait_for_pending_zero(client, ["orders"], timeout=30)
        finally:
            await app.stop()
        assert {r.id for r in app.succeeded()} == set(good)
        dead = client.xrange("orders:dead")
        assert sorted(f[b"sg:id"].decode() for _, f in dead) == sorted(bad)
        assert {(f[b"sg:reason"], f[b"sg:deliveries"]) for _, f in dead} == {(b"max-deliveries (status-500)", b"3")}
        assert collections.Counter(r.id for r in app.received if r.id in bad) == {i: 3 for i in bad}

    async def test_an_app_down_for_seconds_dead_letters_nothing_and_gets_everything_when_back(
        self, redis_server: RedisServer
    ) -> None:
        app = RecordingApp()
        client = redis_server.client()
        ids = produce(redis_server, "orders", 200)
        async with running(settings_for(redis_server, app, max_deliveries="2", max_in_flight="8")) as sidecar:
            await asyncio.sleep(3)
            # While the app is down, nothing new is taken: only the first slots' worth is in hand.
            assert group_pending(client, "orders") <= 8
            assert not sidecar.health.app_up
            await app.start()
            try:
                await app.wait_until(lambda: {r.id for r in app.succeeded()} >= set(ids), timeout=30)
                await wait_for_pending_zero(client, ["orders"])
            finally:
                await app.stop()
        assert client.exists("orders:dead") == 0

    async def test_with_a_health_url_nothing_is_attempted_until_the_app_reports_healthy(
        self, redis_server: RedisServer
    ) -> None:
        healthy = False

        def behaviour(got: Received) -> web.StreamResponse:
            return web.Response(status=200)

        app = await RecordingApp(behaviour).start()
        health = await RecordingApp(lambda got: web.Response(status=200 if healthy else 503)).start()
        try:
            ids = produce(redis_server, "orders", 50)
            settings = settings_for(redis_server, app, app_health_url=health.url, app_health_interval="100ms",
                                    max_deliveries="1")
            async with running(settings) as sidecar:
                await health.wait_until(lambda: len(health.received) >= 3)
                await asyncio.sleep(0.3)
                early = len(app.received)
                assert not sidecar.health.app_up
                healthy = True
                await app.wait_until(lambda: {r.id for r in app.succeeded()} >= set(ids), timeout=15)
        finally:
            await app.stop()
            await health.stop()
        assert early <= 32, "at most the entries started before the first probe answered"
        assert redis_server.client().exists("orders:dead") == 0


@pytest.mark.slow
class TestGracefulShutdown:
    async def test_sigterm_finishes_in_flight_hands_pending_over_and_exits_within_the_grace_period(
        self, redis_server: RedisServer
    ) -> None:
        async def slow(_: Received) -> web.StreamResponse:
            await asyncio.sleep(0.3)
            return web.Response(status=200)

        app = await RecordingApp(slow).start()
        client = redis_server.client()
        ids = set(produce(redis_server, "orders", 300))
        leaving = SidecarProcess(process_env(redis_server, app, "leaving", max_in_flight="16",
                                             shutdown_grace="5s", claim_min_idle="2s", claim_interval="300ms",
                                             ordering_field="n"))
        try:
            async with running(settings_for(redis_server, app, consumer="staying", max_in_flight="4",
                                            claim_min_idle="2s", claim_interval="300ms")):
                leaving.start()
                await app.wait_until(
                    lambda: sum(r.headers["streamgroup-consumer"] == "leaving" for r in app.succeeded()) >= 20)
                started = time.monotonic()
                leaving.terminate()
                code = await asyncio.to_thread(leaving.wait, 10)
                took = time.monotonic() - started
                await app.wait_until(lambda: {r.id for r in app.succeeded()} >= ids, timeout=60)
                await wait_for_pending_zero(client, ["orders"])
        finally:
            leaving.cleanup()
            await app.stop()
        assert code == 0 and took < 5.0
        counts = collections.Counter(r.id for r in app.received)
        assert max(counts.values()) == 1, "in-flight deliveries finished and were acked, the rest handed over"
        consumers = {c["name"] for c in client.xinfo_consumers("orders", "workers")}
        assert b"leaving" not in consumers, "it left the group once nothing was pending for it"
        assert client.xinfo_groups("orders")[0]["name"] == b"workers", "the group itself stays"


    async def test_a_task_that_swallows_a_cancellation_is_still_stopped_at_shutdown(self) -> None:
        # Python 3.11's asyncio.wait_for (used by redis-py to send commands) can drop a cancellation.
        swallowed = 0

        async def stubborn() -> None:
            nonlocal swallowed
            while True:
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    if swallowed:
                        raise
                    swallowed += 1

        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        await asyncio.wait_for(running_module._finish(task, 0.0), 5.0)
        assert task.cancelled() and swallowed == 1


class TestOrdering:
    async def test_entries_sharing_a_key_arrive_one_at_a_time_in_stream_order_despite_failures(
        self, redis_server: RedisServer
    ) -> None:
        busy: set[str] = set()
        overlaps: list[str] = []
        concurrency = 0
        most = 0

        async def behaviour(got: Received) -> web.StreamResponse:
            nonlocal concurrency, most
            key = got.json()["account"]
            if key in busy:
                overlaps.append(key)
            busy.add(key)
            concurrency += 1
            most = max(most, concurrency)
            try:
                await asyncio.sleep(0.01)
                # Fail the first attempt of about one entry in four, deterministically.
                first = int(got.headers["streamgroup-delivery-count"]) == 1
                fail = first and zlib.crc32(got.id.encode()) % 4 == 0
                return web.Response(status=500 if fail else 200)
            finally:
                busy.discard(key)
                concurrency -= 1

        app = await RecordingApp(behaviour).start()
        try:
            client = redis_server.client()
            expected: dict[str, list[str]] = collections.defaultdict(list)
            for n in range(300):
                account = f"acct-{n % 6}"
                expected[account].append(client.xadd("orders", {"account": account, "n": str(n)}).decode())
            settings = settings_for(redis_server, app, ordering_field="account", max_in_flight="16")
            async with running(settings):
                await app.wait_until(lambda: len(app.succeeded()) >= 300, timeout=60)
                await wait_for_pending_zero(client, ["orders"])
        finally:
            await app.stop()
        assert overlaps == []
        delivered: dict[str, list[str]] = collections.defaultdict(list)
        for got in app.succeeded():
            delivered[got.json()["account"]].append(got.id)
        assert delivered == expected
        assert most > 1, "different keys are delivered in parallel"
        assert any(status == 500 for _, status in app.answered)


@pytest.mark.slow
class TestFailover:
    async def test_when_a_replica_answers_the_sidecar_reconnects_and_resumes_once_a_primary_is_back(
        self, app: RecordingApp, caplog: pytest.LogCaptureFixture
    ) -> None:
        server = RedisServer(appendonly=True).start()
        try:
            client = server.client()
            settings = settings_for(server, app, claim_min_idle="1s", claim_interval="200ms")
            mine = str(client.client_id())

            def sidecar_connections() -> set[str]:
                return {c["id"] for c in client.client_list()} - {mine}

            async with running(settings) as sidecar:
                client.xadd("orders", {"n": "before"})
                await app.wait_until(lambda: len(app.succeeded()) >= 1)
                before = sidecar_connections()
                # The address now leads to a replica (its primary unreachable, so it keeps its data).
                client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
                await asyncio.sleep(1.0)
                assert not sidecar.health.redis_ok
                assert sidecar.metrics.reconnects._value.get() >= 1
                client.execute_command("REPLICAOF", "NO", "ONE")  # promoted: a primary again
                client.xadd("orders", {"n": "after"})
                await app.wait_until(lambda: len(app.succeeded()) >= 2, timeout=20)
                await wait_for_pending_zero(client, ["orders"])
                assert sidecar.health.redis_ok
                after = sidecar_connections()
            assert before and after and not (before & after), "every old connection was dropped"
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert warnings == ["reaching Redis failed; retrying quietly until it recovers"], "one line per incident"
        finally:
            server.cleanup()
