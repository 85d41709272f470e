"""Inputs nobody thought of, for the core's positions and durations (Hypothesis; profiles in tests/conftest.py).

Entry IDs, ISO-8601 times and durations reach the core from people (``startFrom``, ``SG_START_FROM``, the CLI's
``--from``/``--to``, ``--older-than``) and from Redis. Whatever the text, each parser either gives a value that
means what the text says or refuses with its own error; nothing else escapes, and nothing is off by a millisecond.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streamgroup_core.durations import InvalidDuration, parse_duration
from streamgroup_core.ids import (
    MAX_PART,
    InvalidEntryID,
    format_id,
    is_id,
    next_id,
    parse_id,
    parse_time_ms,
    position,
    position_key,
    start_position,
)
from streamgroup_core.spec import SpecError, parse_spec

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)

parts = st.integers(0, MAX_PART)
# Offsets as ISO-8601 writes them: whole minutes within a day.
offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda minutes: timezone(timedelta(minutes=minutes)))
moments = st.datetimes(datetime(1970, 1, 2), datetime(9999, 12, 30), timezones=offsets)
# Before 1970: anywhere, and in its last second, where rounding towards zero lands on the epoch.
moments_before_1970 = st.one_of(
    st.datetimes(datetime(1, 1, 2), datetime(1969, 12, 31, 23, 59, 59, 999_999), timezones=st.just(UTC)),
    st.datetimes(datetime(1969, 12, 31, 23, 59, 59), datetime(1969, 12, 31, 23, 59, 59, 999_999),
                 timezones=st.just(UTC)),
)


def exact_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, floored, in integers (what a text with microseconds means)."""
    return (moment - EPOCH) // MS


def id_like_text() -> st.SearchStrategy[str]:
    """Text near the syntax of IDs and times: digits, dashes, zones, and any character now and then."""
    pieces = st.sampled_from(["0", "1", "9", "-", "-0", "$", "+", "T", ":", ".", "Z", "z", "+02:00", " ", "00",
                              "2024-05-01", "T12:00:00", "18446744073709551615", "18446744073709551616", "\u0661"])
    return st.one_of(st.text(), st.lists(st.one_of(pieces, st.text(max_size=2)), max_size=8).map("".join))


def is_valid_id(text: str) -> bool:
    ms, _, seq = text.partition("-")
    return (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()
            and int(ms) <= MAX_PART and int(seq) <= MAX_PART and text == format_id(int(ms), int(seq)))


class TestEntryIDs:
    @given(parts, parts)
    def test_an_id_parses_back_to_its_parts(self, ms: int, seq: int) -> None:
        assert parse_id(format_id(ms, seq)) == (ms, seq) and is_id(format_id(ms, seq))

    @given(id_like_text())
    def test_any_text_is_an_id_in_range_or_refused(self, text: str) -> None:
        try:
            ms, seq = parse_id(text)
        except InvalidEntryID as exc:
            assert "\n" not in str(exc)
            return
        assert 0 <= ms <= MAX_PART and 0 <= seq <= MAX_PART and is_id(text)

    @given(parts, parts)
    def test_the_next_id_is_the_smallest_valid_id_after_it_or_refused_after_the_last(self, ms: int, seq: int) -> None:
        current = format_id(ms, seq)
        if (ms, seq) == (MAX_PART, MAX_PART):
            try:
                after = next_id(current)
            except InvalidEntryID:
                return
            raise AssertionError(f"{after!r} after the largest ID Redis accepts")
        after = next_id(current)
        assert is_valid_id(after) and parse_id(after) > (ms, seq)
        assert parse_id(after) == ((ms, seq + 1) if seq < MAX_PART else (ms + 1, 0))

    def test_nothing_comes_after_the_largest_id(self) -> None:
        # Found by fuzzing: next_id gave 18446744073709551616-0, an ID Redis refuses, to the CLI's trim and purge.
        largest = format_id(MAX_PART, MAX_PART)
        try:
            after = next_id(largest)
        except InvalidEntryID as exc:
            assert "largest stream entry ID" in str(exc)
        else:
            raise AssertionError(f"{after!r} after {largest}")


