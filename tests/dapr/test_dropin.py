"""An unmodified Dapr subscriber app behind the sidecar (``--app-protocol dapr``), fed a stream written the
way Dapr's Redis component writes it: everything arrives, the app's answers are honoured, a group daprd was
consuming is taken over with nothing lost, bulk subscribers get bulk requests, and a sidecar killed with
``kill -9`` or a Redis restart loses nothing."""

from __future__ import annotations

import base64
import collections
import json
from collections.abc import Iterator

import pytest

from tests.dapr.conftest import (
    PUBSUB,
    UvicornApp,
    backlog,
    dapr_env,
    dead_letters,
    publish,
    until,
)
from tests.support.redis_server import RedisServer
from tests.support.sidecar_process import SidecarProcess

ORDERS_ROUTE = "/events/pubsub/orders"  # what DaprApp.subscribe registers when no route is given


@pytest.fixture
def sidecars() -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    yield started
    for sidecar in started:
        sidecar.cleanup()


def start(sidecars: list[SidecarProcess], env: dict[str, str]) -> SidecarProcess:
    sidecar = SidecarProcess(env).start()
    sidecars.append(sidecar)
    sidecar.wait_ready()
    return sidecar


def events(app: UvicornApp, route: str = ORDERS_ROUTE) -> list[dict[str, object]]:
    return [call["event"] for call in app.calls() if call["route"] == route]


class TestAnUnmodifiedSubscriber:
    async def test_it_receives_every_entry_dapr_wrote_as_the_cloudevent_dapr_made(
        self, redis_server: RedisServer, checkout: UvicornApp, sidecars: list[SidecarProcess]
    ) -> None:
        client = redis_server.client()
        written = [publish(client, "orders", {"orderId": n, "items": ["book"], "total": 12.5})
                   for n in range(60)]
        start(sidecars, dapr_env(redis_server, checkout, "checkout-0"))
        await until(lambda: backlog(client, "orders") == (0, 0), what="orders delivered and acked")
        received = events(checkout)
        assert sorted(received, key=lambda e: str(e["id"])) == sorted(written, key=lambda e: str(e["id"]))
        assert client.xlen("orders:dead") == 0

    async def test_a_handler_answering_drop_dead_letters_the_event_with_the_reason(
        self, redis_server: RedisServer, checkout: UvicornApp, sidecars: list[SidecarProcess]
    ) -> None:
        client = redis_server.client()
        kept = publish(client, "orders", {"orderId": 1})
        dropped = publish(client, "orders", {"orderId": 2, "outcome": "drop"})
        start(sidecars, dapr_env(redis_server, checkout, "checkout-0"))
        await until(lambda: backlog(client, "orders") == (0, 0), what="orders settled")
        [letter] = dead_letters(client, "orders:dead")
        assert letter["sg:reason"] == "dropped"
        assert json.loads(letter["data"]) == dropped  # the event as Dapr wrote it, to re-drive as it was
        assert [e["id"] for e in events(checkout)] == [kept["id"], dropped["id"]]

    async def test_a_handler_that_raises_gets_the_event_again_after_a_back_off(
        self, redis_server: RedisServer, checkout: UvicornApp, sidecars: list[SidecarProcess]
    ) -> None:
        client = redis_server.client()
        failing = publish(client, "orders", {"orderId": 1, "outcome": "fail-once"})
        retried = publish(client, "orders", {"orderId": 2, "outcome": "retry"})
        start(sidecars, dapr_env(redis_server, checkout, "checkout-0"))
        await until(lambda: backlog(client, "orders") == (0, 0), what="orders settled")
        calls = collections.Counter(e["id"] for e in events(checkout))
        assert calls == {failing["id"]: 2, retried["id"]: 2}  # a 500, then a RETRY: each once more
        assert client.xlen("orders:dead") == 0

    async def test_entries_that_are_no_cloudevent_are_wrapped_as_dapr_wraps_raw_payloads(
        self, redis_server: RedisServer, checkout: UvicornApp, sidecars: list[SidecarProcess]
    ) -> None:
        client = redis_server.client()
        plain_id = client.xadd("orders", {"data": b"plain text, not JSON"}).decode()
        fields_id = client.xadd("orders", {"orderId": "7", "total": "3.5"}).decode()
        event = publish(client, "payloads", {"orderId": 9})  # a CloudEvent, but the subscription is rawPayload
        start(sidecars, dapr_env(redis_server, checkout, "checkout-0", streams="orders,payloads"))
        await until(lambda: backlog(client, "orders") == (0, 0) and backlog(client, "payloads") == (0, 0),
                    what="everything delivered")
        by_id = {e["id"]: e for e in events(checkout)}
        plain, fields = by_id[f"orders/{plain_id}"], by_id[f"orders/{fields_id}"]
        assert plain["datacontenttype"] == "application/octet-stream"
        assert base64.b64decode(str(plain["data_base64"])) == b"plain text, not JSON"
        assert (plain["type"], plain["source"], plain["topic"], plain["pubsubname"]) == (
            "com.dapr.event.sent", "Dapr", "orders", PUBSUB)
        assert fields["datacontenttype"] == "application/json"
        assert fields["data"] == {"orderId": "7", "total": "3.5"}
        [raw] = events(checkout, "/payloads")
        assert json.loads(base64.b64decode(str(raw["data_base64"]))) == event


