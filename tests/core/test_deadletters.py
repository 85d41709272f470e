"""Dead-letter keys and fields: one template syntax, one layout, read back as written."""

from __future__ import annotations

import pytest

from streamgroup_core.deadletters import (
    DEFAULT_TEMPLATE,
    InvalidTemplate,
    check_template,
    dead_letter_fields,
    dead_letter_key,
    dead_letter_key_for,
    source_of,
    split_fields,
)
from streamgroup_core.partitions import keyslot


class TestTheKeyTemplate:
    @pytest.mark.parametrize("template, stream, key", [
        ("{stream}:dead", "orders", "orders:dead"),
        ("{{stream}}:dead", "orders", "{orders}:dead"),
        ("{stream}:dead", "orders:{3}", "orders:{3}:dead"),
        ("dlq{v2}:{stream}", "orders", "dlq{v2}:orders"),
        ("dlq{{v2}}:{stream}", "orders", "dlq{{v2}}:orders"),
        ("{stream}/{stream}", "orders", "orders/orders"),
    ])
    def test_stream_is_replaced_and_every_other_brace_is_the_keys_own(self, template: str, stream: str,
                                                                      key: str) -> None:
        assert dead_letter_key(template, stream) == key
        assert source_of(template, key) == stream

    def test_a_template_without_the_placeholder_or_that_is_the_source_is_refused(self) -> None:
        with pytest.raises(InvalidTemplate, match=r"'dead' must contain \{stream\}"):
            check_template("dead")
        with pytest.raises(InvalidTemplate):
            dead_letter_key("{steam}:dead", "orders")
        with pytest.raises(InvalidTemplate, match="the source stream itself"):
            check_template("{stream}")

    def test_a_key_that_does_not_fit_the_template_has_no_source(self) -> None:
        assert source_of("{stream}:dead", "orders") is None
        assert source_of("{stream}/{stream}", "a/b") is None
        assert source_of("dlq:{stream}", "dlq:") is None
        assert source_of("{{stream}}:dead", "orders:dead") is None


class TestOnARedisCluster:
    @pytest.mark.parametrize("stream, key", [
        ("orders", "{orders}:dead"), ("orders:{3}", "orders:{3}:dead"), ("{user1}.events", "{user1}.events:dead"),
    ])
    def test_the_default_key_shares_its_sources_slot(self, stream: str, key: str) -> None:
        assert dead_letter_key_for(DEFAULT_TEMPLATE, stream, "cluster") == key
        assert keyslot(key) == keyslot(stream)

    def test_other_modes_and_other_templates_are_taken_as_they_stand(self) -> None:
        assert dead_letter_key_for(DEFAULT_TEMPLATE, "orders", "standalone") == "orders:dead"
        assert dead_letter_key_for(DEFAULT_TEMPLATE, "orders", "sentinel") == "orders:dead"
        assert dead_letter_key_for("dlq:{stream}", "orders", "cluster") == "dlq:orders"


class TestTheDeadLetterLayout:
    def test_metadata_comes_first_and_splits_off_from_the_original_fields(self) -> None:
        original = [(b"sg:stream", b"spoof"), (b"\xff", b"\x00"), (b"k", b"v"), (b"k", b"w")]
        flat = dead_letter_fields("orders", "1-0", original, group="g", consumer="c", deliveries=3,
                                  reason="dropped", detail="app said DROP", time_ms=1700000000000)
        pairs = [(name.encode() if isinstance(name, str) else name, value.encode() if isinstance(value, str) else value)
                 for name, value in zip(flat[::2], flat[1::2], strict=True)]
        meta, fields = split_fields(pairs)
        assert meta == {"sg:stream": b"orders", "sg:id": b"1-0", "sg:group": b"g", "sg:consumer": b"c",
                        "sg:deliveries": b"3", "sg:reason": b"dropped", "sg:detail": b"app said DROP",
                        "sg:time": b"1700000000000"}
        assert fields == original  # an original field named like metadata stays an original field
