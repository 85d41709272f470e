"""Inputs nobody thought of, for entry encoding (Hypothesis; profiles in tests/conftest.py).

Stream entries are binary field/value pairs, names may repeat, and an ID may carry any millisecond Redis
accepts. Decoded by the rules of the README ("What the app receives"), the JSON an app gets gives back the
exact entry: every name and every value, byte for byte, each name's values in order, the names in the order
they first appear. Header values stay printable ASCII whatever the stream, group or consumer is called.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from hypothesis import given
from hypothesis import strategies as st

from streamgroup_core.ids import MAX_PART, format_id
from streamgroup_sidecar.encoding import MissingBodyField, RequestBuilder, fields_to_json
from streamgroup_sidecar.entries import Entry, Fields

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PREFIX = "base64:"


@st.composite
def names(draw: st.DrawFn) -> list[bytes]:
    """A few distinct field names: text, bytes that are not UTF-8, and text that looks like an encoded name."""
    plain = st.one_of(st.text(max_size=6).map(str.encode), st.binary(max_size=6))
    pool = draw(st.lists(plain, min_size=1, max_size=4, unique=True))
    # A UTF-8 name that spells how another name would be encoded, or merely starts like one.
    for name in list(pool):
        if draw(st.booleans()):
            pool.append(PREFIX.encode() + base64.b64encode(name))
    if draw(st.booleans()):
        pool.append(PREFIX.encode() + draw(st.text(max_size=6)).encode())
    return list(dict.fromkeys(pool))


values = st.one_of(st.text(max_size=8).map(str.encode), st.binary(max_size=8))


@st.composite
def entry_fields(draw: st.DrawFn) -> Fields:
    """An entry's fields: names drawn from a small pool, so that some repeat, in any order."""
    pool = draw(names())
    return draw(st.lists(st.tuples(st.sampled_from(pool), values), min_size=1, max_size=8))


def decoded(document: dict[str, Any], binary: bool) -> list[tuple[bytes, list[bytes]]]:
    """What an app reads back, by the README's rules, as (name, values) in the object's order."""
    read = []
    for name, value in document.items():
        raw_name = base64.b64decode(name[len(PREFIX):], validate=True) if binary and name.startswith(PREFIX) \
            else name.encode()
        items = value if isinstance(value, list) else [value]
        read.append((raw_name, [base64.b64decode(item["base64"], validate=True) if isinstance(item, dict)
                                else item.encode() for item in items]))
    return read


def grouped(fields: Fields) -> list[tuple[bytes, list[bytes]]]:
    """The entry as the README promises it back: each name once, where it first appears, with all its values."""
    by_name: dict[bytes, list[bytes]] = {}
    for name, value in fields:
        by_name.setdefault(name, []).append(value)
    return list(by_name.items())


def is_binary(fields: Fields) -> bool:
    """Whether the request must say Streamgroup-Binary: base64 (some name or value is not UTF-8)."""
    try:
        for name, value in fields:
            name.decode()
            value.decode()
    except UnicodeDecodeError:
        return True
    return False


BUILDER = RequestBuilder(group="g", consumer="c")
entry_ids = st.tuples(st.integers(0, MAX_PART), st.integers(0, MAX_PART)).map(lambda p: format_id(*p))


class TestJsonBody:
    @given(entry_fields())
    def test_the_app_gets_back_the_exact_fields(self, fields: Fields) -> None:
        body, binary = fields_to_json(fields)
        document = json.loads(body)  # as an app would, with the standard library
        assert decoded(document, binary) == grouped(fields)
        if is_binary(fields):
            assert binary, "a request with base64 in it says so"

    @given(entry_fields(), st.text(max_size=8), entry_ids)
    def test_one_request_carries_the_exact_fields_and_says_when_it_holds_base64(
        self, fields: Fields, stream: str, entry_id: str,
    ) -> None:
        request = BUILDER.build(Entry(stream, entry_id, fields), BUILDER.static_headers(stream))
        binary = request.headers.get("Streamgroup-Binary") == "base64"
        assert decoded(json.loads(request.body), binary) == grouped(fields)

    @given(st.lists(st.tuples(entry_fields(), entry_ids), min_size=1, max_size=4))
    def test_a_batch_carries_each_entrys_exact_fields_under_one_binary_header(
        self, items: list[tuple[Fields, str]],
    ) -> None:
        entries = [Entry("s", entry_id, fields) for fields, entry_id in items]
        request = BUILDER.build_batch(entries, BUILDER.batch_headers())
        binary = request.headers.get("Streamgroup-Binary") == "base64"
        sent = json.loads(request.body)
        assert [decoded(item["fields"], binary) for item in sent] == [grouped(fields) for fields, _ in items]
        assert [item["id"] for item in sent] == [entry_id for _, entry_id in items]


    def test_a_text_name_that_spells_an_encoded_one_is_encoded_too_when_the_request_holds_base64(self) -> None:
        # Found by fuzzing: b"base64:/w==" and b"\xff" both became "base64:/w==", one name with two values,
        # and a lone b"base64:MDA=" beside a binary value was read back as b"00".
        for fields in ([(b"base64:/w==", b"x"), (b"\xff", b"y")], [(b"base64:MDA=", b"\x80")]):
            body, binary = fields_to_json(fields)
            assert binary and decoded(json.loads(body), binary) == grouped(fields)
        body, _ = fields_to_json([(b"base64:/w==", b"x"), (b"\xff", b"y")])
        assert json.loads(body) == {"base64:YmFzZTY0Oi93PT0=": "x", "base64:/w==": "y"}
        # Without base64 in the request, names are taken as they are: nothing changes for them.
        assert fields_to_json([(b"base64:/w==", b"x")]) == (b'{"base64:/w==":"x"}', False)

    def test_a_text_name_that_starts_like_an_encoded_one_is_encoded_in_a_batch_that_holds_base64(self) -> None:
        # Found by fuzzing: the header is per request, so an entry without base64 follows the batch's rules.
        entries = [Entry("s", "1-0", [(b"base64:eA==", b"a")]), Entry("s", "2-0", [(b"\xff", b"b")])]
        request = BUILDER.build_batch(entries, BUILDER.batch_headers())
        assert request.headers["Streamgroup-Binary"] == "base64"
        first, second = json.loads(request.body)
        assert decoded(first["fields"], True) == [(b"base64:eA==", [b"a"])]
        assert decoded(second["fields"], True) == [(b"\xff", [b"b"])]