class TestTakingOverFromDaprd:
    async def test_a_group_half_consumed_by_daprd_is_taken_over_with_nothing_lost(
        self, redis_server: RedisServer, checkout: UvicornApp, sidecars: list[SidecarProcess]
    ) -> None:
        client = redis_server.client()
        written = [publish(client, "orders", {"orderId": n}) for n in range(40)]
        # What daprd does with consumerID "checkout": the group at 0, read under the consumer of that
        # same name; then it was stopped with 15 entries read and not acknowledged, and 10 acknowledged.
        client.xgroup_create("orders", "checkout", id="0")
        [[_, read]] = client.xreadgroup("checkout", "checkout", {"orders": ">"}, count=25)
        client.xack("orders", "checkout", *[entry_id for entry_id, _ in read[:10]])
        assert backlog(client, "orders") == (15, 15)
        start(sidecars, dapr_env(redis_server, checkout, "checkout-0", claim_min_idle="500ms",
                                 claim_interval="200ms"))
        await until(lambda: backlog(client, "orders") == (0, 0), what="everything delivered and acked")
        received = {e["id"] for e in events(checkout)}
        assert received == {e["id"] for e in written[10:]}  # the 15 daprd held, and the 15 never read
        consumers = {c["name"].decode(): c["pending"] for c in client.xinfo_consumers("orders", "checkout")}
        assert consumers.get("checkout", 0) == 0


class TestBulkSubscribe:
    async def test_batch_mode_serves_a_bulk_subscriber_its_envelopes_and_honours_each_status(
        self, redis_server: RedisServer, sidecars: list[SidecarProcess]
    ) -> None:
        app = UvicornApp("bulk", "BULK_RECORD").start()
        try:
            client = redis_server.client()
            written = [publish(client, "orders", {"orderId": n, "outcome": "drop" if n == 7 else "ship"})
                       for n in range(35)]
            start(sidecars, dapr_env(redis_server, app, "checkout-0", batch_size="10", batch_wait="50ms",
                                     max_in_flight="20"))
            await until(lambda: backlog(client, "orders") == (0, 0), what="everything settled")
            requests = app.calls()
            assert all(r["type"] == "com.dapr.event.sent.bulk" and r["topic"] == "orders"
                       and r["pubsubname"] == PUBSUB and 1 <= len(r["entries"]) <= 10 for r in requests)
            assert len(requests) < len(written)
            entries = [entry for r in requests for entry in r["entries"]]
            assert sorted(str(e["event"]["id"]) for e in entries) == sorted(str(e["id"]) for e in written)
            assert {e["contentType"] for e in entries} == {"application/cloudevents+json"}
            [letter] = dead_letters(client, "orders:dead")
            assert letter["sg:reason"] == "dropped"
            assert json.loads(letter["data"]) == written[7]
        finally:
            app.cleanup()


