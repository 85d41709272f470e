"""HTTP ceiling: how many small JSON POSTs per second each Python client gets through, no Redis.

Why: the sidecar's per-entry mode is one POST per entry, so the best a Python HTTP client can
do on this machine bounds it; and the client and event loop are choices the sidecar can
change. Each candidate (the sidecar's built-in client, aiohttp and pyreqwest as the sidecar
uses them, aiosonic, httpx; on the default asyncio loop or uvloop) runs in its own process,
with the same number of requests in flight (``--concurrency``, 64 by default) and exactly the
body and headers the sidecar sends for a typical entry (built with the sidecar's own
``RequestBuilder``). A ``raw`` client writes pre-encoded requests on plain sockets: with
``--depth`` above 1 it pipelines and measures the sink's own ceiling rather than a client's.

Usage: ``python -m bench.http_clients --client aiohttp --loop uvloop --url http://127.0.0.1:PORT/``.
Prints one JSON line: requests, seconds, rate, errors, CPU seconds of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import urlsplit

from streamgroup_sidecar.encoding import Request, RequestBuilder
from streamgroup_sidecar.entries import Entry

from .common import entry_fields

Post = Callable[[], Awaitable[int]]
CLIENTS = ("builtin", "aiohttp", "pyreqwest", "aiosonic", "httpx", "raw")


def sample_request() -> Request:
    """The request the sidecar builds for a typical entry."""
    builder = RequestBuilder(group="bench", consumer="bench-0")
    fields = [(k.encode(), v.encode()) for k, v in entry_fields(1, time.time_ns()).items()]
    return builder.build(Entry("bench", "1700000000000-0", fields), builder.static_headers("bench"))


async def open_client(name: str, url: str, concurrency: int, request: Request) -> tuple[Post, Callable[[], Any]]:
    """A function that sends one POST and returns its status, and one that closes the client."""
    body, headers = request.body, request.headers
    if name == "builtin":
        from streamgroup_sidecar.posting import ConnectionPool

        pool = ConnectionPool(url, 30.0, concurrency)

        async def post_builtin() -> int:
            attempt = await pool.request("POST", headers, body)
            if attempt.status is None:
                raise ConnectionError(attempt.error)
            return attempt.status
        return post_builtin, pool.close
    if name == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30),
                                        skip_auto_headers=("User-Agent",), headers={"User-Agent": "bench"})

        async def post_aiohttp() -> int:
            async with session.post(url, data=body, headers=headers) as reply:
                await reply.read()
                return reply.status
        return post_aiohttp, session.close
    if name == "pyreqwest":
        from pyreqwest.client import ClientBuilder

        client = ClientBuilder().max_connections(concurrency).build()

        async def post_pyreqwest() -> int:
            reply = await client.post(url).headers(headers).body_bytes(body).build().send()
            await reply.bytes()
            return int(reply.status)
        return post_pyreqwest, client.close
    if name == "aiosonic":
        import aiosonic
        from aiosonic.pools import PoolConfig

        sonic = aiosonic.HTTPClient(aiosonic.TCPConnector(pool_configs={":default": PoolConfig(size=concurrency)}))

        async def post_aiosonic() -> int:
            reply = await sonic.post(url, data=body, headers=headers)
            await reply.content()
            return int(reply.status_code)
        return post_aiosonic, sonic.connector.cleanup
    if name == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        hx = httpx.AsyncClient(limits=limits)

        async def post_httpx() -> int:
            reply = await hx.post(url, content=body, headers=headers)
            return int(reply.status_code)
        return post_httpx, hx.aclose
    raise ValueError(name)


async def closed(close: Callable[[], Any]) -> None:
    result = close()
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        await result


async def run_client(name: str, url: str, total: int, concurrency: int, max_seconds: float) -> dict[str, Any]:
    post, close = await open_client(name, url, concurrency, sample_request())
    errors = 0
    statuses: dict[int, int] = {}

    async def batch(n: int, deadline: float) -> int:
        nonlocal errors
        left = n
        done = 0

        async def worker() -> None:
            nonlocal left, done, errors
            while left > 0 and time.monotonic() < deadline:
                left -= 1
                try:
                    status = await post()
                except Exception:
                    errors += 1
                    continue
                statuses[status] = statuses.get(status, 0) + 1
                done += 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done

    deadline = time.monotonic() + max_seconds
    await batch(concurrency * 4, deadline)  # warm-up: connections open, caches filled
    started = time.perf_counter()
    cpu = time.process_time()
    done = await batch(total, deadline)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await closed(close)
    return {"requests": done, "seconds": seconds, "rate": done / seconds if seconds else 0.0, "errors": errors,
            "statuses": statuses, "cpu_seconds": cpu}


class _RawConnection(asyncio.Protocol):
    """Keeps ``depth`` pre-encoded requests outstanding; counts replies by their blank line."""

    def __init__(self, request: bytes, depth: int, shared: dict[str, Any]) -> None:
        self.request, self.depth, self.shared = request, depth, shared
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._send(self.depth)

    def _send(self, n: int) -> None:
        shared = self.shared
        n = min(n, shared["to_send"])
        if n > 0 and self.transport is not None:
            shared["to_send"] -= n
            self.transport.write(self.request * n)

    def data_received(self, data: bytes) -> None:
        chunk = self.tail + data
        replies = chunk.count(b"\r\n\r\n")  # the sink's replies have no body
        self.tail = chunk[-3:]
        shared = self.shared
        shared["done"] += replies
        if shared["done"] >= shared["target"]:
            shared["finished"].set()
        self._send(replies)


async def run_raw(url: str, total: int, concurrency: int, depth: int, max_seconds: float) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = sample_request()
    head = f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(request.body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    raw = head.encode() + b"\r\n" + request.body
    loop = asyncio.get_running_loop()

    async def phase(n: int) -> tuple[int, float]:
        shared: dict[str, Any] = {"to_send": n, "done": 0, "target": n, "finished": asyncio.Event()}
        transports = []
        started = time.perf_counter()
        for _ in range(concurrency):
            transport, _ = await loop.create_connection(lambda: _RawConnection(raw, depth, shared), host, port)
            transports.append(transport)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(shared["finished"].wait(), max_seconds)
        seconds = time.perf_counter() - started
        for transport in transports:
            transport.close()
        return int(shared["done"]), seconds

    await phase(concurrency * depth * 4)
    cpu = time.process_time()
    done, seconds = await phase(total)
    cpu = time.process_time() - cpu
    return {"requests": done, "seconds": seconds, "rate": done / seconds if seconds else 0.0, "errors": 0,
            "cpu_seconds": cpu}


def version(name: str) -> str:
    if name == "builtin":
        name = "httptools"  # its reply parser; the rest is the sidecar's own code
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--depth", type=int, default=1, help="raw client only: requests pipelined per connection")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args()
    if args.client == "raw":
        coro = run_raw(args.url, args.requests, args.concurrency, args.depth, args.max_seconds)
    else:
        coro = run_client(args.client, args.url, args.requests, args.concurrency, args.max_seconds)
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    result.update(client=args.client, loop=args.loop, concurrency=args.concurrency, depth=args.depth,
                  version=version(args.client) if args.client != "raw" else "-")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
