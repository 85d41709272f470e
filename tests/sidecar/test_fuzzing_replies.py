"""Inputs nobody thought of, for the reply contract (Hypothesis; profiles in tests/conftest.py).

An app may answer anything: any status, any bytes as a JSON body or as batch statuses, any ``Content-Type`` and
``Retry-After``. Whatever it is, :mod:`streamgroup_sidecar.replies` gives a verdict that keeps the contract of the
README (an entry is acknowledged only by a 2xx that does not ask otherwise, a wait is bounded), and never raises.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streamgroup_sidecar.config import DeliverySettings, RetrySettings
from streamgroup_sidecar.entries import Entry
from streamgroup_sidecar.replies import (
    Action,
    Attempt,
    Verdict,
    backoff,
    classify,
    decide,
    decide_batch,
    parse_retry_after,
    unreachable,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# "\u017fuccess" (a long s) is upper-cased to SUCCESS.
app_statuses = st.one_of(st.sampled_from(["SUCCESS", "RETRY", "DROP", "success", "Drop", "\u017fuccess"]),
                         st.text(max_size=8))


def bodies(keys: list[str]) -> st.SearchStrategy[bytes]:
    """Any bytes, JSON of any shape, and replies close to the contract's: a status, a list of statuses."""
    status_item = st.fixed_dictionaries(
        {}, optional={"entryId": st.one_of(st.sampled_from(keys), st.text(max_size=8), json_values) if keys
                      else st.text(max_size=8),
                      "status": st.one_of(app_statuses, json_values)},
    )
    documents = st.one_of(
        json_values,
        st.fixed_dictionaries({"status": st.one_of(app_statuses, json_values)}),
        st.fixed_dictionaries({"statuses": st.one_of(st.lists(st.one_of(status_item, json_values), max_size=6),
                                                     json_values)}),
    )
    return st.one_of(st.binary(max_size=64), documents.map(orjson.dumps),
                     documents.map(lambda doc: orjson.dumps(doc)[:-1]))  # cut short


content_types = st.one_of(st.sampled_from(["application/json", "APPLICATION/JSON; charset=utf-8",
                                           "application/problem+json", "text/plain", ""]),
                          st.binary(max_size=24).map(lambda raw: raw.decode("latin-1")))
# Header values as the clients hand them over: the built-in client decodes bytes as latin-1.
retry_afters = st.one_of(
    st.none(), st.integers(0, 10**30).map(str), st.text(max_size=40),
    st.binary(max_size=40).map(lambda raw: raw.decode("latin-1")),
    st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
    st.tuples(st.datetimes(), st.text("+-0123456789", max_size=20)).map(
        lambda p: p[0].strftime("%a, %d %b %Y %H:%M:%S ") + p[1]),
)
errors = st.sampled_from(["connection", "tls", "timeout", "disconnected", "bad-reply", "bad-request"])


@st.composite
def attempts(draw: st.DrawFn, keys: list[str] | None = None) -> Attempt:
    if draw(st.integers(0, 9)) == 0:
        return Attempt(error=draw(errors))
    status = draw(st.one_of(st.integers(200, 299), st.integers(0, 999), st.sampled_from([429, 503])))
    return Attempt(status=status, body=draw(bodies(keys or [])), content_type=draw(content_types),
                   retry_after=draw(retry_afters))


retry_settings = st.builds(
    lambda initial, extra, multiplier, jitter, cap: RetrySettings(
        initial=initial, maximum=initial + extra, multiplier=multiplier, jitter=jitter, retry_after_max=cap),
    st.floats(0.001, 60), st.floats(0, 3600), st.floats(1, 10), st.floats(0, 1), st.floats(0, 3600),
)
delivery_settings = st.builds(
    lambda statuses, max_deliveries: DeliverySettings(dead_letter_statuses=frozenset(statuses),
                                                      max_deliveries=max_deliveries),
    st.sets(st.integers(400, 599), max_size=6), st.integers(0, 20),
)


def check(verdict: Verdict, attempt: Attempt, retry: RetrySettings) -> None:
    assert isinstance(verdict.action, Action) and isinstance(verdict.reason, str) and verdict.reason
    if verdict.action is Action.ACK:
        assert attempt.status is not None and 200 <= attempt.status < 300, "only a 2xx acknowledges"
    if verdict.delay is not None:
        assert math.isfinite(verdict.delay) and 0 <= verdict.delay <= retry.retry_after_max
        assert attempt.status in (429, 503)


