"""The pure decisions of the sidecar: start positions, reply contract, back-off, request encoding."""

from __future__ import annotations

import base64
import dataclasses
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson
import pytest

from streamgroup_core.ids import InvalidEntryID, entry_ms, position, start_position
from streamgroup_sidecar.config import DeliverySettings, RetrySettings
from streamgroup_sidecar.encoding import MissingBodyField, RequestBuilder, fields_to_json, header_value
from streamgroup_sidecar.entries import Entry
from streamgroup_sidecar.replies import Action, Attempt, backoff, classify, decide, decide_batch, parse_retry_after

DELIVERY = DeliverySettings()
RETRY = RetrySettings(initial=0.1, maximum=10.0, multiplier=2.0, jitter=0.0, retry_after_max=60.0)


class TestStartPositions:
    @pytest.mark.parametrize("given, expected", [
        ("$", "$"), ("0", "0"), ("0-0", "0-0"), ("1700000000000-5", "1700000000000-5"),
        ("1700000000000", "1700000000000-0"), (" $ ", "$"),
    ])
    def test_symbols_and_ids_are_given_to_redis_as_they_are(self, given: str, expected: str) -> None:
        assert start_position(given) == expected

    def test_a_timestamp_starts_just_before_the_first_id_of_that_millisecond(self) -> None:
        # XGROUP CREATE delivers entries strictly after its ID: the last ID of the previous ms.
        assert start_position("2023-11-14T22:13:20Z") == f"{1700000000000 - 1}-{2**64 - 1}"
        assert start_position("2023-11-14T23:13:20.250+01:00") == f"{1700000000250 - 1}-{2**64 - 1}"

    def test_a_timestamp_at_the_epoch_starts_at_the_beginning(self) -> None:
        assert start_position("1970-01-01T00:00:00Z") == "0"

    @pytest.mark.parametrize("bad", ["yesterday", "2023-11-14T22:13:20", "12-ab", "-1", "", "1-2-3"])
    def test_anything_else_is_rejected(self, bad: str) -> None:
        with pytest.raises(InvalidEntryID):
            start_position(bad)

    def test_an_entry_id_tells_when_it_was_added(self) -> None:
        assert entry_ms("1700000000250-7") == 1700000000250
        assert position("2023-11-14T22:13:20.250Z", end=False) == "1700000000250-0"


class TestReplyContract:
    @pytest.mark.parametrize("attempt, action, reason", [
        (Attempt(status=200), Action.ACK, "ok"),
        (Attempt(status=204), Action.ACK, "ok"),
        (Attempt(status=200, body=b'{"status":"SUCCESS"}', content_type="application/json"), Action.ACK, "ok"),
        (Attempt(status=200, body=b'{"status":"retry"}', content_type="application/json"),
         Action.RETRY, "retry-requested"),
        (Attempt(status=200, body=b'{"status":"DROP"}', content_type="application/json; charset=utf-8"),
         Action.DEAD_LETTER, "dropped"),
        (Attempt(status=200, body=b'{"status":"MAYBE"}', content_type="application/json"),
         Action.RETRY, "unknown-status"),
        (Attempt(status=200, body=b'{"status":"DROP"}', content_type="text/plain"), Action.ACK, "ok"),
        (Attempt(status=200, body=b"not json", content_type="application/json"), Action.ACK, "ok"),
        (Attempt(status=200, body=b'["DROP"]', content_type="application/json"), Action.ACK, "ok"),
        (Attempt(status=500), Action.RETRY, "status-500"),
        (Attempt(status=404), Action.RETRY, "status-404"),
        (Attempt(status=422), Action.DEAD_LETTER, "status-422"),
        (Attempt(status=400), Action.DEAD_LETTER, "status-400"),
        (Attempt(error="timeout"), Action.RETRY, "timeout"),
        (Attempt(error="connection"), Action.RETRY, "connection"),
    ])
    def test_each_reply_maps_to_one_action(self, attempt: Attempt, action: Action, reason: str) -> None:
        verdict = classify(attempt, DELIVERY, RETRY)
        assert (verdict.action, verdict.reason) == (action, reason)

    def test_dead_letter_statuses_are_configurable(self) -> None:
        none = DeliverySettings(dead_letter_statuses=frozenset())
        assert classify(Attempt(status=422), none, RETRY).action is Action.RETRY
        gone = DeliverySettings(dead_letter_statuses=frozenset({410}))
        assert classify(Attempt(status=410), gone, RETRY).reason == "status-410"

    @pytest.mark.parametrize("status", [429, 503])
    def test_retry_after_in_seconds_sets_the_delay(self, status: int) -> None:
        verdict = classify(Attempt(status=status, retry_after="7"), DELIVERY, RETRY)
        assert verdict.action is Action.RETRY and verdict.delay == 7.0

    def test_retry_after_as_an_http_date_is_understood(self) -> None:
        now = datetime(2030, 1, 1, tzinfo=UTC)
        header = format_datetime(now + timedelta(seconds=30), usegmt=True)
        assert parse_retry_after(header, now=now) == 30.0
        assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0

    def test_retry_after_is_capped_and_ignored_when_invalid_or_on_other_statuses(self) -> None:
        assert classify(Attempt(status=429, retry_after="86400"), DELIVERY, RETRY).delay == 60.0
        assert classify(Attempt(status=429, retry_after="soon"), DELIVERY, RETRY).delay is None
        assert classify(Attempt(status=500, retry_after="5"), DELIVERY, RETRY).delay is None

    def test_a_retry_becomes_a_dead_letter_when_deliveries_are_used_up(self) -> None:
        three = DeliverySettings(max_deliveries=3)
        assert decide(Attempt(status=500), 2, three, RETRY).action is Action.RETRY
        verdict = decide(Attempt(status=500), 3, three, RETRY)
        assert verdict.action is Action.DEAD_LETTER and verdict.reason == "max-deliveries (status-500)"
        assert decide(Attempt(status=200), 3, three, RETRY).action is Action.ACK

    def test_zero_max_deliveries_retries_for_ever(self) -> None:
        forever = DeliverySettings(max_deliveries=0)
        assert decide(Attempt(error="timeout"), 10_000, forever, RETRY).action is Action.RETRY


