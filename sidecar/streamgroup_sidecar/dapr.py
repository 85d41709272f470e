"""``--app-protocol dapr``: serve an unmodified Dapr pub/sub subscriber app, the way daprd serves it.

docs/dapr.md is the user's side of this module; what it reproduces was read from daprd's sources
(pkg/runtime/pubsub, pkg/runtime/subscription and its HTTP postman) and from the Redis pub/sub component
of components-contrib:

* **Subscriptions.** The app answers ``GET /dapr/subscribe`` with a JSON array of subscriptions:
  ``pubsubname``, ``topic``, a ``route`` or ``routes`` (``rules``: ``{match, path}`` in order, then a
  ``default``), ``metadata`` (``rawPayload``), ``deadLetterTopic`` and ``bulkSubscribe``. Each topic is
  the stream of the same name (Dapr's Redis component XADDs to the topic's key); the group is the
  StreamGroup's (Dapr's ``consumerID``).
* **Events.** The component writes one field, ``data``: the CloudEvent daprd built (JSON, structured
  mode), and maybe ``metadata`` (a JSON object of strings, sent as headers). Such an event is posted
  unchanged, as ``application/cloudevents+json``, to the route its subscription picks for it. Anything
  else (a ``data`` that is no CloudEvent, or every entry when the subscription sets ``rawPayload``) is
  wrapped as daprd wraps raw payloads: ``data_base64``, ``application/octet-stream``; an entry without a
  ``data`` field (another producer's) is wrapped with its fields as a JSON object (``data``,
  ``application/json``).
* **Routing rules** are CEL, evaluated on ``event`` (the CloudEvent, its numbers as doubles, as Go's JSON
  decoder gives them to cel-go) by CEL's own C++ runtime. A rule that does not compile, names another
  variable than ``event`` or cannot give a boolean is refused when the subscriptions are read.
* **Replies.** 2xx is success, with ``{"status": "SUCCESS" | "RETRY" | "DROP"}`` honoured (another status
  retries); 404 drops; anything else retries. Streamgroup never drops silently: a drop is a dead letter
  with its reason. Bulk subscriptions get daprd's bulk envelope and answer a status per ``entryId``.

Pure functions decide (parsing, selection, wrapping, routing, verdicts); :class:`Subscriptions` is the
thin I/O shell that reads ``/dapr/subscribe`` at start-up and again each time the app comes back.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson

from .config import ConfigError, DeliverySettings, RetrySettings, Settings
from .encoding import Request, cloudevents_time, fields_to_object, header_value
from .entries import Entry, Fields
from .framing import Part, Settled
from .health import Health
from .posting import ConnectionPool, origin
from .replies import Action, Attempt, Verdict, backoff, capped, decide, json_reply
from .stopping import Stop

logger = logging.getLogger("streamgroup.sidecar")

SUBSCRIBE_PATH = "/dapr/subscribe"
CLOUDEVENTS_JSON = "application/cloudevents+json"
OCTET_STREAM = "application/octet-stream"
# daprd's names (components-contrib pubsub/envelope.go, dapr pkg/runtime/pubsub/bulksubscribe_events.go).
EVENT_TYPE = "com.dapr.event.sent"
BULK_EVENT_TYPE = "com.dapr.event.sent.bulk"
EVENT_SOURCE = "Dapr"
DEFAULT_BULK_MAX = 100
"""daprd's ``maxMessagesCount`` when a bulk subscription does not set one."""
DROP_STATUS = 404
"""The one HTTP status daprd treats as "drop the message" rather than "retry"."""
# Header names a metadata entry may not set: the request's own.
_RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding", "connection",
                               "user-agent", "authorization", "idempotency-key", "pubsubname"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Go's strconv.ParseBool, which daprd reads rawPayload with.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
# Start-up: how often /dapr/subscribe is asked again while the app does not answer it.
_DISCOVERY_RETRY = RetrySettings(initial=0.1, maximum=2.0, multiplier=2.0, jitter=0.2)


