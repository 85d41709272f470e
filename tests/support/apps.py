"""Real HTTP apps for the sidecar to deliver to: they record every request and answer as told."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .ports import free_port


@dataclass
class Received:
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def stream(self) -> str:
        return self.headers["streamgroup-stream"]

    @property
    def id(self) -> str:
        return self.headers["streamgroup-id"]

    @property
    def key(self) -> tuple[str, str]:
        return (self.stream, self.id)

    def json(self) -> Any:
        return orjson.loads(self.body)


Behaviour = Callable[[Received], "web.StreamResponse | Awaitable[web.StreamResponse]"]


def accept(_: Received) -> web.StreamResponse:
    return web.Response(status=204)


class RecordingApp:
    """Listens on 127.0.0.1; ``behaviour`` decides each reply (default: 204)."""

    def __init__(self, behaviour: Behaviour = accept, port: int | None = None, keepalive_timeout: float = 75.0) -> None:
        """``keepalive_timeout``: seconds an idle connection stays open (aiohttp's default is 75)."""
        self.behaviour = behaviour
        self.keepalive_timeout = keepalive_timeout
        self.port = port or free_port()
        self.received: list[Received] = []
        self.answered: list[tuple[Received, int]] = []
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        got = Received({k.lower(): v for k, v in request.headers.items()}, await request.read())
        self.received.append(got)
        reply = self.behaviour(got)
        if inspect.isawaitable(reply):
            reply = await reply
        self.answered.append((got, reply.status))
        self._changed.set()
        return reply

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> RecordingApp:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5,
                                     keepalive_timeout=self.keepalive_timeout)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ssl_context).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def succeeded(self) -> list[Received]:
        return [got for got, status in self.answered if 200 <= status < 300]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout}s ({len(self.received)} requests seen)")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))
