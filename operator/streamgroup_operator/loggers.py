"""Log lines that name their StreamGroup (``streamgroup=<namespace>/<name>``), the operator's and kopf's.

The operator logs through ``streamgroup.operator`` with :func:`for_streamgroup`; kopf logs what it
does with an object through its per-object logger, whose records carry the object as ``k8s_ref``,
and :class:`NamingKopfObjects` turns that into the same context key. The core's formatters then
show it in either format: ``"streamgroup": "team-a/billing"`` in JSON, ``streamgroup=team-a/billing``
in text.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

LOGGER = logging.getLogger("streamgroup.operator")
KEY = "streamgroup"


class StreamGroupLogger(logging.LoggerAdapter[logging.Logger]):
    """``streamgroup.operator`` with the StreamGroup first in every record's context."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(LOGGER, {KEY: f"{namespace}/{name}"})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra["sg"] = {**(self.extra or {}), **(extra.get("sg") or {})}
        kwargs["extra"] = extra
        return msg, kwargs


def for_streamgroup(namespace: str, name: str) -> StreamGroupLogger:
    return StreamGroupLogger(namespace, name)


class NamingKopfObjects(logging.Filter):
    """Adds ``streamgroup=<namespace>/<name>`` to the records of kopf's per-object logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict) and ref.get("name"):
            context = getattr(record, "sg", None)
            named = f"{ref.get('namespace')}/{ref['name']}" if ref.get("namespace") else str(ref["name"])
            record.sg = {KEY: named, **(context if isinstance(context, dict) else {})}
        return True


class QuietWatchHandlers(logging.Filter):
    """Drops kopf's ``Handler '...' succeeded.`` lines of the handlers that only remember what a watch showed.

    Set on kopf's per-object logger: they run on every watch event of every StreamGroup and of every
    Deployment the operator made, and their success says nothing.
    """

    def __init__(self, handlers: tuple[str, ...] = ("streamgroup_seen", "deployment_seen")) -> None:
        super().__init__()
        self.lines = frozenset(f"Handler {name!r} succeeded." for name in handlers)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.getMessage() in self.lines)
