"""A raw TCP app whose replies the tests write byte for byte.

Each case is then exactly the one named (a reply in small pieces, a connection closed while idle,
a reply with no length, an interim ``100 Continue``, garbage) rather than whatever a real server
framework happens to send. It listens on 127.0.0.1, on a port the system picks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

Answer = Callable[["Seen", asyncio.StreamWriter], Awaitable[bool]]
"""Writes the reply to one request; returns whether to keep reading requests on the connection."""


def reply(status: int = 200, body: bytes = b"", *headers: str) -> bytes:
    """A reply with a ``Content-Length``; ``headers`` are whole lines such as ``"Retry-After: 3"``."""
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status} X\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


@dataclass
class Seen:
    """A request the app read: its connection's number (from 1), its head, and its body."""

    connection: int
    head: str
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.lower() == name.lower():
                return value.strip()
        return None


@dataclass
class RawApp:
    answer: Answer
    tls: ssl.SSLContext | None = None
    """Serve HTTPS with this context."""
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    dropped: int = 0
    """Connections the client dropped while the app was still writing to them."""
    ended: set[int] = field(default_factory=set)
    """Connections (by number) that are over, closed by either side."""
    _server: asyncio.Server | None = None
    _serving: set[asyncio.Task[None]] = field(default_factory=set)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/deliver"

    async def start(self) -> RawApp:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def wait_ended(self, connection: int, timeout: float) -> bool:
        """Wait until connection number ``connection`` is over; ``False`` if it is still open after ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while connection not in self.ended:
            self._changed.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def stop_listening(self) -> None:
        """New connections are refused from now on; open ones stay."""
        assert self._server is not None
        self._server.close()

    async def stop(self) -> None:
        """Stop listening, and end the answers still being written (the test has what it needs)."""
        assert self._server is not None
        self._server.close()
        serving = set(self._serving)
        for task in serving:
            task.cancel()
        if serving:
            await asyncio.wait(serving, timeout=5)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            while True:
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode()
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                    return
                seen = Seen(number, head, b"")
                length = seen.header("content-length")
                seen.body = await reader.readexactly(int(length)) if length else b""
                self.requests.append(seen)
                if not await self.answer(seen, writer):
                    return
        except ConnectionError:
            self.dropped += 1
        except asyncio.CancelledError:
            pass  # stop(): ends here rather than as an error asyncio would log
        finally:
            self._serving.discard(task)
            writer.close()
            self.ended.add(number)
            self._changed.set()


def answering(*replies: bytes, keep: bool = True) -> Answer:
    """Answers each request with ``replies`` in turn (the last one for the rest)."""
    count = 0

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        nonlocal count
        writer.write(replies[min(count, len(replies) - 1)])
        count += 1
        await writer.drain()
        return keep
    return answer


async def raw_apps() -> AsyncIterator[Callable[..., Awaitable[RawApp]]]:
    """The body of a fixture: ``start(answer, tls=None)`` starts a :class:`RawApp`, all stopped at the end."""
    started: list[RawApp] = []

    async def start(answer: Answer, tls: ssl.SSLContext | None = None) -> RawApp:
        started.append(await RawApp(answer, tls).start())
        return started[-1]
    yield start
    for app in started:
        await app.stop()