class TestRoutingRules:
    async def test_each_event_goes_to_the_first_rule_it_matches_and_one_a_rule_cannot_read_is_dead_lettered(
        self, redis_server: RedisServer, sidecars: list[SidecarProcess]
    ) -> None:
        app = UvicornApp("routed", "ROUTED_RECORD").start()
        try:
            client = redis_server.client()
            widget = publish(client, "orders", {"price": 500}, type="widget")
            expensive = publish(client, "orders", {"price": 150}, type="order")
            cheap = publish(client, "orders", {"price": 10}, type="order")
            unpriced = publish(client, "orders", {"note": "no price"}, type="order")
            start(sidecars, dapr_env(redis_server, app, "checkout-0"))
            await until(lambda: backlog(client, "orders") == (0, 0), what="everything settled")
            routes = {call["event"]["id"]: call["route"] for call in app.calls()}
            assert routes == {widget["id"]: "/widgets", expensive["id"]: "/expensive", cheap["id"]: "/orders"}
            assert {call["content_type"] for call in app.calls()} == {"application/cloudevents+json"}
            [letter] = dead_letters(client, "orders:dead")
            assert letter["sg:reason"] == "routing-error"
            assert "event.data.price > 100" in letter["sg:detail"]
            assert json.loads(letter["data"])["id"] == unpriced["id"]
        finally:
            app.cleanup()

    async def test_a_rule_that_is_no_cel_condition_stops_the_sidecar_at_start_naming_it(
        self, redis_server: RedisServer
    ) -> None:
        app = UvicornApp("routed", "ROUTED_RECORD", ROUTED_RULE="event.data.price >").start()
        sidecar = SidecarProcess(dapr_env(redis_server, app, "checkout-0")).start()
        try:
            assert sidecar.wait(30) == 2
            [line] = [line for line in sidecar.logs().splitlines() if line.startswith("streamgroup-sidecar:")]
            assert "'event.data.price >'" in line and "/expensive" in line and "orders" in line
        finally:
            sidecar.cleanup()
            app.cleanup()


@pytest.mark.slow
class TestFaults:
    async def test_a_sidecar_killed_with_sigkill_loses_nothing_its_successor_takes_over(
        self, redis_server: RedisServer, checkout: UvicornApp, sidecars: list[SidecarProcess]
    ) -> None:
        client = redis_server.client()
        written = {publish(client, "orders", {"orderId": n})["id"] for n in range(600)}
        fast = {"claim_min_idle": "1s", "claim_interval": "300ms", "max_in_flight": "8"}
        victim = start(sidecars, dapr_env(redis_server, checkout, "checkout-0", **fast))
        await until(lambda: len(checkout.calls()) >= 100, what="the first sidecar delivering")
        victim.kill()
        start(sidecars, dapr_env(redis_server, checkout, "checkout-1", **fast))
        await until(lambda: backlog(client, "orders") == (0, 0), timeout=60, what="everything acked")
        received = collections.Counter(e["id"] for e in events(checkout))
        assert set(received) == written
        assert client.xlen("orders:dead") == 0

    async def test_a_redis_restart_mid_run_loses_nothing(
        self, checkout: UvicornApp, sidecars: list[SidecarProcess]
    ) -> None:
        server = RedisServer(appendonly=True).start()
        try:
            client = server.client()
            written = {publish(client, "orders", {"orderId": n})["id"] for n in range(600)}
            sidecar = start(sidecars, dapr_env(server, checkout, "checkout-0", max_in_flight="8"))
            await until(lambda: len(checkout.calls()) >= 100, what="delivering")
            server.restart()
            written |= {publish(server.client(), "orders", {"orderId": n})["id"] for n in range(600, 800)}
            await until(lambda: backlog(server.client(), "orders") == (0, 0), timeout=60, what="everything acked")
            assert {e["id"] for e in events(checkout)} == written
            await until(sidecar.ready, what="ready again")
            assert server.client().xlen("orders:dead") == 0
        finally:
            server.cleanup()

    async def test_a_redeployed_app_is_asked_its_subscriptions_again_and_gets_events_on_its_new_route(
        self, redis_server: RedisServer, checkout: UvicornApp, sidecars: list[SidecarProcess]
    ) -> None:
        client = redis_server.client()
        first = publish(client, "orders", {"orderId": 1})
        start(sidecars, dapr_env(redis_server, checkout, "checkout-0"))
        await until(lambda: backlog(client, "orders") == (0, 0), what="the first order acked")
        checkout.kill()
        second = publish(client, "orders", {"orderId": 2})
        checkout.start(CHECKOUT_ROUTE="/v2/orders")
        await until(lambda: backlog(client, "orders") == (0, 0), what="the second order acked")
        assert [e["id"] for e in events(checkout)] == [first["id"]]
        assert [e["id"] for e in events(checkout, "/v2/orders")] == [second["id"]]
        assert client.xlen("orders:dead") == 0
