"""Turning stream entries into HTTP requests: body and headers, with no I/O.

Stream entries are lists of binary field/value pairs. The default body is a JSON
object of them, which must never lose a byte:

* a value that is not valid UTF-8 becomes ``{"base64": "<data>"}`` and the request
  carries ``Streamgroup-Binary: base64``;
* a field name that is not valid UTF-8 becomes ``"base64:<data>"`` (same header); in a request
  with that header, a UTF-8 name that starts with ``base64:`` is encoded too, so that an app can
  read every ``base64:`` name of such a request as encoded;
* a field name repeated in one entry (Redis allows it) maps to a JSON array of its
  values, in order.

Metadata travels in headers, including the CloudEvents binary-mode attributes, so
an app can treat each request as a CloudEvent without parsing a wrapper.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

if TYPE_CHECKING:  # annotations only: the entry model imports header_value from here
    from .entries import Entry, Fields

# CloudEvents' HTTP binding percent-encodes space, '"', '%' and anything outside printable ASCII.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
BASE64_NAME = "base64:"
# 9999-12-31T23:59:59.999Z: RFC 3339 has four-digit years, stream IDs go to 2**64 - 1 milliseconds.
_LAST_RFC3339_MS = 253402300799999


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, ready for any of the clients: what :mod:`.delivering` posts."""

    body: bytes
    headers: dict[str, str]
    target: str | None = None
    """Path (and query) to post to, on the app's origin; ``None``: the ``--app-url`` itself. Set by protocols
    that route (``--app-protocol dapr``: each subscription's route)."""


class MissingBodyField(ValueError):
    """A raw-body entry lacks the configured payload field: it can never be delivered."""


@lru_cache(maxsize=4096)
def header_value(text: str) -> str:
    """Percent-encode a header value as the CloudEvents HTTP binding asks (cached: few distinct values)."""
    return quote(text, safe=_HEADER_SAFE)


@lru_cache(maxsize=256)
def _second_text(second: int) -> str:
    return f"{datetime.fromtimestamp(second, tz=UTC):%Y-%m-%dT%H:%M:%S}"


def cloudevents_time(entry_id: str) -> str | None:
    """RFC 3339 time of the entry, from the millisecond part of its ID; ``None`` after the year 9999."""
    return _ms_text(entry_id.partition("-")[0])


@lru_cache(maxsize=1024)
def _ms_text(ms_part: str) -> str | None:
    # Keyed by the ID's millisecond part: entries read together mostly share it.
    ms = int(ms_part)
    if ms > _LAST_RFC3339_MS:  # an ID given to XADD by hand; no RFC 3339 time, and ce-time is optional
        return None
    return f"{_second_text(ms // 1000)}.{ms % 1000:03d}Z"


def _text(raw: bytes) -> tuple[str, bool]:
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), True


def fields_to_json(fields: Fields) -> tuple[bytes, bool]:
    """Encode fields as a JSON object; returns the body and whether any part was base64-encoded."""
    obj, binary = fields_to_object(fields)
    return orjson.dumps(obj), binary


def fields_to_object(fields: Fields, binary: bool = False) -> tuple[dict[str, Any], bool]:
    """The fields as a JSON-ready dict (see the module's rules); and whether any part was base64-encoded.

    ``binary``: the request carries base64 already (another entry of its batch), so that names starting
    with ``base64:`` must be encoded here too.
    """
    # Fast path for the usual entry, all UTF-8 with distinct names; anything else takes the full rules.
    if not binary:
        try:
            plain = {name.decode(): value.decode() for name, value in fields}
        except UnicodeDecodeError:
            pass
        else:
            if len(plain) == len(fields):
                return plain, False
    texts = [(_text(raw_name), _text(raw_value)) for raw_name, raw_value in fields]
    binary = binary or any(name_binary or value_binary for (_, name_binary), (_, value_binary) in texts)
    obj: dict[str, Any] = {}
    for (raw_name, _), ((name, name_binary), (text, value_binary)) in zip(fields, texts, strict=True):
        if name_binary:
            name = BASE64_NAME + name
        elif binary and name.startswith(BASE64_NAME):
            # Read as encoded in a request with base64 in it: encoded, it cannot pass for another name.
            name = BASE64_NAME + base64.b64encode(raw_name).decode("ascii")
        value: Any = {"base64": text} if value_binary else text
        previous = obj.get(name)
        if previous is None:
            obj[name] = value
        elif isinstance(previous, list):  # values are str or dict, so a list means "repeated"
            previous.append(value)
        else:
            obj[name] = [previous, value]
    return obj, binary


@dataclass(frozen=True)
class RequestBuilder:
    """Builds requests for one consumer; static headers are computed once per stream."""

    group: str
    consumer: str
    body: str = "json"
    body_field: str | None = None
    content_type: str = "application/octet-stream"
    cloudevents_type: str = "io.streamgroup.entry"

    def static_headers(self, stream: str) -> dict[str, str]:
        encoded_stream = header_value(stream)
        return {
            "Content-Type": "application/json" if self.body == "json" else self.content_type,
            "Streamgroup-Stream": encoded_stream,
            "Streamgroup-Group": header_value(self.group),
            "Streamgroup-Consumer": header_value(self.consumer),
            "ce-specversion": "1.0",
            "ce-type": header_value(self.cloudevents_type),
            "ce-source": "/streams/" + quote(stream, safe=""),
        }

    def build(self, entry: Entry, static: dict[str, str]) -> Request:
        """The request for one delivery attempt of ``entry``."""
        assert entry.fields is not None, "deleted entries are dead-lettered, not delivered"
        headers = dict(static)
        headers["Streamgroup-Id"] = entry.id
        headers["Streamgroup-Delivery-Count"] = str(entry.deliveries)
        headers["Idempotency-Key"] = entry.key
        headers["ce-id"] = entry.id
        if (time := cloudevents_time(entry.id)) is not None:
            headers["ce-time"] = time
        if self.body == "json":
            body, binary = fields_to_json(entry.fields)
            if binary:
                headers["Streamgroup-Binary"] = "base64"
            return Request(body, headers)
        wanted = (self.body_field or "").encode()
        for name, value in entry.fields:
            if name == wanted:
                return Request(value, headers)
        raise MissingBodyField(f"entry has no field {self.body_field!r}")

    def batch_headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Streamgroup-Group": header_value(self.group),
            "Streamgroup-Consumer": header_value(self.consumer),
        }

    def build_batch(self, entries: list[Entry], static: dict[str, str]) -> Request:
        """One request for several entries: a JSON array, one object per entry (see README, Batch mode)."""
        objects = []
        for entry in entries:
            assert entry.fields is not None, "deleted entries are dead-lettered, not delivered"
            objects.append(fields_to_object(entry.fields))
        binary = any(entry_binary for _, entry_binary in objects)
        if binary:  # one header for the whole request: every entry follows the rules of one with base64
            objects = [(fields, True) if entry_binary else fields_to_object(entry.fields or [], binary=True)
                       for entry, (fields, entry_binary) in zip(entries, objects, strict=True)]
        items = [{
            "entryId": entry.key,
            "stream": entry.stream,
            "id": entry.id,
            "deliveries": entry.deliveries,
            "time": cloudevents_time(entry.id),
            "fields": fields,
        } for entry, (fields, _) in zip(entries, objects, strict=True)]
        headers = dict(static)
        headers["Streamgroup-Batch-Size"] = str(len(entries))
        if binary:
            headers["Streamgroup-Binary"] = "base64"
        return Request(orjson.dumps(items), headers)