class TestBackoff:
    def test_grows_by_the_multiplier_up_to_the_maximum(self) -> None:
        assert [backoff(n, RETRY) for n in range(1, 9)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0]
        assert backoff(10_000, RETRY) == 10.0

    def test_jitter_spreads_delays_within_the_fraction(self) -> None:
        jittery = RetrySettings(initial=1.0, maximum=100.0, multiplier=2.0, jitter=0.25)
        rng = random.Random(7)
        delays = [backoff(3, jittery, rng) for _ in range(500)]
        assert min(delays) >= 3.0 and max(delays) <= 5.0
        assert max(delays) - min(delays) > 1.5  # spread, not constant


class TestEncoding:
    builder = RequestBuilder(group="g", consumer="pod-1")

    def test_fields_become_a_json_object_of_strings(self) -> None:
        body, binary = fields_to_json([(b"name", "Zoë 🚀".encode()), (b"empty", b""), (b"", b"x")])
        assert orjson.loads(body) == {"name": "Zoë 🚀", "empty": "", "": "x"}
        assert not binary

    def test_bytes_that_are_not_utf8_are_base64_encoded_and_marked(self) -> None:
        raw = bytes(range(256))
        body, binary = fields_to_json([(b"blob", raw), (b"\xff\xfe", b"v")])
        decoded = orjson.loads(body)
        assert binary
        assert base64.b64decode(decoded["blob"]["base64"]) == raw
        assert decoded["base64:" + base64.b64encode(b"\xff\xfe").decode()] == "v"

    def test_a_repeated_field_name_keeps_every_value_in_order(self) -> None:
        body, _ = fields_to_json([(b"tag", b"a"), (b"x", b"1"), (b"tag", b"b"), (b"tag", b"\xff")])
        assert orjson.loads(body) == {"tag": ["a", "b", {"base64": "/w=="}], "x": "1"}
        text_only, binary = fields_to_json([(b"tag", b"a"), (b"x", b"1"), (b"tag", b"b")])
        assert orjson.loads(text_only) == {"tag": ["a", "b"], "x": "1"} and not binary

    def test_headers_carry_metadata_and_cloudevents_attributes(self) -> None:
        entry = Entry("orders", "1700000000250-3", [(b"k", b"v")], deliveries=2)
        request = self.builder.build(entry, self.builder.static_headers("orders"))
        assert request.headers == {
            "Content-Type": "application/json",
            "Streamgroup-Stream": "orders", "Streamgroup-Group": "g", "Streamgroup-Consumer": "pod-1",
            "Streamgroup-Id": "1700000000250-3", "Streamgroup-Delivery-Count": "2",
            "Idempotency-Key": "orders/1700000000250-3",
            "ce-specversion": "1.0", "ce-type": "io.streamgroup.entry", "ce-source": "/streams/orders",
            "ce-id": "1700000000250-3", "ce-time": "2023-11-14T22:13:20.250Z",
        }

    def test_header_values_outside_printable_ascii_are_percent_encoded(self) -> None:
        assert header_value('cmd "ö" 100%') == "cmd%20%22%C3%B6%22%20100%25"
        static = self.builder.static_headers("événements/fr")
        assert static["Streamgroup-Stream"] == "%C3%A9v%C3%A9nements/fr"
        assert static["ce-source"] == "/streams/%C3%A9v%C3%A9nements%2Ffr"

    def test_raw_mode_sends_one_field_as_it_is(self) -> None:
        raw = RequestBuilder(group="g", consumer="c", body="raw", body_field="payload",
                             content_type="application/x-protobuf")
        entry = Entry("s", "1-0", [(b"meta", b"m"), (b"payload", b"\x08\x96\x01")])
        request = raw.build(entry, raw.static_headers("s"))
        assert request.body == b"\x08\x96\x01"
        assert request.headers["Content-Type"] == "application/x-protobuf"
        with pytest.raises(MissingBodyField, match="payload"):
            raw.build(Entry("s", "2-0", [(b"meta", b"m")]), raw.static_headers("s"))


