"""The app protocol's seam: which requests a set of entries becomes, and what the app's replies mean.

A worker takes one entry (or a batch), asks its :class:`Framing` for the requests to post and for the
entries it settles without asking the app, posts each request, and asks the framing again what the
reply means for each entry of that request. Everything else (the tracker, the acks, the back-off,
the dead letters, the metrics) is the same whatever the protocol.

Two protocols, chosen with ``--app-protocol``:

- ``streamgroup`` (:class:`StreamgroupFraming`): one request per entry, or one JSON array per batch,
  to ``--app-url``; the reply contract of :mod:`.replies`.
- ``dapr`` (:class:`~streamgroup_sidecar.dapr.DaprFraming`): what daprd sends a Dapr subscriber app, to
  the route its subscriptions name (docs/dapr.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .config import Settings
from .encoding import MissingBodyField, Request, RequestBuilder
from .entries import Entry
from .replies import Action, Attempt, Verdict, decide, decide_batch


@dataclass(frozen=True, slots=True)
class Part:
    """One request and the entries it carries (one, or several in batch mode)."""

    request: Request
    entries: list[Entry]
    bulk: bool = False
    """The request carries its entries as a batch (a reply may settle each on its own)."""


@dataclass(frozen=True, slots=True)
class Settled:
    """An entry settled without a request: what to do with it and why."""

    entry: Entry
    verdict: Verdict
    detail: str
    counts: bool = True
    """A retry counts towards ``--max-deliveries`` (not when the app is to blame, e.g. a lost subscription)."""


class Framing(Protocol):
    def frame(self, entries: list[Entry]) -> tuple[list[Part], list[Settled]]:
        """The requests for ``entries`` and the entries settled without one (each entry in exactly one)."""
        ...

    def decide(self, part: Part, attempt: Attempt) -> list[Verdict]:
        """One verdict per entry of ``part``, in order, after ``attempt``."""
        ...


class StreamgroupFraming:
    """``--app-protocol streamgroup``: the README's request (What the app receives) and reply contract."""

    def __init__(self, settings: Settings) -> None:
        delivery = settings.delivery
        self._delivery = delivery
        self._retry = settings.retry
        self._batch = delivery.batch_size > 1
        self._builder = RequestBuilder(
            group=settings.group.group, consumer=settings.group.consumer, body=delivery.body,
            body_field=delivery.body_field, content_type=delivery.content_type,
            cloudevents_type=delivery.cloudevents_type,
        )
        self._static = {s: self._builder.static_headers(s) for s in settings.group.streams}
        self._batch_headers = self._builder.batch_headers()

    def frame(self, entries: list[Entry]) -> tuple[list[Part], list[Settled]]:
        if self._batch:
            return [Part(self._builder.build_batch(entries, self._batch_headers), entries, bulk=True)], []
        entry = entries[0]
        try:
            return [Part(self._builder.build(entry, self._static[entry.stream]), entries)], []
        except MissingBodyField as exc:
            return [], [Settled(entry, Verdict(Action.DEAD_LETTER, "missing-body-field"), str(exc))]

    def decide(self, part: Part, attempt: Attempt) -> list[Verdict]:
        if part.bulk:
            return decide_batch(attempt, part.entries, self._delivery, self._retry)
        return [decide(attempt, part.entries[0].deliveries, self._delivery, self._retry)]
