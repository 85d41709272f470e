"""Structured logs: one JSON object per line on stderr.

Extra context is passed with ``logger.info("msg", extra={"sg": {...}})`` and lands as
top-level keys. Nothing here knows about secrets: callers log URLs through
:mod:`streamgroup_core.redaction` and never log passwords, which the settings keep out of reprs.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        context = getattr(record, "sg", None)
        if isinstance(context, dict):
            payload.update(context)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print a line per probe/scrape.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Incident:
    """Logs a failure once when it starts and once when it ends, not on every retry."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._logger = logger
        self._what = what
        self._since: float | None = None
        self._attempts = 0

    def failed(self, error: BaseException | str) -> None:
        self._attempts += 1
        if self._since is None:
            self._since = time.monotonic()
            self._logger.warning(
                f"{self._what} failed; retrying quietly until it recovers",
                extra={"sg": {"error": _describe(error)}},
            )

    def recovered(self) -> None:
        if self._since is not None:
            self._logger.info(
                f"{self._what} recovered",
                extra={"sg": {"down_seconds": round(time.monotonic() - self._since, 3),
                              "attempts": self._attempts}},
            )
        self._since = None
        self._attempts = 0


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
