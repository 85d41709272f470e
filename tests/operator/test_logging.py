"""The operator's log lines name their StreamGroup, in JSON and in text, its own lines and kopf's alike."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from streamgroup_core.logs import JSONFormatter, TextFormatter
from streamgroup_operator.loggers import LOGGER, NamingKopfObjects, for_streamgroup


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    """A handler on the root logger, as ``logs.setup`` installs it (with the operator's filter)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(NamingKopfObjects())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        yield out, handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def kopf_record(message: str) -> None:
    """What kopf's per-object logger emits: a record on ``kopf.objects`` carrying the object as ``k8s_ref``."""
    ref = {"apiVersion": "streamgroup.io/v1alpha1", "kind": "StreamGroup", "namespace": "team-a", "name": "billing"}
    logging.getLogger("kopf.objects").error(message, extra={"k8s_ref": ref})


class TestJSON:
    def test_the_operators_lines_carry_the_streamgroup_before_their_own_context(
        self, captured: tuple[io.StringIO, logging.Handler]
    ) -> None:
        out, handler = captured
        handler.setFormatter(JSONFormatter())
        for_streamgroup("team-a", "billing").info("scaled", extra={"sg": {"from": 1, "to": 3}})
        line = json.loads(out.getvalue())
        assert line["logger"] == "streamgroup.operator" and line["msg"] == "scaled"
        assert list(line)[4:] == ["streamgroup", "from", "to"]
        assert (line["streamgroup"], line["from"], line["to"]) == ("team-a/billing", 1, 3)

    def test_kopfs_per_object_lines_carry_it_too(self, captured: tuple[io.StringIO, logging.Handler]) -> None:
        out, handler = captured
        handler.setFormatter(JSONFormatter())
        kopf_record("Handler 'reconcile' failed temporarily")
        line = json.loads(out.getvalue())
        assert (line["logger"], line["streamgroup"]) == ("kopf.objects", "team-a/billing")

    def test_lines_about_no_streamgroup_carry_none(self, captured: tuple[io.StringIO, logging.Handler]) -> None:
        out, handler = captured
        handler.setFormatter(JSONFormatter())
        LOGGER.info("serving /healthz and /metrics", extra={"sg": {"port": 8080}})
        assert "streamgroup" not in json.loads(out.getvalue())


class TestText:
    def test_one_readable_line_with_the_streamgroup_and_the_context_as_key_value_pairs(
        self, captured: tuple[io.StringIO, logging.Handler]
    ) -> None:
        out, handler = captured
        handler.setFormatter(TextFormatter())
        for_streamgroup("team-a", "billing").warning("Redis unreachable: Error 111",
                                                     extra={"sg": {"event": "RedisUnreachable", "n": 2}})
        kopf_record("Handler 'reconcile' failed temporarily")
        ours, kopfs = out.getvalue().splitlines()
        assert ours.endswith(" warning streamgroup.operator: Redis unreachable: Error 111 "
                             "streamgroup=team-a/billing event=RedisUnreachable n=2")
        assert kopfs.endswith(" error   kopf.objects: Handler 'reconcile' failed temporarily "
                              "streamgroup=team-a/billing")

    def test_values_with_spaces_quotes_or_equals_signs_are_quoted(
        self, captured: tuple[io.StringIO, logging.Handler]
    ) -> None:
        out, handler = captured
        handler.setFormatter(TextFormatter())
        LOGGER.info("x", extra={"sg": {"a": "two words", "b": 'say "hi"', "c": "k=v", "d": "", "e": ["x", 1]}})
        assert out.getvalue().rstrip("\n").endswith(
            'x a="two words" b="say \\"hi\\"" c="k=v" d="" e=["x",1]')
