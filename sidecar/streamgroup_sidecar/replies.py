"""The reply contract: what an app's answer means for an entry, and how long to wait before retrying.

Pure functions only; the delivering loop feeds them what happened on the wire.

==============================  ===========================================================
App's answer                    What the sidecar does
==============================  ===========================================================
2xx                             ack (``{"status": "SUCCESS"}`` in a JSON body too)
2xx + ``{"status": "RETRY"}``   retry with back-off
2xx + ``{"status": "DROP"}``    dead-letter with reason ``dropped`` (never silently lost)
2xx + another ``status``        retry with back-off (reason ``unknown-status``)
a dead-letter status (config)   dead-letter at once, reason ``status-<code>``
429 / 503 + ``Retry-After``     retry after the time asked (capped), else back-off
other 4xx / 5xx                 retry with back-off
timeout, broken connection      retry with back-off
not HTTP, over the size limits  retry with back-off (reason ``bad-reply``)
refused, TLS handshake failed   retry after a short back-off of its own; never counts towards
                                ``max-deliveries`` (app unreachable)
==============================  ===========================================================

An entry whose delivery count reaches ``max-deliveries`` is dead-lettered instead of
retried, with reason ``max-deliveries`` and the last failure kept. An app that refuses
connections, or whose TLS handshake fails, is unreachable, which is not the entry's fault:
such attempts never count (see :func:`unreachable`), and the workers retry them with
``working.APP_DOWN_RETRY`` (100 ms doubling to 1 s) instead of the configured back-off.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import orjson

from .config import DeliverySettings, RetrySettings


class Action(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one HTTP attempt produced: a status (and maybe a body), or a transport error."""

    status: int | None = None
    body: bytes = b""
    content_type: str = ""
    retry_after: str | None = None
    error: str | None = None
    """A short name: ``connection`` (could not connect), ``tls`` (the TLS handshake failed: certificate
    not trusted, not TLS at all), ``timeout``, ``disconnected`` (the connection ended before the reply
    did), ``bad-reply`` (not HTTP, headers or a JSON body over the limits), ``bad-request``."""


def unreachable(attempt: Attempt) -> bool:
    """The request never reached the app (``connection`` or ``tls``): the app is down or misconfigured.

    Such an attempt says nothing about the entry, so it never counts towards ``max-deliveries``.
    """
    return attempt.error == "connection" or attempt.error == "tls"


def wants_body(status: int, content_type: str) -> bool:
    """Only a 2xx JSON reply can carry statuses worth reading: clients keep no other body."""
    return 200 <= status < 300 and "json" in content_type.lower()


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: str
    """Short, stable, metric-friendly: ``ok``, ``status-500``, ``timeout``, ``dropped``, ..."""
    delay: float | None = None
    """Seconds the app asked us to wait (``Retry-After``); ``None`` means use back-off."""


def json_reply(attempt: Attempt) -> Any:
    """The reply's JSON document, or ``None`` if it has no JSON content type or does not parse."""
    if not attempt.body or "json" not in attempt.content_type.lower():
        return None
    try:
        return orjson.loads(attempt.body)
    except orjson.JSONDecodeError:
        return None


def _app_status(attempt: Attempt) -> str | None:
    reply = json_reply(attempt)
    if isinstance(reply, dict):
        status = reply.get("status")
        if isinstance(status, str):
            return status.upper()
    return None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); ``None`` if absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() takes "²" and other digits float() refuses
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a zone offset of a billion hours
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def classify(attempt: Attempt, delivery: DeliverySettings, retry: RetrySettings) -> Verdict:
    """Decide what to do with an entry after one attempt, ignoring the delivery count."""
    if attempt.status is None:
        return Verdict(Action.RETRY, attempt.error or "error")
    status = attempt.status
    if 200 <= status < 300:
        app_status = _app_status(attempt)
        if app_status in (None, "SUCCESS"):
            return Verdict(Action.ACK, "ok")
        if app_status == "RETRY":
            return Verdict(Action.RETRY, "retry-requested")
        if app_status == "DROP":
            return Verdict(Action.DEAD_LETTER, "dropped")
        return Verdict(Action.RETRY, "unknown-status")
    if status in delivery.dead_letter_statuses:
        return Verdict(Action.DEAD_LETTER, f"status-{status}")
    delay = None
    if status in (429, 503):
        asked = parse_retry_after(attempt.retry_after)
        if asked is not None:
            delay = min(asked, retry.retry_after_max)
    return Verdict(Action.RETRY, f"status-{status}", delay)