class TestTimes:
    @given(moments, st.sampled_from(["milliseconds", "microseconds", "seconds", "auto"]))
    def test_a_time_with_a_zone_is_the_exact_millisecond_it_names(self, moment: datetime, precision: str) -> None:
        text = moment.isoformat(timespec=precision)
        written = datetime.fromisoformat(text)
        assert parse_time_ms(text) == exact_ms(written)

    @given(moments)
    def test_a_time_in_utc_may_be_written_with_z(self, moment: datetime) -> None:
        utc = moment.astimezone(UTC)
        assert parse_time_ms(utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")) == exact_ms(utc)

    @given(moments_before_1970, st.sampled_from(["milliseconds", "microseconds", "seconds"]))
    def test_any_time_before_1970_is_refused(self, moment: datetime, precision: str) -> None:
        text = moment.isoformat(timespec=precision)
        try:
            ms = parse_time_ms(text)
        except InvalidEntryID as exc:
            assert "before 1970" in str(exc)
        else:
            raise AssertionError(f"{text} taken as {ms} ms")

    def test_a_time_far_from_1970_is_not_a_millisecond_off(self) -> None:
        # Found by fuzzing: the float of timestamp() gave ...045 for .046 and ...003 for .002976.
        assert parse_time_ms("3059-01-01T00:00:00.046Z") == 34365513600046
        assert parse_time_ms("6430-01-01T00:00:00.002976+00:00") == 140744044800002
        assert start_position("6326-01-01T00:00:00.076981Z") == format_id(137462054400075, MAX_PART)
        assert position("4200-01-01T00:00:00.024987Z", end=False) == "70372022400024-0"

    def test_the_last_half_millisecond_of_1969_is_before_1970(self) -> None:
        # Found by fuzzing: int() rounded -0.5 ms towards zero, to the epoch itself.
        try:
            ms = parse_time_ms("1969-12-31T23:59:59.9995Z")
        except InvalidEntryID as exc:
            assert "before 1970" in str(exc)
        else:
            raise AssertionError(f"taken as {ms} ms")

    @given(st.datetimes(datetime(1970, 1, 2), datetime(9999, 12, 30)))
    def test_a_time_without_a_zone_is_refused(self, moment: datetime) -> None:
        try:
            parse_time_ms(moment.isoformat())
        except InvalidEntryID as exc:
            assert "no time zone" in str(exc)
        else:
            raise AssertionError("a zone was guessed")


class TestStartFrom:
    @given(id_like_text())
    def test_any_text_is_a_start_xgroup_create_takes_or_refused(self, text: str) -> None:
        try:
            start = start_position(text)
        except InvalidEntryID:
            return
        assert start in ("$", "0", "0-0") or is_valid_id(start)

    @given(moments)
    def test_a_time_starts_the_group_at_the_first_entry_written_at_or_after_it(self, moment: datetime) -> None:
        text = moment.isoformat(timespec="microseconds")
        start = start_position(text)
        ms = exact_ms(datetime.fromisoformat(text))
        # XGROUP CREATE delivers the entries after its ID: the first one possible is <ms>-0.
        assert next_id(start) == format_id(ms, 0)

    @given(st.one_of(id_like_text(), moments.map(datetime.isoformat)))
    def test_the_spec_takes_exactly_the_starts_the_sidecar_takes(self, text: str) -> None:
        spec: dict[str, Any] = {"redis": {"url": "redis://r:6379/0"}, "streams": ["orders"], "group": "billing",
                                "template": {}, "startFrom": text}
        try:
            expected: str | None = start_position(text)
        except InvalidEntryID:
            expected = None
        try:
            parsed = parse_spec(spec)
        except SpecError as exc:
            assert expected is None and str(exc).startswith("spec.startFrom: ") and "\n" not in str(exc)
            return
        assert parsed.start_position == expected


class TestRangeBounds:
    @given(id_like_text(), st.booleans())
    def test_any_text_is_a_bound_xrange_takes_or_refused(self, text: str, end: bool) -> None:
        try:
            bound = position(text, end=end)
        except InvalidEntryID:
            return
        assert bound in ("-", "+") or is_valid_id(bound)
        assert position_key("-") <= position_key(bound) <= position_key("+")

    @given(moments)
    def test_a_time_is_its_whole_millisecond_from_the_first_entry_to_the_last(self, moment: datetime) -> None:
        text = moment.isoformat(timespec="microseconds")
        ms = exact_ms(datetime.fromisoformat(text))
        assert position(text, end=False) == format_id(ms, 0)
        assert position(text, end=True) == format_id(ms, MAX_PART)


durations = st.lists(
    st.tuples(st.one_of(st.integers(0, 10**6).map(str), st.decimals(0, 10**6, places=3).map(str)),
              st.sampled_from(["ms", "s", "m", "h", "d", "w"])),
    min_size=1, max_size=4,
)
SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class TestDurations:
    @given(durations)
    def test_a_duration_is_the_sum_of_its_parts(self, items: list[tuple[str, str]]) -> None:
        text = "".join(number + unit for number, unit in items)
        expected = sum(float(number) * SECONDS[unit] for number, unit in items)
        assert math.isclose(parse_duration(text), expected, rel_tol=1e-12, abs_tol=1e-12)

    @given(st.one_of(st.text(), durations.map(lambda items: "".join(n + u for n, u in items)),
                     st.text("0123456789.msdhw ", max_size=40),
                     st.tuples(st.integers(1, 400), st.sampled_from(list(SECONDS))).map(lambda p: "7" * p[0] + p[1])))
    def test_any_text_is_a_finite_duration_or_refused(self, text: str) -> None:
        try:
            seconds = parse_duration(text)
        except InvalidDuration as exc:
            assert "\n" not in str(exc)
            return
        assert math.isfinite(seconds) and seconds >= 0

    def test_a_number_too_large_for_a_float_is_refused_not_infinite(self) -> None:
        # Found by fuzzing: 309 digits or more made an infinite duration, taken by every positive-duration option.
        try:
            seconds = parse_duration("1" * 400 + "s")
        except InvalidDuration as exc:
            assert "too large" in str(exc)
        else:
            raise AssertionError(f"{seconds} seconds")