class SubscriptionError(ConfigError):
    """The app's subscriptions cannot be served as they are: the message says which and why (exit 2)."""


class RoutingError(ValueError):
    """A routing rule failed on an event (a key it reads is missing, a type it compares does not fit)."""


# --- subscriptions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One routing rule: events for which ``match`` is true go to ``path``; no ``match``: every event."""

    path: str
    match: str | None = None
    program: Any = field(default=None, compare=False, repr=False)
    """The compiled CEL program of ``match``."""


@dataclass(frozen=True)
class Subscription:
    """One entry of the app's ``/dapr/subscribe``, checked, with its rules compiled."""

    pubsub: str
    topic: str
    rules: tuple[Rule, ...]
    """In order; the default route (``routes.default``, else ``route``) last, without a match."""
    raw_payload: bool = False
    dead_letter_topic: str | None = None
    bulk: bool = False
    bulk_max: int = DEFAULT_BULK_MAX
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Routes:
    """The subscriptions this group serves: one per stream, all of one pub/sub component."""

    pubsub: str
    by_topic: Mapping[str, Subscription]


@cache
def _environment() -> Any:
    # Imported when a rule is first compiled: a C++ extension of some size, needless without rules.
    from cel_expr_python import cel  # type: ignore[import-untyped]

    return cel.NewEnv(variables={"event": cel.Type.DYN})


@cache
def _error_type() -> Any:
    from cel_expr_python import cel

    return cel.Type.ERROR


def _first_line(error: BaseException) -> str:
    text = str(error)
    # The runtime's messages read "INVALID_ARGUMENT: ERROR: <input>:1:14: Syntax error: ..." then the rule
    # again with a caret; the first line says it all.
    text = text.splitlines()[0] if text else type(error).__name__
    return text.removeprefix("INVALID_ARGUMENT: ").removeprefix("ERROR: ")


def compile_rule(match: str) -> Any:
    """The CEL program of ``match``; :class:`ValueError` saying why it cannot be one."""
    from cel_expr_python import cel

    try:
        expression = _environment().compile(match)
    except RuntimeError as exc:
        raise ValueError(_first_line(exc)) from None
    result = expression.return_type()
    if result not in (cel.Type.BOOL, cel.Type.DYN):
        raise ValueError(f"gives a {result.name().lower()}, not a boolean")
    return expression