class TestUnreachableApp:
    def test_refused_connections_never_use_up_deliveries(self) -> None:
        one = DeliverySettings(max_deliveries=1)
        assert decide(Attempt(error="connection"), 50, one, RETRY).action is Action.RETRY
        assert decide(Attempt(error="timeout"), 1, one, RETRY).action is Action.DEAD_LETTER


@dataclasses.dataclass
class Item:
    key: str
    deliveries: int


class TestBatchReplies:
    KEYS = [Item("s/1-0", 1), Item("s/2-0", 1), Item("s/3-0", 3), Item("s/4-0", 1)]

    def reply(self, statuses: object, content_type: str = "application/json") -> Attempt:
        return Attempt(status=200, body=orjson.dumps({"statuses": statuses}), content_type=content_type)

    def test_each_entry_gets_the_status_the_app_gave_it(self) -> None:
        three = DeliverySettings(max_deliveries=3)
        attempt = self.reply([{"entryId": "s/1-0", "status": "SUCCESS"}, {"entryId": "s/2-0", "status": "drop"},
                              {"entryId": "s/3-0", "status": "RETRY"}])
        verdicts = decide_batch(attempt, self.KEYS, three, RETRY)
        assert [(v.action, v.reason) for v in verdicts] == [
            (Action.ACK, "ok"), (Action.DEAD_LETTER, "dropped"),
            (Action.DEAD_LETTER, "max-deliveries (retry-requested)"), (Action.RETRY, "missing-status")]

    def test_a_plain_2xx_accepts_the_whole_batch_and_a_failure_fails_it_whole(self) -> None:
        assert {v.action for v in decide_batch(Attempt(status=204), self.KEYS, DELIVERY, RETRY)} == {Action.ACK}
        verdicts = decide_batch(Attempt(status=503, retry_after="2"), self.KEYS, DELIVERY, RETRY)
        assert {(v.action, v.reason, v.delay) for v in verdicts} == {(Action.RETRY, "status-503", 2.0)}
        dead = decide_batch(Attempt(status=422), self.KEYS, DELIVERY, RETRY)
        assert {v.action for v in dead} == {Action.DEAD_LETTER}

    def test_unknown_statuses_are_retried_not_dropped(self) -> None:
        verdicts = decide_batch(self.reply([{"entryId": "s/1-0", "status": "MAYBE"}, {"bogus": 1}]),
                                self.KEYS[:1], DELIVERY, RETRY)
        assert [(v.action, v.reason) for v in verdicts] == [(Action.RETRY, "unknown-status")]

    def test_the_batch_body_lists_each_entry_with_its_key_and_fields(self) -> None:
        builder = RequestBuilder(group="g", consumer="c")
        entries = [Entry("orders", "1700000000250-0", [(b"k", b"v")], deliveries=2),
                   Entry("refunds", "1700000000250-0", [(b"b", b"\xff")])]
        request = builder.build_batch(entries, builder.batch_headers())
        assert orjson.loads(request.body) == [
            {"entryId": "orders/1700000000250-0", "stream": "orders", "id": "1700000000250-0", "deliveries": 2,
             "time": "2023-11-14T22:13:20.250Z", "fields": {"k": "v"}},
            {"entryId": "refunds/1700000000250-0", "stream": "refunds", "id": "1700000000250-0", "deliveries": 1,
             "time": "2023-11-14T22:13:20.250Z", "fields": {"b": {"base64": "/w=="}}},
        ]
        assert request.headers["Streamgroup-Batch-Size"] == "2"
        assert request.headers["Streamgroup-Binary"] == "base64"
