"""The app side of every benchmark: a minimal HTTP/1.1 server that only counts what it receives.

Why a raw asyncio protocol rather than aiohttp's server: the sink stands in for the app, and
the figures must measure the sidecar, not the app. A protocol that finds the end of the
headers, reads ``Content-Length`` bytes and writes a canned ``200`` (keep-alive, pipelining
and chunked bodies handled) costs a few microseconds per request, several times less than
any Python HTTP client spends sending one; ``python -m bench.run`` measures its ceiling with
a pipelined raw-socket load so readers can see that it is not what bounds the other numbers.

It answers every ``POST`` with a plain ``200`` and an empty body: in per-entry mode that
acknowledges the entry, in batch mode (a JSON array body) it accepts the whole batch. It
counts requests and entries (the length of a batch), and, when asked, the latency from a
stamp the producer put in a field (``time.time_ns()`` at XADD) to the moment the request's
bytes arrived. Control endpoints, on the same port::

    GET  /_stats      {"requests": n, "entries": n, "latencies": n}
    GET  /_latencies  [microseconds, ...]
    POST /_reset      {"latency_field": "sent_ns" | null}   zero the counters, start/stop recording

It exits on SIGTERM/SIGINT, when its parent dies, or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import time
from typing import Any, cast

import orjson

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)
MAX_LATENCIES = 2_000_000


class State:
    def __init__(self) -> None:
        self.requests = 0
        self.entries = 0
        self.latency_field: str | None = None
        self.latencies: list[int] = []

    def reset(self, latency_field: str | None) -> None:
        self.requests = 0
        self.entries = 0
        self.latency_field = latency_field
        self.latencies = []

    def control(self, method: bytes, path: bytes, body: bytes) -> bytes:
        payload: Any
        if path == b"/_stats":
            payload = {"requests": self.requests, "entries": self.entries, "latencies": len(self.latencies)}
        elif path == b"/_latencies":
            payload = self.latencies
        elif path == b"/_reset" and method == b"POST":
            options = orjson.loads(body) if body else {}
            self.reset(options.get("latency_field"))
            payload = {"ok": True}
        else:
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        data = orjson.dumps(payload)
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(data)).encode() + b"\r\n\r\n" + data)

    def receive(self, body: bytes, now_ns: int) -> None:
        self.requests += 1
        field = self.latency_field
        if body[:1] == b"[":
            items = orjson.loads(body)
            self.entries += len(items)
            if field is not None:
                for item in items:
                    fields = item.get("fields", item) if isinstance(item, dict) else {}
                    self._stamp(fields.get(field), now_ns)
        else:
            self.entries += 1
            if field is not None:
                self._stamp(orjson.loads(body).get(field), now_ns)

    def _stamp(self, value: Any, now_ns: int) -> None:
        if isinstance(value, str) and len(self.latencies) < MAX_LATENCIES:
            self.latencies.append((now_ns - int(value)) // 1000)


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """Body of a chunked message starting at ``start`` and where it ends; ``None`` if incomplete."""
    parts: list[bytes] = []
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buffer[pos:line_end]).split(b";", 1)[0], 16)
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            if trailer_end == line_end:
                return b"".join(parts), line_end + 4
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 4
        if len(buffer) < line_end + 2 + size + 2:
            return None
        parts.append(bytes(buffer[line_end + 2:line_end + 2 + size]))
        pos = line_end + 2 + size + 2


class SinkProtocol(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        now_ns = time.time_ns()
        buffer = self.buffer
        buffer += data
        replies: list[bytes] = []
        close = False
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buffer[:end])
            match = _LENGTH.search(head)
            if match is not None:
                total = end + 4 + int(match[1])
                if len(buffer) < total:
                    break
                body = bytes(buffer[end + 4:total])
            elif _CHUNKED.search(head) is not None:
                found = _dechunk(buffer, end + 4)
                if found is None:
                    break
                body, total = found
            else:
                body, total = b"", end + 4
            del buffer[:total]
            method, path = head.split(b" ", 2)[:2]
            if path.startswith(b"/_"):
                replies.append(self.state.control(method, path, body))
            else:
                self.state.receive(body, now_ns)
                replies.append(OK)
            if _CLOSE.search(head) is not None:
                close = True
                break
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies) if len(replies) > 1 else replies[0])
            if close:
                self.transport.close()


async def serve(port: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    state = State()
    server = await loop.create_server(lambda: SinkProtocol(state), "127.0.0.1", port, backlog=2048)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    deadline = loop.time() + max_seconds
    while not stop.is_set() and loop.time() < deadline and os.getppid() == parent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long whatever happens")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.port, args.max_seconds))
    else:
        asyncio.run(serve(args.port, args.max_seconds))


if __name__ == "__main__":
    main()
