"""Inputs nobody thought of, for the CLI's replay ranges and numbers (Hypothesis; profiles in tests/conftest.py).

``--from``/``--to`` take entry IDs or ISO-8601 times, ``--count`` and lengths whole numbers, and a replay prints
the time of every entry it shows. Whatever is typed, the command gets XRANGE bounds in order that cover exactly
what was asked, or one :class:`CLIError` line; whatever ID an entry has, its time is printed without a crash.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from streamgroup_cli import CLIError
from streamgroup_cli.parsing import non_negative_int, parse_duration, parse_time_ms, positive_int
from streamgroup_cli.rendering import iso_ms
from streamgroup_cli.replaying import bounds
from streamgroup_core.ids import MAX_PART, format_id, parse_id, position_key

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
LAST_MS = (datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC) - EPOCH) // MS

ids = st.tuples(st.integers(0, MAX_PART), st.integers(0, MAX_PART)).map(lambda p: format_id(*p))
offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda minutes: timezone(timedelta(minutes=minutes)))
times = st.datetimes(datetime(1970, 1, 2), datetime(9999, 12, 30), timezones=offsets).map(
    lambda moment: moment.isoformat(timespec="milliseconds"))
typed = st.one_of(
    ids, times, st.integers(0, MAX_PART).map(str), st.sampled_from(["-", "+", "", " ", "0", "$", "now"]),
    st.text(max_size=12), st.text("0123456789-:TZ+. ", max_size=30),
)


def exact_ms(text: str) -> int:
    return (datetime.fromisoformat(text) - EPOCH) // MS


def valid_bound(bound: str) -> bool:
    if bound in ("-", "+"):
        return True
    ms, _, seq = bound.partition("-")
    return ms.isascii() and seq.isascii() and format_id(*parse_id(bound)) == bound


class TestReplayBounds:
    @given(typed, st.one_of(st.none(), typed))
    def test_any_from_and_to_give_bounds_in_order_or_one_line(self, start: str, end: str | None) -> None:
        try:
            first, last = bounds(start, end)
        except CLIError as exc:
            assert str(exc) and len(str(exc).splitlines()) <= 1
            return
        assert valid_bound(first) and valid_bound(last)
        assert position_key(first) <= position_key(last)

    @given(times, times)
    def test_two_times_cover_their_milliseconds_from_the_first_entry_to_the_last(self, start: str, end: str) -> None:
        low, high = exact_ms(start), exact_ms(end)
        if low > high:
            try:
                bounds(start, end)
            except CLIError as exc:
                assert "is before --from" in str(exc)
                return
            raise AssertionError("a range that ends before it starts")
        assert bounds(start, end) == (format_id(low, 0), format_id(high, MAX_PART))

    @given(ids, ids)
    def test_two_ids_are_the_bounds_themselves(self, start: str, end: str) -> None:
        if parse_id(start) <= parse_id(end):
            assert bounds(start, end) == (start, end)


class TestNumbers:
    # Past 4,300 digits int() refuses a number (CPython's limit against slow conversions).
    @given(st.one_of(st.text(max_size=12), st.integers().map(str), st.integers(4000, 5000).map(lambda n: "7" * n)))
    def test_any_count_is_a_whole_number_in_range_or_one_line(self, text: str) -> None:
        for parse, low in ((positive_int, 1), (non_negative_int, 0)):
            try:
                value = parse(text)
            except CLIError as exc:
                assert len(str(exc).splitlines()) <= 1
                continue
            assert value >= low

    @given(st.text(max_size=20))
    def test_any_duration_or_time_is_a_value_or_one_line(self, text: str) -> None:
        for parse in (parse_duration, parse_time_ms):
            try:
                parse(text)
            except CLIError as exc:
                assert len(str(exc).splitlines()) <= 1


class TestPrintedTimes:
    @given(st.integers(0, MAX_PART))
    def test_the_time_of_any_entry_id_is_printed_and_reads_back_as_its_millisecond(self, ms: int) -> None:
        shown = iso_ms(ms)
        if ms <= LAST_MS:
            assert shown.endswith("Z") and parse_time_ms(shown) == ms
        else:
            assert str(ms) in shown

    def test_an_id_after_the_year_9999_is_printed_as_its_milliseconds(self) -> None:
        # Found by fuzzing: datetime raised "year 10000 is out of range", a traceback for range and replay.
        assert iso_ms(253402300800000) == "253402300800000 ms since 1970"
        assert iso_ms(253402300799999) == "9999-12-31T23:59:59.999Z"

    def test_a_printed_time_is_not_a_millisecond_off(self) -> None:
        # Found by fuzzing: ms / 1000 as a float printed 28166203111168 as ....167.
        assert iso_ms(28166203111168) == "2862-07-20T17:18:31.168Z"
