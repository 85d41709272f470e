"""Durations, entry IDs, times and redaction: one meaning for every part."""

from __future__ import annotations

import pytest

from streamgroup_core.durations import InvalidDuration, parse_duration
from streamgroup_core.ids import InvalidEntryID, next_id, position, position_key
from streamgroup_core.redaction import hide_url_passwords, redact


class TestDurations:
    @pytest.mark.parametrize("text, seconds", [
        ("250ms", 0.25), ("30s", 30.0), ("1m30s", 90.0), ("2h", 7200.0), ("7d", 604800.0), ("1w", 604800.0),
        (" 1H 30M ", 5400.0), ("1.5s", 1.5), ("0s", 0.0),
    ])
    def test_units_and_combinations(self, text: str, seconds: float) -> None:
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text, needle", [
        ("30", "add a unit"), ("2.5", "add a unit"), ("-1s", "with a unit"), ("", "with a unit"),
        ("5 minutes", "with a unit"), ("1s30", "with a unit"), ("inf", "with a unit"),
    ])
    def test_anything_else_is_refused(self, text: str, needle: str) -> None:
        with pytest.raises(InvalidDuration, match=needle):
            parse_duration(text)


class TestPositions:
    def test_times_and_bare_milliseconds_become_ids_of_that_millisecond(self) -> None:
        assert position("2023-11-14T22:13:20Z", end=False) == "1700000000000-0"
        assert position("2023-11-14T22:13:20Z", end=True) == f"1700000000000-{2**64 - 1}"
        assert position("1700000000000", end=True) == f"1700000000000-{2**64 - 1}"
        assert position("5-3", end=True) == "5-3" and position("-", end=False) == "-"
        assert position_key("-") < position_key("5-3") < position_key("+")

    def test_the_next_id_carries_over_a_full_sequence(self) -> None:
        assert next_id("5-3") == "5-4"
        assert next_id(f"5-{2**64 - 1}") == "6-0"

    @pytest.mark.parametrize("text, needle", [
        ("2024-01-01T00:00:00", "no time zone"), ("1969-12-31T00:00:00Z", "before 1970"),
        ("yesterday", "neither an entry ID"), (f"{2**64}-0", "out of range"),
    ])
    def test_bad_positions_are_refused_with_the_reason(self, text: str, needle: str) -> None:
        with pytest.raises(InvalidEntryID, match=needle):
            position(text, end=False)


class TestRedaction:
    def test_url_passwords_and_given_secrets_are_masked_in_any_text(self) -> None:
        text = "Error connecting to redis://u:p%40ss@h:6379/0 with 'p@ss' (p%40ss)"
        assert redact(text, ["p@ss"]) == "Error connecting to redis://u:***@h:6379/0 with '***' (***)"
        assert hide_url_passwords("rediss://:x@h/1 and redis://h/0") == "rediss://:***@h/1 and redis://h/0"

    def test_every_secret_is_masked_however_short_and_empty_ones_are_ignored(self) -> None:
        assert redact("an error", ["an", None, ""]) == "*** error"
        assert redact("pw=abcdef", ["abc", "abcdef"]) == "pw=***"
