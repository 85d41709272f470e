"""The Dapr protocol's pure decisions: subscriptions read as daprd reads them, events wrapped and routed as
daprd does, and replies (single and bulk) mapped onto Streamgroup's verdicts."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import orjson
import pytest

from streamgroup_sidecar.config import ConfigError, parse_settings
from streamgroup_sidecar.dapr import (
    DaprFraming,
    Routes,
    RoutingError,
    SubscriptionError,
    event_of,
    expired,
    parse_subscriptions,
    route_for,
    select,
)
from streamgroup_sidecar.entries import Entry
from streamgroup_sidecar.replies import Action, Attempt

SETTINGS = parse_settings([], {"SG_STREAMS": "orders", "SG_GROUP": "checkout", "SG_CONSUMER": "c",
                               "SG_APP_PROTOCOL": "dapr", "SG_MAX_DELIVERIES": "3"})


def subscribe(*items: dict[str, object]) -> bytes:
    return orjson.dumps(list(items))


def entry(data: object = None, stream: str = "orders", entry_id: str = "1700000000000-0", **fields: bytes) -> Entry:
    pairs = [] if data is None else [(b"data", data if isinstance(data, bytes) else orjson.dumps(data))]
    return Entry(stream, entry_id, pairs + [(k.encode(), v) for k, v in fields.items()])


CE = {"specversion": "1.0", "id": "e1", "source": "s", "type": "com.dapr.event.sent", "topic": "orders",
      "pubsubname": "pubsub", "datacontenttype": "application/json", "data": {"price": 150}}


class TestReadingSubscriptions:
    def test_rules_come_in_order_then_the_default_and_a_single_route_is_the_default(self) -> None:
        [v2, v1] = parse_subscriptions(subscribe(
            {"pubsubname": "pubsub", "topic": "orders", "routes": {
                "rules": [{"match": 'event.type == "a"', "path": "/a"}, {"match": "event.data.n > 1", "path": "b"}],
                "default": "/rest"}},
            {"pubsubname": "pubsub", "topic": "refunds", "route": "refunds", "metadata": {"rawPayload": "True"}}))
        assert [(r.match, r.path) for r in v2.rules] == [('event.type == "a"', "/a"), ("event.data.n > 1", "/b"),
                                                         (None, "/rest")]
        assert [(r.match, r.path) for r in v1.rules] == [(None, "/refunds")]
        assert (v1.raw_payload, v2.raw_payload) == (True, False)

    def test_a_subscription_without_any_route_is_left_out_as_daprd_leaves_it(self) -> None:
        assert parse_subscriptions(subscribe({"pubsubname": "pubsub", "topic": "orders"})) == []
        assert parse_subscriptions(b"null") == parse_subscriptions(b"") == []

    @pytest.mark.parametrize(("match", "why"), [
        ("event.data.price >", "Syntax error"),
        ("order.price > 1", "undeclared reference to 'order.price'"),
        ("1 + 2", "gives a int, not a boolean"),
    ])
    def test_a_rule_that_is_no_cel_condition_on_event_is_refused_naming_it_and_its_path(
        self, match: str, why: str
    ) -> None:
        body = subscribe({"pubsubname": "pubsub", "topic": "orders",
                          "routes": {"rules": [{"match": match, "path": "/x"}], "default": "/d"}})
        with pytest.raises(SubscriptionError) as error:
            parse_subscriptions(body)
        assert f"pubsub/orders: routing rule {match!r} (to /x)" in str(error.value)
        assert why in str(error.value)
        assert "\n" not in str(error.value)

    @pytest.mark.parametrize("body", [b"{", b'{"topic": "orders"}', subscribe({"topic": "orders", "route": "/o"}),
                                      subscribe({"pubsubname": "p", "topic": "o", "route": "/o",
                                                 "metadata": {"rawPayload": "yes"}}),
                                      subscribe({"pubsubname": "p", "topic": "o", "route": "/with space"})])
    def test_what_daprd_could_not_read_either_is_refused(self, body: bytes) -> None:
        with pytest.raises(SubscriptionError):
            parse_subscriptions(body)

    def test_the_only_pubsub_is_taken_several_need_naming_and_every_stream_needs_a_subscription(self) -> None:
        subs = parse_subscriptions(subscribe(
            {"pubsubname": "redis", "topic": "orders", "route": "/o", "deadLetterTopic": "poison"},
            {"pubsubname": "redis", "topic": "audit", "route": "/a"},
            {"pubsubname": "kafka", "topic": "orders", "route": "/k"}))
        with pytest.raises(SubscriptionError, match=r"several pub/sub components \(kafka, redis\)"):
            select(subs, ["orders"], None, {})
        routes, warnings = select(subs, ["orders"], "redis", {"orders": "orders:dead"})
        assert routes.pubsub == "redis" and routes.by_topic["orders"].rules[0].path == "/o"
        assert any("'audit'" in w and "not one of the StreamGroup's streams" in w for w in warnings)
        assert any("deadLetterTopic 'poison'" in w and "'orders:dead'" in w for w in warnings)
        with pytest.raises(SubscriptionError, match="does not subscribe to stream 'refunds' on pub/sub 'kafka'"):
            select(subs, ["orders", "refunds"], "kafka", {})


class TestEvents:
    def test_a_cloudevent_is_sent_as_its_own_bytes(self) -> None:
        raw = json.dumps(CE, indent=1).encode()  # whatever the spacing, not one byte changes
        event = event_of(entry(raw, metadata=b'{"traceparent": "t", "n": 1}'), "pubsub", raw_payload=False)
        assert (event.body, event.wrapped, event.metadata) == (raw, False, {"traceparent": "t"})

    def test_a_payload_that_is_no_cloudevent_is_wrapped_as_a_raw_payload_with_a_stable_id(self) -> None:
        for data in (b"\xff\x00binary", b'{"no": "specversion"}', b"[1, 2]"):
            event = event_of(entry(data, metadata=b'{"traceparent": "00-ab-cd-01"}'), "pubsub", raw_payload=False)
            wrapped = orjson.loads(event.body)
            assert base64.b64decode(wrapped["data_base64"]) == data
            assert {k: wrapped[k] for k in ("id", "specversion", "type", "source", "topic", "pubsubname",
                                            "datacontenttype", "time", "traceparent")} == {
                "id": "orders/1700000000000-0", "specversion": "1.0", "type": "com.dapr.event.sent",
                "source": "Dapr", "topic": "orders", "pubsubname": "pubsub",
                "datacontenttype": "application/octet-stream", "time": "2023-11-14T22:13:20.000Z",
                "traceparent": "00-ab-cd-01"}

    def test_a_raw_payload_subscription_wraps_even_a_cloudevent_and_fields_without_data_become_json(self) -> None:
        raw = event_of(entry(CE), "pubsub", raw_payload=True)
        assert orjson.loads(base64.b64decode(raw.cloud_event["data_base64"])) == CE
        other = event_of(entry(None, order=b"7", note=b"\xff"), "pubsub", raw_payload=False)
        assert other.cloud_event["datacontenttype"] == "application/json"
        assert other.cloud_event["data"] == {"order": "7", "note": {"base64": "/w=="}}

    def test_an_event_is_expired_once_its_expiration_has_passed(self) -> None:
        now = datetime(2030, 1, 1, tzinfo=UTC)
        assert expired({"expiration": "2029-12-31T23:59:59Z"}, now)
        assert not expired({"expiration": "2030-01-01T00:00:01+00:00"}, now)
        assert not expired({"expiration": "not a time"}, now)
        assert not expired({}, now)


class TestRouting:
    SUB = parse_subscriptions(subscribe({"pubsubname": "pubsub", "topic": "orders", "routes": {"rules": [
        {"match": 'event.type == "widget"', "path": "/widgets"},
        {"match": "event.data.price > 100", "path": "/expensive"}]}}))[0]

    def test_the_first_matching_rule_wins_and_none_matching_without_default_is_no_route(self) -> None:
        assert route_for(self.SUB, {**CE, "type": "widget"}) == "/widgets"
        assert route_for(self.SUB, CE) == "/expensive"
        assert route_for(self.SUB, {**CE, "data": {"price": 3}}) is None

    def test_numbers_are_doubles_as_cel_go_sees_daprds_json(self) -> None:
        [sub] = parse_subscriptions(subscribe({"pubsubname": "p", "topic": "orders", "routes": {"rules": [
            {"match": "event.data.n == 2.0 && type(event.data.n) == double", "path": "/d"}]}}))
        assert route_for(sub, {**CE, "data": {"n": 2}}) == "/d"

    def test_a_rule_that_cannot_read_the_event_is_a_routing_error(self) -> None:
        with pytest.raises(RoutingError, match=r"event\.data\.price > 100.*price"):
            route_for(self.SUB, {**CE, "data": {"note": "no price"}})


def framing(**by_topic: dict[str, object]) -> DaprFraming:
    subs = parse_subscriptions(subscribe(*({"pubsubname": "pubsub", "topic": t, **s} for t, s in by_topic.items())))
    result = DaprFraming(SETTINGS)
    result.use(Routes("pubsub", {s.topic: s for s in subs}))
    return result


class TestReplies:
    @pytest.mark.parametrize(("attempt", "action", "reason"), [
        (Attempt(200), Action.ACK, "ok"),
        (Attempt(204, b'{"status": "SUCCESS"}', "application/json"), Action.ACK, "ok"),
        (Attempt(200, b'{"status": "DROP"}', "application/json"), Action.DEAD_LETTER, "dropped"),
        (Attempt(200, b'{"status": "RETRY"}', "application/json"), Action.RETRY, "retry-requested"),
        (Attempt(200, b'{"status": "LATER"}', "application/json"), Action.RETRY, "unknown-status"),
        (Attempt(404), Action.DEAD_LETTER, "status-404"),
        (Attempt(500), Action.RETRY, "status-500"),
        (Attempt(error="timeout"), Action.RETRY, "timeout"),
    ])
    def test_a_single_reply_means_what_it_means_to_daprd(self, attempt: Attempt, action: Action, reason: str) -> None:
        dapr = framing(orders={"route": "/o"})
        [part], _ = dapr.frame([entry(CE)])
        [verdict] = dapr.decide(part, attempt)
        assert (verdict.action, verdict.reason) == (action, reason)

    def test_a_bulk_reply_settles_each_entry_by_its_status_and_what_it_leaves_out_is_retried(self) -> None:
        dapr = framing(orders={"route": "/o", "bulkSubscribe": {"enabled": True}})
        entries = [entry(CE, entry_id=f"1-{n}") for n in range(5)]
        [part], _ = dapr.frame(entries)
        statuses = [{"entryId": "orders/1-0", "status": "SUCCESS"}, {"entryId": "orders/1-1", "status": "DROP"},
                    {"entryId": "orders/1-2", "status": "RETRY"}, {"entryId": "orders/1-3", "status": ""}]
        reply = Attempt(200, orjson.dumps({"statuses": statuses}), "application/json")
        assert [(v.action, v.reason) for v in dapr.decide(part, reply)] == [
            (Action.ACK, "ok"), (Action.DEAD_LETTER, "dropped"), (Action.RETRY, "retry-requested"),
            (Action.RETRY, "missing-status"), (Action.RETRY, "missing-status")]
        assert {v.action for v in dapr.decide(part, Attempt(200))} == {Action.RETRY}  # no statuses: retried
        assert {v.reason for v in dapr.decide(part, Attempt(404))} == {"status-404"}
        worn = [entry(CE, entry_id=f"1-{n}") for n in range(2)]
        for e in worn:
            e.deliveries = 3
        [worn_part], _ = dapr.frame(worn)
        assert {v.reason for v in dapr.decide(worn_part, Attempt(200))} == {"max-deliveries (missing-status)"}

    def test_a_bulk_request_is_daprds_envelope_cut_at_max_messages_count_and_split_by_route(self) -> None:
        dapr = framing(orders={"routes": {"rules": [{"match": 'event.type == "widget"', "path": "/w"}],
                                          "default": "/o"}, "bulkSubscribe": {"enabled": True, "maxMessagesCount": 2}})
        entries = [entry({**CE, "id": f"e{n}", "type": "widget" if n % 2 else "order"}, entry_id=f"1-{n}")
                   for n in range(5)]
        parts, settled = dapr.frame(entries)
        assert not settled
        assert [(p.request.target, [e.id for e in p.entries]) for p in parts] == [
            ("/o", ["1-0", "1-2"]), ("/o", ["1-4"]), ("/w", ["1-1", "1-3"])]
        body = orjson.loads(parts[0].request.body)
        assert (body["type"], body["topic"], body["pubsubname"], body["metadata"]) == (
            "com.dapr.event.sent.bulk", "orders", "pubsub", {"pubsubName": "pubsub"})
        assert body["entries"][0] == {"entryId": "orders/1-0", "event": {**CE, "id": "e0", "type": "order"},
                                      "metadata": {}, "contentType": "application/cloudevents+json"}
        assert parts[0].request.headers["Content-Type"] == "application/json"

    def test_what_cannot_be_routed_is_settled_without_a_request(self) -> None:
        dapr = framing(orders={"routes": {"rules": [{"match": "event.data.price > 100", "path": "/x"}]}})
        expired_event = {**CE, "expiration": "2000-01-01T00:00:00Z"}
        _, settled = dapr.frame([entry({**CE, "data": {"price": 1}}), entry({**CE, "data": {}}), entry(expired_event)])
        assert [(s.verdict.action, s.verdict.reason) for s in settled] == [
            (Action.DEAD_LETTER, "no-route"), (Action.DEAD_LETTER, "routing-error"), (Action.DEAD_LETTER, "expired")]
        lost = DaprFraming(SETTINGS)
        lost.use(Routes("pubsub", {}))
        [(gone)] = lost.frame([entry(CE)])[1]
        assert (gone.verdict.action, gone.verdict.reason, gone.counts) == (Action.RETRY, "no-subscription", False)

    def test_the_request_is_structured_cloudevents_with_the_entrys_metadata_as_headers(self) -> None:
        dapr = framing(orders={"route": "/orders"})
        [part], _ = dapr.frame([entry(CE, metadata=b'{"ttlInSeconds": "60", "bad name": "x", "Host": "evil"}')])
        headers = part.request.headers
        assert part.request.target == "/orders" and part.request.body == orjson.dumps(CE)
        assert headers["Content-Type"] == "application/cloudevents+json"
        assert (headers["pubsubname"], headers["ttlInSeconds"], headers["Idempotency-Key"]) == (
            "pubsub", "60", "orders/1700000000000-0")
        assert "bad name" not in headers and "Host" not in headers


class TestOptions:
    def test_the_dapr_protocol_is_off_by_default_and_refuses_what_a_dapr_app_cannot_take(self) -> None:
        base = {"SG_STREAMS": "orders", "SG_GROUP": "g", "SG_CONSUMER": "c"}
        assert parse_settings([], base).delivery.protocol == "streamgroup"
        dapr = parse_settings(["--app-protocol", "dapr", "--dapr-pubsub", "redis"], base).delivery
        assert (dapr.protocol, dapr.dapr_pubsub) == ("dapr", "redis")
        with pytest.raises(ConfigError, match="--body raw is for --app-protocol streamgroup"):
            parse_settings([], {**base, "SG_APP_PROTOCOL": "dapr", "SG_BODY": "raw", "SG_BODY_FIELD": "data"})
        with pytest.raises(ConfigError, match="--dapr-pubsub / SG_DAPR_PUBSUB is for --app-protocol dapr"):
            parse_settings([], {**base, "SG_DAPR_PUBSUB": "redis"})
        with pytest.raises(ConfigError, match="--app-protocol / SG_APP_PROTOCOL"):
            parse_settings([], {**base, "SG_APP_PROTOCOL": "grpc"})