class TestOneEntry:
    @given(attempts(), st.integers(1, 30), delivery_settings, retry_settings)
    def test_any_reply_gets_a_verdict_within_the_contract(
        self, attempt: Attempt, deliveries: int, delivery: DeliverySettings, retry: RetrySettings,
    ) -> None:
        verdict = decide(attempt, deliveries, delivery, retry)
        check(verdict, attempt, retry)
        first = classify(attempt, delivery, retry)
        if attempt.status is not None and attempt.status in delivery.dead_letter_statuses:
            assert verdict == Verdict(Action.DEAD_LETTER, f"status-{attempt.status}")
        if unreachable(attempt):
            assert verdict.action is Action.RETRY, "an app that cannot be reached never uses up deliveries"
        elif first.action is Action.RETRY and delivery.max_deliveries and deliveries >= delivery.max_deliveries:
            assert verdict.action is Action.DEAD_LETTER and verdict.reason.startswith("max-deliveries")

    @given(st.integers(200, 299), st.binary(max_size=64), content_types, delivery_settings, retry_settings)
    def test_a_2xx_without_a_json_status_is_acknowledged(
        self, status: int, body: bytes, content_type: str, delivery: DeliverySettings, retry: RetrySettings,
    ) -> None:
        reply: Any
        try:
            reply = orjson.loads(body)
        except orjson.JSONDecodeError:
            reply = None
        if "json" in content_type.lower() and isinstance(reply, dict) and isinstance(reply.get("status"), str):
            return  # a status the app chose: the other properties cover it
        verdict = classify(Attempt(status=status, body=body, content_type=content_type), delivery, retry)
        assert verdict == Verdict(Action.ACK, "ok")


class TestRetryAfter:
    @given(retry_afters)
    def test_any_header_is_a_wait_of_non_negative_seconds_or_none(self, value: str | None) -> None:
        seconds = parse_retry_after(value, NOW)
        # Hundreds of digits are an infinite wait: the verdict caps it at --retry-after-max.
        assert seconds is None or seconds >= 0

    def test_a_digit_that_is_not_a_decimal_digit_is_no_wait(self) -> None:
        # Found by fuzzing: "²" (latin-1 0xB2, as the built-in client decodes headers) passed str.isdigit(),
        # then float() raised: the worker delivering the entry died, and with it the sidecar.
        assert parse_retry_after("²", NOW) is None
        assert classify(Attempt(status=503, retry_after="²"), DeliverySettings(), RetrySettings()) == Verdict(
            Action.RETRY, "status-503")

    def test_a_date_with_an_absurd_zone_offset_is_no_wait(self) -> None:
        # Found by fuzzing: email.utils raised OverflowError for these, which nobody caught.
        assert parse_retry_after("0 JAN 0 0:0 3000000000000", NOW) is None
        assert parse_retry_after("0 JAN 0:0 3000000000", NOW) is None

    @given(st.integers(0, 10**6))
    def test_delta_seconds_are_taken_as_they_are(self, seconds: int) -> None:
        assert parse_retry_after(f" {seconds} ", NOW) == seconds


class TestBatches:
    @given(st.data(), st.lists(st.text(max_size=6), min_size=1, max_size=5, unique=True), delivery_settings,
           retry_settings)
    def test_any_reply_gets_one_verdict_per_entry_and_only_a_named_success_acknowledges(
        self, data: st.DataObject, streams: list[str], delivery: DeliverySettings, retry: RetrySettings,
    ) -> None:
        entries = [Entry(stream, f"{i}-0", [(b"f", b"v")], deliveries=data.draw(st.integers(1, 12)))
                   for i, stream in enumerate(streams)]
        attempt = data.draw(attempts([entry.key for entry in entries]))
        verdicts = decide_batch(attempt, entries, delivery, retry)
        assert len(verdicts) == len(entries)
        try:
            reply = orjson.loads(attempt.body) if "json" in attempt.content_type.lower() else None
        except orjson.JSONDecodeError:
            reply = None
        listed = isinstance(reply, dict) and isinstance(reply.get("statuses"), list)
        for entry, verdict in zip(entries, verdicts, strict=True):
            check(verdict, attempt, retry)
            if verdict.action is Action.ACK and listed:
                assert isinstance(reply, dict)
                named = [item.get("status") for item in reply["statuses"]
                         if isinstance(item, dict) and item.get("entryId") == entry.key]
                assert named and isinstance(named[-1], str) and named[-1].upper() == "SUCCESS", (
                    "an entry a statuses list does not accept by name is never acknowledged")


class TestBackoff:
    @given(st.integers(1, 10**6), retry_settings)
    def test_any_failure_count_waits_a_finite_time_within_the_maximum(
        self, failures: int, retry: RetrySettings,
    ) -> None:
        delay = backoff(failures, retry)
        assert math.isfinite(delay) and 0 <= delay <= retry.maximum
