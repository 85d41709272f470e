"""Turning stream entries into HTTP requests: body and headers, with no I/O.

Stream entries are lists of binary field/value pairs. The default body is a JSON
object of them, which must never lose a byte:

* a value that is not valid UTF-8 becomes ``{"base64": "<data>"}`` and the request
  carries ``Streamgroup-Binary: base64``;
* a field name that is not valid UTF-8 becomes ``"base64:<data>"`` (same header);
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


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, ready for any of the clients: what :mod:`.delivering` posts."""

    body: bytes
    headers: dict[str, str]


class MissingBodyField(ValueError):
    """A raw-body entry lacks the configured payload field: it can never be delivered."""


@lru_cache(maxsize=4096)
def header_value(text: str) -> str:
    """Percent-encode a header value as the CloudEvents HTTP binding asks (cached: few distinct values)."""
    return quote(text, safe=_HEADER_SAFE)


@lru_cache(maxsize=256)
def _second_text(second: int) -> str:
    return f"{datetime.fromtimestamp(second, tz=UTC):%Y-%m-%dT%H:%M:%S}"


def cloudevents_time(entry_id: str) -> str:
    """RFC 3339 time of the entry, from the millisecond part of its ID."""
    return _ms_text(entry_id.partition("-")[0])


@lru_cache(maxsize=1024)
def _ms_text(ms_part: str) -> str:
    # Keyed by the ID's millisecond part: entries read together mostly share it.
    ms = int(ms_part)
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


def fields_to_object(fields: Fields) -> tuple[dict[str, Any], bool]:
    """The fields as a JSON-ready dict (see the module's rules); and whether any part was base64-encoded."""
    # Fast path for the usual entry, all UTF-8 with distinct names; anything else takes the full rules.
    try:
        plain = {name.decode(): value.decode() for name, value in fields}
    except UnicodeDecodeError:
        pass
    else:
        if len(plain) == len(fields):
            return plain, False
    obj: dict[str, Any] = {}
    binary = False
    for raw_name, raw_value in fields:
        name, name_binary = _text(raw_name)
        if name_binary:
            name = "base64:" + name
        value: Any
        text, value_binary = _text(raw_value)
        value = {"base64": text} if value_binary else text
        binary = binary or name_binary or value_binary
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
        headers["ce-time"] = cloudevents_time(entry.id)
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
        items = []
        binary = False
        for entry in entries:
            assert entry.fields is not None, "deleted entries are dead-lettered, not delivered"
            fields, entry_binary = fields_to_object(entry.fields)
            binary = binary or entry_binary
            items.append({
                "entryId": entry.key,
                "stream": entry.stream,
                "id": entry.id,
                "deliveries": entry.deliveries,
                "time": cloudevents_time(entry.id),
                "fields": fields,
            })
        headers = dict(static)
        headers["Streamgroup-Batch-Size"] = str(len(entries))
        if binary:
            headers["Streamgroup-Binary"] = "base64"
        return Request(orjson.dumps(items), headers)
