"""Structured logs on stderr: one JSON object per line, or one readable text line.

Extra context is passed with ``logger.info("msg", extra={"sg": {...}})`` and lands as
top-level keys (JSON) or as ``key=value`` pairs after the message (text), in the order given.
Nothing here knows about secrets: callers log URLs through
:mod:`streamgroup_core.redaction` and never log passwords, which the settings keep out of reprs.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _context(record: logging.LogRecord) -> dict[str, Any]:
    context = getattr(record, "sg", None)
    return context if isinstance(context, dict) else {}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_context(record))
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


class TextFormatter(logging.Formatter):
    """``<time> <level> <logger>: <message> key=value ...``; values with spaces or quotes are JSON-quoted."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{_timestamp(record)} {record.levelname.lower():<7} {record.name}: {record.getMessage()}"]
        parts.extend(f"{key}={_text_value(value)}" for key, value in _context(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    """Strings as they are unless a space, quote or ``=`` would blur the pair; anything else as compact JSON."""
    if not isinstance(value, str):
        return orjson.dumps(value, default=str).decode()
    if not value or any(c.isspace() or c in "\"=" for c in value):
        return orjson.dumps(value).decode()
    return value


FORMATTERS: dict[str, type[logging.Formatter]] = {"json": JSONFormatter, "text": TextFormatter}


def setup(level: str, format: str = "json") -> logging.Handler:
    """Send every log record to stderr in ``format`` (``json`` or ``text``); returns the one handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[format]())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print a line per probe/scrape.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler


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