class TestRawBody:
    @given(entry_fields(), st.text(min_size=1, max_size=6))
    def test_the_body_is_the_first_value_of_the_body_field_byte_for_byte(self, fields: Fields, field: str) -> None:
        builder = RequestBuilder(group="g", consumer="c", body="raw", body_field=field)
        wanted = [value for name, value in fields if name == field.encode()]
        try:
            request = builder.build(Entry("s", "1-0", fields), builder.static_headers("s"))
        except MissingBodyField:
            assert not wanted
            return
        assert request.body == wanted[0]


def visible_ascii(value: str) -> bool:
    return all(0x21 <= ord(c) <= 0x7E for c in value)


class TestHeaders:
    @given(st.text(), st.text(), st.text(), st.text(min_size=1), entry_ids, st.integers(1, 100))
    def test_header_values_are_printable_ascii_and_give_back_what_they_name(
        self, stream: str, group: str, consumer: str, kind: str, entry_id: str, deliveries: int,
    ) -> None:
        builder = RequestBuilder(group=group, consumer=consumer, cloudevents_type=kind)
        request = builder.build(Entry(stream, entry_id, [(b"f", b"v")], deliveries=deliveries),
                                builder.static_headers(stream))
        headers = request.headers
        assert all(visible_ascii(value) for value in headers.values()), headers
        assert unquote(headers["Streamgroup-Stream"]) == stream
        assert unquote(headers["Streamgroup-Group"]) == group
        assert unquote(headers["Streamgroup-Consumer"]) == consumer
        assert unquote(headers["ce-type"]) == kind
        assert headers["ce-source"] == "/streams/" + headers["ce-source"].removeprefix("/streams/")
        assert unquote(headers["ce-source"].removeprefix("/streams/")) == stream
        assert unquote(headers["Idempotency-Key"]) == f"{stream}/{entry_id}"

    @given(entry_ids)
    def test_the_time_of_any_entry_id_is_its_millisecond_or_left_out_past_9999(self, entry_id: str) -> None:
        request = BUILDER.build(Entry("s", entry_id, [(b"f", b"v")]), BUILDER.static_headers("s"))
        batch = BUILDER.build_batch([Entry("s", entry_id, [(b"f", b"v")])], BUILDER.batch_headers())
        ms = int(entry_id.partition("-")[0])
        [item] = json.loads(batch.body)
        if ms > (datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1):
            assert "ce-time" not in request.headers and item["time"] is None
            return
        moment = datetime.fromisoformat(request.headers["ce-time"].replace("Z", "+00:00"))
        assert (moment - EPOCH) // timedelta(milliseconds=1) == ms
        assert item["time"] == request.headers["ce-time"]

    def test_an_entry_id_after_the_year_9999_is_delivered_without_a_time(self) -> None:
        # Found by fuzzing: XADD takes IDs up to 2**64 - 1 ms; a later one than 9999 made building the request
        # raise, which stopped the sidecar at every start (its worker died): now it goes without ce-time.
        entry = Entry("s", "253402300800000-0", [(b"f", b"v")])
        request = BUILDER.build(entry, BUILDER.static_headers("s"))
        assert "ce-time" not in request.headers and request.headers["ce-id"] == "253402300800000-0"
        [item] = json.loads(BUILDER.build_batch([entry], BUILDER.batch_headers()).body)
        assert item["time"] is None
        last = BUILDER.build(Entry("s", "253402300799999-7", [(b"f", b"v")]), BUILDER.static_headers("s"))
        assert last.headers["ce-time"] == "9999-12-31T23:59:59.999Z"
