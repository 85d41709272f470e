"""What the sidecar tells operators: /healthz, /readyz, /metrics and its log lines."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamgroup_sidecar import __main__ as sidecar_main
from streamgroup_sidecar import health as health_module
from streamgroup_sidecar.config import parse_settings
from streamgroup_sidecar.metrics import Metrics
from streamgroup_sidecar.running import Sidecar
from tests.sidecar.conftest import eventually, get, running, settings_for, wait_for_pending_zero
from tests.support.apps import RecordingApp
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class TestHealthEndpoints:
    async def test_healthz_and_readyz_answer_ok_when_redis_group_and_app_are_fine(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        async with running(settings_for(redis_server, app)) as sidecar:
            assert sidecar.health_port is not None
            status, body = await get(sidecar.health_port, "/healthz")
            assert status == 200 and orjson.loads(body)["ok"] is True
            status, body = await get(sidecar.health_port, "/readyz")
            assert status == 200
            assert orjson.loads(body) == {"ok": True, "redis": True, "group": True, "app": True, "permissions": True}

    async def test_healthz_fails_while_the_event_loop_is_stuck_and_answers_from_its_own_thread(
        self, redis_server: RedisServer, app: RecordingApp, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(health_module, "LOOP_STALL_LIMIT", 0.5)
        async with running(settings_for(redis_server, app)) as sidecar:
            port = sidecar.health_port
            assert port is not None

            def probe() -> tuple[int, dict[str, bool]]:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
                        return reply.status, json.loads(reply.read())
                except urllib.error.HTTPError as exc:
                    return exc.code, json.loads(exc.read())

            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                time.sleep(1.0)  # the event loop is stuck in a blocking call...
                answer = pool.submit(probe).result(timeout=5)  # ...and the probe still gets an answer
            assert answer == (503, {"ok": False, "event_loop": False})
            await asyncio.sleep(1.2)  # the loop turns again: the next heartbeat makes it live
            status, body = await get(port, "/healthz")
            assert status == 200 and orjson.loads(body) == {"ok": True, "event_loop": True}

    async def test_unknown_paths_and_methods_are_refused(self, redis_server: RedisServer, app: RecordingApp) -> None:
        async with running(settings_for(redis_server, app)) as sidecar:
            assert sidecar.health_port is not None
            status, _ = await get(sidecar.health_port, "/nope")
            assert status == 404
            async with aiohttp.ClientSession() as session, session.post(
                    f"http://127.0.0.1:{sidecar.health_port}/metrics") as reply:
                assert reply.status == 405

    async def test_readyz_fails_while_redis_is_down_and_recovers_by_itself(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        async with running(settings_for(redis_server, app)) as sidecar:
            port = sidecar.health_port
            assert port is not None
            redis_server.stop()
            for _ in range(100):
                status, body = await get(port, "/readyz")
                if status == 503:
                    break
                await asyncio.sleep(0.05)
            assert status == 503 and orjson.loads(body)["redis"] is False
            status, _ = await get(port, "/healthz")
            assert status == 200, "a Redis outage is not a reason to restart the sidecar"
            redis_server.start()
            redis_server.client().xadd("orders", {"after": "restart"})
            await app.wait_until(lambda: len(app.succeeded()) >= 1)
            status, _ = await get(port, "/readyz")
            assert status == 200

    async def test_readyz_reports_an_unreachable_app(self, redis_server: RedisServer) -> None:
        app = RecordingApp()  # never started
        redis_server.client().xadd("orders", {"k": "v"})
        async with running(settings_for(redis_server, app)) as sidecar:
            assert sidecar.health_port is not None
            for _ in range(100):
                status, body = await get(sidecar.health_port, "/readyz")
                if status == 503:
                    break
                await asyncio.sleep(0.05)
            assert orjson.loads(body) == {"ok": False, "redis": True, "group": True, "app": False, "permissions": True}


class TestLogs:
    async def test_credentials_in_the_app_urls_never_reach_the_log(
        self, redis_server: RedisServer, app: RecordingApp, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="streamgroup")
        secret = "app-S3cret"
        down = f"http://ops:{secret}@127.0.0.1:{free_port()}/health"  # nothing listens: the probe fails
        settings = settings_for(redis_server, app, app_url=app.url.replace("http://", f"http://ops:{secret}@"),
                                app_health_url=down, app_health_interval="50ms")
        async with running(settings) as sidecar:
            await eventually(lambda: sidecar.health.app_up, False)
            await eventually(lambda: any("did not answer 2xx" in str(r.__dict__) for r in caplog.records), True)
        logged = " ".join(str(record.__dict__) for record in caplog.records)
        assert "sidecar starting" in logged and "ops:***@" in logged
        assert secret not in logged


class TestTheReadyGauge:
    """``streamgroup_sidecar_ready`` follows readiness as it changes: nobody has to ask ``/readyz`` first."""

    async def test_it_drops_to_0_while_redis_is_down_and_returns_to_1_by_itself(
        self, redis_server: RedisServer, app: RecordingApp
    ) -> None:
        async with running(settings_for(redis_server, app)) as sidecar:
            def ready() -> float | None:
                return sidecar.metrics.registry.get_sample_value("streamgroup_sidecar_ready")

            await eventually(ready, 1.0)
            redis_server.stop()
            await eventually(ready, 0.0)
            assert not sidecar.health.redis_ok
            redis_server.start()
            await eventually(ready, 1.0, timeout=20)

    async def test_it_reads_0_while_the_app_is_unreachable(self, redis_server: RedisServer) -> None:
        app = RecordingApp()  # never started
        redis_server.client().xadd("orders", {"k": "v"})
        async with running(settings_for(redis_server, app)) as sidecar:
            await eventually(lambda: sidecar.health.app_up, False)
            assert sidecar.health.redis_ok and sidecar.health.groups_ok, "the app alone makes it 0"
            assert sidecar.metrics.registry.get_sample_value("streamgroup_sidecar_ready") == 0.0


class TestMetrics:
    async def test_metrics_count_what_happened_and_report_the_group_state(
        self, redis_server: RedisServer
    ) -> None:
        def behaviour(got: object) -> web.StreamResponse:
            body = got.json()  # type: ignore[attr-defined]
            return web.Response(status={"ok": 200, "bad": 422, "flaky": 200}[body["kind"]])

        app = await RecordingApp(behaviour).start()
        try:
            client = redis_server.client()
            for kind in ["ok"] * 7 + ["bad"] * 2:
                client.xadd("orders", {"kind": kind})
            async with running(settings_for(redis_server, app, streams="orders,other")) as sidecar:
                await wait_for_pending_zero(client, ["orders"])
                assert sidecar.health_port is not None
                await asyncio.sleep(0.3)  # a stats refresh after the last ack
                _, text = await get(sidecar.health_port, "/metrics")
        finally:
            await app.stop()
        found = samples(text)
        assert found[("streamgroup_sidecar_entries_total", (("outcome", "acked"), ("stream", "orders")))] == 7
        assert found[("streamgroup_sidecar_entries_total", (("outcome", "dead_lettered"), ("stream", "orders")))] == 2
        assert found[("streamgroup_sidecar_delivery_attempts_total", (("result", "ok"), ("stream", "orders")))] == 7
        assert found[("streamgroup_sidecar_delivery_attempts_total",
                      (("result", "status-422"), ("stream", "orders")))] == 2
        assert found[("streamgroup_sidecar_delivery_duration_seconds_count", (("stream", "orders"),))] == 9
        assert found[("streamgroup_sidecar_in_flight", ())] == 0
        assert found[("streamgroup_sidecar_group_pending", (("group", "workers"), ("stream", "orders")))] == 0
        assert found[("streamgroup_sidecar_group_lag", (("group", "workers"), ("stream", "orders")))] == 0
        assert ("streamgroup_sidecar_group_oldest_pending_age_seconds",
                (("group", "workers"), ("stream", "orders"))) not in found
        assert found[("streamgroup_sidecar_ack_batches_total", ())] >= 1

    async def test_lag_pending_and_oldest_age_follow_redis(self, redis_server: RedisServer) -> None:
        release = asyncio.Event()

        async def held(_: object) -> web.StreamResponse:
            await release.wait()
            return web.Response(status=200)

        app = await RecordingApp(held).start()
        try:
            client = redis_server.client()
            for n in range(10):
                client.xadd("orders", {"n": str(n)})
            async with running(settings_for(redis_server, app, max_in_flight="4")) as sidecar:
                assert sidecar.health_port is not None
                await app.wait_until(lambda: len(app.received) >= 4)
                await asyncio.sleep(0.3)
                found = samples((await get(sidecar.health_port, "/metrics"))[1])
                labels = (("group", "workers"), ("stream", "orders"))
                assert found[("streamgroup_sidecar_group_pending", labels)] == 4
                assert found[("streamgroup_sidecar_group_lag", labels)] == 6
                assert 0 <= found[("streamgroup_sidecar_group_oldest_pending_age_seconds", labels)] < 30
                assert found[("streamgroup_sidecar_in_flight", ())] == 4
                release.set()
                await wait_for_pending_zero(client, ["orders"])
        finally:
            await app.stop()

    async def test_the_exposition_passes_promtool_lint(self, redis_server: RedisServer, app: RecordingApp) -> None:
        redis_server.client().xadd("orders", {"k": "v"})
        async with running(settings_for(redis_server, app)) as sidecar:
            await app.wait_until(lambda: len(app.succeeded()) >= 1)
            await asyncio.sleep(0.2)
            assert sidecar.health_port is not None
            _, text = await get(sidecar.health_port, "/metrics")
        binary = shutil.which("promtool")
        assert binary, "promtool is missing: hack/setup.sh installs Debian's prometheus package"
        lint = subprocess.run([binary, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr


class TestHistogramsWithoutLocks:
    def test_a_value_on_a_bound_counts_in_that_bucket_and_buckets_are_cumulative(self) -> None:
        registry = CollectorRegistry()
        tally = Metrics(registry).stream("orders")
        for seconds in (0.001, 0.0011, 0.5, 45.0):
            tally.latency.observe(seconds)
        found = {
            (sample.name, sample.labels.get("le")): sample.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for sample in family.samples if sample.name.startswith("streamgroup_sidecar_delivery_duration")
        }
        assert found[("streamgroup_sidecar_delivery_duration_seconds_bucket", "0.001")] == 1
        assert found[("streamgroup_sidecar_delivery_duration_seconds_bucket", "0.0025")] == 2
        assert found[("streamgroup_sidecar_delivery_duration_seconds_bucket", "0.5")] == 3
        assert found[("streamgroup_sidecar_delivery_duration_seconds_bucket", "30.0")] == 3
        assert found[("streamgroup_sidecar_delivery_duration_seconds_bucket", "+Inf")] == 4
        assert found[("streamgroup_sidecar_delivery_duration_seconds_count", None)] == 4
        assert abs(found[("streamgroup_sidecar_delivery_duration_seconds_sum", None)] - 45.5021) < 1e-9

    def test_every_configured_stream_has_its_series_at_zero_before_any_entry(self) -> None:
        registry = CollectorRegistry()
        Sidecar(parse_settings([], {"SG_REDIS_URL": "redis://127.0.0.1:1/0", "SG_STREAMS": "orders,refunds",
                                    "SG_GROUP": "workers", "SG_APP_URL": "http://127.0.0.1:1/"}), registry=registry)
        text = generate_latest(registry).decode()
        for stream in ("orders", "refunds"):
            for outcome in ("acked", "dead_lettered"):
                assert f'streamgroup_sidecar_entries_total{{outcome="{outcome}",stream="{stream}"}} 0.0' in text


class TestTheProcess:
    async def test_the_command_logs_json_lines_without_secrets_and_exits_0_on_sigterm(self) -> None:
        server = RedisServer(password="pa55-word-xyz").start()
        app = await RecordingApp().start()
        try:
            client = server.client()
            client.xadd("orders", {"k": "v"})
            health = free_port()
            env = {
                "PATH": os.environ["PATH"], "HOSTNAME": "pod-x",
                "SG_REDIS_URL": server.url, "SG_STREAMS": "orders", "SG_GROUP": "workers",
                "SG_APP_URL": app.url, "SG_START_FROM": "0", "SG_HEALTH_HOST": "127.0.0.1",
                "SG_HEALTH_PORT": str(health), "SG_READ_BLOCK": "200ms",
            }
            with tempfile.TemporaryFile() as err:
                process = subprocess.Popen([sys.executable, "-m", "streamgroup_sidecar"], env=env,
                                           stderr=err, stdout=subprocess.DEVNULL)
                try:
                    await app.wait_until(lambda: len(app.succeeded()) >= 1, timeout=30)
                    await wait_for_pending_zero(client, ["orders"])
                finally:
                    process.send_signal(signal.SIGTERM)
                    code = await asyncio.to_thread(process.wait, 30)
                err.seek(0)
                lines = err.read().decode().splitlines()
        finally:
            await app.stop()
            server.cleanup()
        assert code == 0
        records = [orjson.loads(line) for line in lines]  # every line is one JSON object
        assert {"ts", "level", "logger", "msg"} <= set(records[0])
        assert any(r["msg"] == "sidecar starting" and r["consumer"] == "pod-x" for r in records)
        assert records[-1]["msg"] == "stopped"
        assert "pa55-word-xyz" not in "\n".join(lines)
        assert app.received[0].headers["streamgroup-consumer"] == "pod-x"

    async def test_cyclic_garbage_is_freed_on_a_clock_even_when_allocations_are_few(self) -> None:
        # The process collects only every 50,000 allocations (__main__._tune_gc): at a few entries
        # a second that is hours, so a clock collects too. Here automatic collection is off altogether.
        class Node:
            other: Node

        def cycle() -> weakref.ref[Node]:
            a, b = Node(), Node()
            a.other, b.other = b, a
            return weakref.ref(a)

        gc.disable()
        try:
            before = cycle()
            clock = asyncio.create_task(sidecar_main._collect_on_a_clock(0.05))
            await asyncio.sleep(0.3)
            after = cycle()  # made after the last run of the clock: still there until the next one
            clock.cancel()
        finally:
            gc.enable()
        assert before() is None
        assert after() is not None
        gc.collect()