def capped(verdict: Verdict, attempt: Attempt, deliveries: int, delivery: DeliverySettings) -> Verdict:
    """Turn a retry into a dead letter once ``max_deliveries`` is used up (unreachable apps never count)."""
    if (
        verdict.action is Action.RETRY
        and not unreachable(attempt)
        and delivery.max_deliveries
        and deliveries >= delivery.max_deliveries
    ):
        return Verdict(Action.DEAD_LETTER, f"max-deliveries ({verdict.reason})")
    return verdict


def decide(attempt: Attempt, deliveries: int, delivery: DeliverySettings, retry: RetrySettings) -> Verdict:
    """:func:`classify`, then dead-letter a retry once ``max_deliveries`` is used up."""
    return capped(classify(attempt, delivery, retry), attempt, deliveries, delivery)


_BATCH_STATUS = {
    "SUCCESS": Verdict(Action.ACK, "ok"),
    "RETRY": Verdict(Action.RETRY, "retry-requested"),
    "DROP": Verdict(Action.DEAD_LETTER, "dropped"),
}


def _batch_statuses(attempt: Attempt) -> dict[str, str] | None:
    reply = json_reply(attempt)
    if not isinstance(reply, dict) or not isinstance(reply.get("statuses"), list):
        return None
    statuses = {}
    for item in reply["statuses"]:
        if isinstance(item, dict) and isinstance(item.get("entryId"), str) and isinstance(item.get("status"), str):
            statuses[item["entryId"]] = item["status"].upper()
    return statuses


class BatchItem(Protocol):
    """What a batch verdict needs of an entry (an :class:`~streamgroup_sidecar.entries.Entry` is one)."""

    @property
    def key(self) -> str: ...
    @property
    def deliveries(self) -> int: ...


def decide_batch(
    attempt: Attempt, entries: Sequence[BatchItem], delivery: DeliverySettings, retry: RetrySettings
) -> list[Verdict]:
    """One verdict per entry of a batch request (keys are only looked at when the reply lists statuses).

    A failed request (not 2xx) is a failure of every entry in it. A 2xx reply without a
    ``statuses`` list accepts them all; with one, each entry gets its own status, and an
    entry the reply does not mention is retried (reason ``missing-status``), never dropped.
    """
    if attempt.status is None or not 200 <= attempt.status < 300:
        return [decide(attempt, entry.deliveries, delivery, retry) for entry in entries]
    statuses = _batch_statuses(attempt)
    if statuses is None:
        return [Verdict(Action.ACK, "ok")] * len(entries)
    verdicts = []
    for entry in entries:
        status = statuses.get(entry.key)
        if status is None:
            verdict = Verdict(Action.RETRY, "missing-status")
        else:
            verdict = _BATCH_STATUS.get(status, Verdict(Action.RETRY, "unknown-status"))
        verdicts.append(capped(verdict, attempt, entry.deliveries, delivery))
    return verdicts


def dead_letter_kind(reason: str) -> str:
    """A bounded label for metrics: ``max-deliveries (status-500)`` counts as ``max-deliveries``."""
    return reason.split(" ", 1)[0]


def backoff(failures: int, retry: RetrySettings, rng: random.Random | None = None) -> float:
    """Delay before the next attempt after ``failures`` consecutive failures (≥ 1)."""
    exponent = max(0, failures - 1)
    # Cap the exponent so huge failure counts cannot overflow the float.
    base = min(retry.maximum, retry.initial * retry.multiplier ** min(exponent, 64))
    if retry.jitter:
        spread = base * retry.jitter
        base += (rng or random).uniform(-spread, spread)
    return max(0.0, min(base, retry.maximum))