def _route(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    path = "/" + value.strip().lstrip("/")  # daprd invokes the route as a method: with or without its slash
    if any(c <= " " or c == "\x7f" for c in path):
        raise ValueError(f"{what} {value!r} has a space or a control character")
    return path


def _bool(text: Any, what: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{what} must be true or false, not {text!r}")


def _subscription(item: Any) -> Subscription | None:
    """One subscription of the app's answer; ``None`` if it has no route at all (daprd ignores those)."""
    if not isinstance(item, dict):
        raise ValueError("is not a JSON object")
    pubsub, topic = item.get("pubsubname"), item.get("topic")
    if not isinstance(pubsub, str) or not pubsub:
        raise ValueError("has no pubsubname")
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"on {pubsub!r} has no topic")
    name = f"{pubsub}/{topic}"
    rules: list[Rule] = []
    routes = item.get("routes") or {}
    if not isinstance(routes, dict):
        raise ValueError(f"{name}: routes must be an object of rules and default")
    for rule in routes.get("rules") or []:
        if not isinstance(rule, dict):
            raise ValueError(f"{name}: a routing rule must be an object of match and path")
        path = _route(rule.get("path"), f"{name}: the path of a routing rule")
        match = rule.get("match")
        if match is not None and not isinstance(match, str):
            raise ValueError(f"{name}: routing rule to {path}: match must be a string")
        match = (match or "").strip()
        if not match:
            rules.append(Rule(path))
            continue
        try:
            program = compile_rule(match)
        except ValueError as exc:
            raise ValueError(f"{name}: routing rule {match!r} (to {path}) is not a CEL condition on event: "
                             f"{exc}") from None
        rules.append(Rule(path, match, program))
    default = routes.get("default") or item.get("route")
    if default:
        rules.append(Rule(_route(default, f"{name}: the default route")))
    if not rules:
        return None
    metadata = item.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{name}: metadata must be an object of strings")
    raw = _bool(metadata["rawPayload"], f"{name}: metadata rawPayload") if "rawPayload" in metadata else False
    dead_letter_topic = item.get("deadLetterTopic") or None
    if dead_letter_topic is not None and not isinstance(dead_letter_topic, str):
        raise ValueError(f"{name}: deadLetterTopic must be a string")
    bulk = item.get("bulkSubscribe") or {}
    if not isinstance(bulk, dict):
        raise ValueError(f"{name}: bulkSubscribe must be an object")
    bulk_max = bulk.get("maxMessagesCount") or DEFAULT_BULK_MAX
    if not isinstance(bulk_max, int) or isinstance(bulk_max, bool) or bulk_max < 1:
        raise ValueError(f"{name}: bulkSubscribe.maxMessagesCount must be a whole number above 0")
    return Subscription(pubsub, topic, tuple(rules), raw, dead_letter_topic, bulk.get("enabled") is True,
                        bulk_max, dict(metadata))


def parse_subscriptions(body: bytes) -> list[Subscription]:
    """The subscriptions of a ``/dapr/subscribe`` answer; :class:`SubscriptionError` names the first bad one."""
    try:
        items = orjson.loads(body) if body.strip() else []
    except orjson.JSONDecodeError:
        raise SubscriptionError(f"the app's {SUBSCRIBE_PATH} is not JSON") from None
    if items is None:
        items = []
    if not isinstance(items, list):
        raise SubscriptionError(f"the app's {SUBSCRIBE_PATH} is not a JSON array of subscriptions")
    subscriptions = []
    for index, item in enumerate(items):
        try:
            subscription = _subscription(item)
        except ValueError as exc:
            raise SubscriptionError(f"subscription {index + 1} of the app's {SUBSCRIBE_PATH}: {exc}") from None
        if subscription is not None:
            subscriptions.append(subscription)
    return subscriptions


def select(subscriptions: Sequence[Subscription], streams: Iterable[str], pubsub: str | None,
           dead_letter_keys: Mapping[str, str]) -> tuple[Routes, list[str]]:
    """The subscriptions this group serves, and what to warn about; :class:`SubscriptionError` when it cannot.

    ``pubsub``: ``--dapr-pubsub``; ``None`` takes the only pub/sub component the app names.
    ``dead_letter_keys``: each stream's dead-letter stream, compared with a subscription's ``deadLetterTopic``.
    """
    names = sorted({s.pubsub for s in subscriptions})
    if pubsub is None:
        if not names:
            raise SubscriptionError(f"the app's {SUBSCRIBE_PATH} lists no subscription with a route")
        if len(names) > 1:
            raise SubscriptionError(f"the app subscribes through several pub/sub components ({', '.join(names)}): "
                                    "set --dapr-pubsub / SG_DAPR_PUBSUB to the one this StreamGroup serves")
        pubsub = names[0]
    by_topic: dict[str, Subscription] = {}
    for subscription in subscriptions:
        if subscription.pubsub != pubsub:
            continue
        if subscription.topic in by_topic:
            raise SubscriptionError(f"the app subscribes twice to topic {subscription.topic!r} on {pubsub!r}")
        by_topic[subscription.topic] = subscription
    streams = list(streams)
    missing = [stream for stream in streams if stream not in by_topic]
    if missing:
        topics = ", ".join(repr(t) for t in sorted(by_topic)) or "none"
        raise SubscriptionError(f"the app does not subscribe to stream {missing[0]!r} on pub/sub {pubsub!r} "
                                f"(its topics there: {topics}): a Dapr app's topic is its stream")
    warnings = [f"the app subscribes to topic {topic!r} on {pubsub!r}, which is not one of the StreamGroup's "
                "streams: nothing is delivered for it here" for topic in sorted(set(by_topic) - set(streams))]
    for stream in streams:
        subscription = by_topic[stream]
        if subscription.dead_letter_topic and subscription.dead_letter_topic != dead_letter_keys.get(stream):
            warnings.append(f"topic {stream!r}: dead letters go to {dead_letter_keys.get(stream)!r} (the "
                            f"StreamGroup's dead-letter stream), not to deadLetterTopic "
                            f"{subscription.dead_letter_topic!r}")
    return Routes(pubsub, {stream: by_topic[stream] for stream in streams}), warnings


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """What one entry is to the app: the CloudEvent posted, parsed, and the entry's metadata."""

    body: bytes
    """The CloudEvent as sent: the entry's own bytes when it is one, else the wrapping."""
    cloud_event: dict[str, Any]
    wrapped: bool
    data: bytes | None
    """The entry's ``data`` field, if it has one (a bulk raw-payload subscription sends it alone)."""
    metadata: dict[str, str]


def _field(fields: Fields, name: bytes) -> bytes | None:
    for field_name, value in fields:
        if field_name == name:
            return value
    return None


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # orjson refuses integers beyond 64 bits, which JSON (and Go's decoder) allow
            value = json.loads(raw)
        except (ValueError, RecursionError):
            return None
    return value if isinstance(value, dict) else None


def _metadata(raw: bytes | None) -> dict[str, str]:
    """The ``metadata`` field the component writes beside ``data``: a JSON object of strings (else none)."""
    if raw is None:
        return {}
    value = _json_object(raw)
    if value is None:
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def event_of(entry: Entry, pubsub: str, raw_payload: bool) -> Event:
    """The CloudEvent of ``entry`` as daprd would hand it to the app (see the module's rules)."""
    fields = entry.fields or []
    data = _field(fields, b"data")
    metadata = _metadata(_field(fields, b"metadata"))
    if data is not None and not raw_payload:
        cloud_event = _json_object(data)
        if cloud_event is not None and isinstance(cloud_event.get("specversion"), str):
            return Event(data, cloud_event, False, data, metadata)
    wrapped: dict[str, Any] = {
        "id": entry.key,  # daprd makes a random one; the entry's key stays the same on a redelivery
        "specversion": "1.0",
        "source": EVENT_SOURCE,
        "type": EVENT_TYPE,
        "topic": entry.stream,
        "pubsubname": pubsub,
    }
    if data is not None:
        wrapped["datacontenttype"] = OCTET_STREAM
        wrapped["data_base64"] = base64.b64encode(data).decode("ascii")
    else:  # not written through Dapr: the entry's fields, as the streamgroup protocol encodes them
        wrapped["datacontenttype"] = "application/json"
        wrapped["data"] = fields_to_object(fields)[0]
    if (when := cloudevents_time(entry.id)) is not None:
        wrapped["time"] = when
    for name in ("traceid", "traceparent", "tracestate"):  # daprd copies the trace context it was given
        if name in metadata:
            wrapped[name] = metadata[name]
    return Event(orjson.dumps(wrapped), wrapped, True, data, metadata)


def expired(cloud_event: Mapping[str, Any], now: datetime) -> bool:
    """Whether the event's ``expiration`` (RFC 3339, set by a publisher's ``ttlInSeconds``) has passed."""
    value = cloud_event.get("expiration")
    if not isinstance(value, str) or not value:
        return False
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return False  # daprd ignores an expiration it cannot read
    if when.tzinfo is None:
        return False  # RFC 3339 has a zone; daprd's parser refuses a time without one
    return when < now


def _as_go_sees_it(value: Any) -> Any:
    """``value`` with every number a float: Go's JSON decoder gives cel-go float64s, so rules compare doubles."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {key: _as_go_sees_it(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_go_sees_it(item) for item in value]
    return value


def route_for(subscription: Subscription, cloud_event: Mapping[str, Any]) -> str | None:
    """The path the event goes to: the first rule it matches; ``None`` if none does (no default route).

    :class:`RoutingError` if a rule cannot be evaluated on it (daprd retries such an event for ever).
    """
    activation: dict[str, Any] | None = None
    for rule in subscription.rules:
        if rule.program is None:
            return rule.path
        if activation is None:
            activation = {"event": _as_go_sees_it(cloud_event)}
        try:
            value = rule.program.eval(data=activation)
        except RuntimeError as exc:  # the runtime raises for what it cannot even represent
            raise RoutingError(f"routing rule {rule.match!r}: {_first_line(exc)}") from None
        result = value.value()
        if isinstance(result, bool):
            if result:
                return rule.path
            continue
        if value.type() == _error_type():
            raise RoutingError(f"routing rule {rule.match!r}: {result}")
        raise RoutingError(f"routing rule {rule.match!r} gave {result!r}, not a boolean")
    return None


# --- requests and replies -----------------------------------------------------------------------


def metadata_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    """The entry's metadata as headers (daprd sends it so), leaving out what could not be one or is ours."""
    return {name: value for name, value in metadata.items()
            if _TOKEN.fullmatch(name) and name.lower() not in _RESERVED_HEADERS
            and not name.lower().startswith("streamgroup-") and value.isprintable()}


def bulk_body(entries: Sequence[tuple[Entry, Event]], topic: str, pubsub: str, raw_payload: bool,
              request_id: str) -> bytes:
    """daprd's bulk envelope: the request of a bulk subscription (``entryId`` is the entry's key)."""
    items = []
    for entry, event in entries:
        item: dict[str, Any] = {"entryId": entry.key, "metadata": event.metadata}
        if raw_payload:  # daprd sends a raw payload of a bulk subscription base64-encoded, without a CloudEvent
            item["event"] = base64.b64encode(event.data or b"").decode("ascii")
            item["contentType"] = OCTET_STREAM
        else:
            item["event"] = event.cloud_event
            item["contentType"] = CLOUDEVENTS_JSON
        items.append(item)
    return orjson.dumps({"id": request_id, "type": BULK_EVENT_TYPE, "topic": topic, "pubsubname": pubsub,
                         "metadata": {"pubsubName": pubsub}, "entries": items})


def decide_bulk(attempt: Attempt, entries: Sequence[Entry], delivery: DeliverySettings,
                retry: RetrySettings) -> list[Verdict]:
    """One verdict per entry of a bulk request, as daprd reads a bulk reply.

    Not 2xx: every entry as a single reply would have it (404 drops them all). 2xx: each entry by its
    ``status`` in the reply's ``statuses``; an entry the reply does not list, or lists without a status,
    is retried, and so is every entry of a 2xx reply that is not such a JSON object.
    """
    if attempt.status is None or not 200 <= attempt.status < 300:
        return [decide(attempt, entry.deliveries, delivery, retry) for entry in entries]
    reply = json_reply(attempt)
    statuses: dict[str, str] = {}
    if isinstance(reply, dict) and isinstance(reply.get("statuses"), list):
        for item in reply["statuses"]:
            if isinstance(item, dict) and isinstance(item.get("entryId"), str):
                status = item.get("status")
                statuses[item["entryId"]] = status.upper() if isinstance(status, str) else ""
    verdicts = []
    for entry in entries:
        status = statuses.get(entry.key, "")
        if status == "SUCCESS":
            verdict = Verdict(Action.ACK, "ok")
        elif status == "DROP":
            verdict = Verdict(Action.DEAD_LETTER, "dropped")
        elif status == "RETRY":
            verdict = Verdict(Action.RETRY, "retry-requested")
        elif status:
            verdict = Verdict(Action.RETRY, "unknown-status")
        else:
            verdict = Verdict(Action.RETRY, "missing-status")
        verdicts.append(capped(verdict, attempt, entry.deliveries, delivery))
    return verdicts


class DaprFraming:
    """The :class:`~streamgroup_sidecar.framing.Framing` of ``--app-protocol dapr``.

    Holds the current :class:`Routes` (:meth:`use` swaps them when the app's subscriptions are read again).
    """

    def __init__(self, settings: Settings) -> None:
        delivery = settings.delivery
        # daprd drops on a 404: here it is a dead letter, whatever --dead-letter-statuses lists besides.
        self._delivery = dataclasses.replace(
            delivery, dead_letter_statuses=delivery.dead_letter_statuses | {DROP_STATUS})
        self._retry = settings.retry
        self._group = header_value(settings.group.group)
        self._consumer = header_value(settings.group.consumer)
        self._streams = {stream: header_value(stream) for stream in settings.group.streams}
        self.routes: Routes | None = None

    def use(self, routes: Routes) -> None:
        self.routes = routes

    def frame(self, entries: list[Entry]) -> tuple[list[Part], list[Settled]]:
        routes = self.routes
        parts: list[Part] = []
        settled: list[Settled] = []
        bulks: dict[tuple[str, str], list[tuple[Entry, Event]]] = {}
        now = datetime.now(UTC)
        for entry in entries:
            subscription = routes.by_topic.get(entry.stream) if routes is not None else None
            if subscription is None:
                # The app stopped subscribing to it: kept pending (not its fault) until it subscribes again.
                settled.append(Settled(entry, Verdict(Action.RETRY, "no-subscription"),
                                       "the app does not subscribe to this stream", counts=False))
                continue
            assert routes is not None
            event = event_of(entry, routes.pubsub, subscription.raw_payload)
            if expired(event.cloud_event, now):
                settled.append(Settled(entry, Verdict(Action.DEAD_LETTER, "expired"),
                                       f"the event expired at {event.cloud_event.get('expiration')}"))
                continue
            try:
                path = route_for(subscription, event.cloud_event)
            except RoutingError as exc:
                settled.append(Settled(entry, Verdict(Action.DEAD_LETTER, "routing-error"), str(exc)))
                continue
            if path is None:
                settled.append(Settled(entry, Verdict(Action.DEAD_LETTER, "no-route"),
                                       "no routing rule matched the event and the subscription has no default"))
                continue
            if subscription.bulk:
                bulks.setdefault((entry.stream, path), []).append((entry, event))
            else:
                parts.append(Part(Request(event.body, self._headers(entry, event, routes.pubsub), path), [entry]))
        for (stream, path), items in bulks.items():
            assert routes is not None
            subscription = routes.by_topic[stream]
            for start in range(0, len(items), subscription.bulk_max):
                chunk = items[start:start + subscription.bulk_max]
                body = bulk_body(chunk, stream, routes.pubsub, subscription.raw_payload, str(uuid.uuid4()))
                headers = {"Content-Type": "application/json", "pubsubname": header_value(routes.pubsub),
                           "Streamgroup-Stream": self._streams.get(stream) or header_value(stream),
                           "Streamgroup-Group": self._group, "Streamgroup-Consumer": self._consumer,
                           "Streamgroup-Batch-Size": str(len(chunk))}
                parts.append(Part(Request(body, headers, path), [entry for entry, _ in chunk], bulk=True))
        return parts, settled

    def _headers(self, entry: Entry, event: Event, pubsub: str) -> dict[str, str]:
        headers = metadata_headers(event.metadata)
        headers.update({
            "Content-Type": CLOUDEVENTS_JSON,
            "pubsubname": header_value(pubsub),
            "Streamgroup-Stream": self._streams.get(entry.stream) or header_value(entry.stream),
            "Streamgroup-Group": self._group,
            "Streamgroup-Consumer": self._consumer,
            "Streamgroup-Id": entry.id,
            "Streamgroup-Delivery-Count": str(entry.deliveries),
            "Idempotency-Key": entry.key,
        })
        return headers

    def decide(self, part: Part, attempt: Attempt) -> list[Verdict]:
        if part.bulk:
            return decide_bulk(attempt, part.entries, self._delivery, self._retry)
        return [decide(attempt, part.entries[0].deliveries, self._delivery, self._retry)]


# --- reading the subscriptions --------------------------------------------------------------------


class Subscriptions:
    """Reads the app's ``/dapr/subscribe``: at start-up until it answers, then each time the app comes back."""

    def __init__(self, settings: Settings, health: Health, framing: DaprFraming,
                 dead_letter_keys: Mapping[str, str]) -> None:
        delivery = settings.delivery
        self.url = origin(delivery.app_url) + SUBSCRIBE_PATH
        self._pubsub = delivery.dapr_pubsub
        self._streams = settings.group.streams
        self._dead_letter_keys = dead_letter_keys
        self._health = health
        self._framing = framing
        self._timeout = delivery.request_timeout
        self._probed = delivery.app_health_url is not None

    async def read(self) -> Routes | None:
        """The subscriptions as the app answers them now; ``None`` while it does not answer.

        :class:`SubscriptionError` if they cannot be served (not JSON, a rule that is not CEL, a stream
        without a subscription, ...), or if the app has no ``/dapr/subscribe`` at all (404).
        """
        pool = ConnectionPool(self.url, self._timeout, 1, any_body=True)
        try:
            attempt = await pool.request("GET", {"Accept": "application/json"})
        finally:
            pool.close()
        if attempt.status == 404:
            raise SubscriptionError(f"the app answers 404 to GET {SUBSCRIBE_PATH}: it subscribes to nothing")
        if attempt.status is None or not 200 <= attempt.status < 300:
            return None
        routes, warnings = select(parse_subscriptions(attempt.body), self._streams, self._pubsub,
                                  self._dead_letter_keys)
        for warning in warnings:
            logger.warning(warning)
        return routes

    async def discover(self, stop: Stop) -> bool:
        """Read the subscriptions until the app answers, and use them; ``False`` if the sidecar stopped first.

        Meanwhile the app counts as down (``/readyz``), so nothing is read from the group.
        """
        failures = 0
        while not stop.is_set():
            routes = await self.read()
            if routes is not None:
                self._use(routes)
                self._health.app_state(True)
                return True
            failures += 1
            self._health.app_state(False, f"waiting for the app to answer GET {SUBSCRIBE_PATH}")
            if await stop.during(backoff(failures, _DISCOVERY_RETRY)):
                break
        return False

    async def watch(self) -> None:
        """Read the subscriptions again each time the app comes back (it may have been redeployed); never returns.

        Without ``--app-health-url`` this is what says the app is back: once it answers ``/dapr/subscribe``
        again, so that no event goes to a route of the app that was. Subscriptions that cannot be served then
        are logged, and the previous ones kept.
        """
        probed = self._probed
        while True:
            await self._health.wait_app_down()
            if probed:
                await self._health.wait_app_up()
            failures = 0
            while True:
                try:
                    routes = await self.read()
                except SubscriptionError as exc:
                    logger.error(f"the app's subscriptions changed and cannot be served; keeping the previous "
                                 f"ones: {exc}")
                    routes = self._framing.routes
                if routes is not None:
                    self._use(routes)
                    if not probed:
                        self._health.app_state(True)
                    break
                failures += 1
                await asyncio.sleep(backoff(failures, _DISCOVERY_RETRY))

    def _use(self, routes: Routes) -> None:
        if routes != self._framing.routes:
            logger.info("serving the app's Dapr subscriptions", extra={"sg": {
                "pubsub": routes.pubsub,
                "routes": {topic: [rule.path if rule.match is None else f"{rule.match} -> {rule.path}"
                                   for rule in s.rules] + (["bulk"] if s.bulk else [])
                           for topic, s in routes.by_topic.items()},
            }})
        self._framing.use(routes)
