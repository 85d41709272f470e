"""The sidecar's own HTTP/1.1 client: keep-alive connections on the event loop, replies parsed by httptools.

Why not a general-purpose client: the sidecar sends one kind of request (a POST with a small
body, to one app next to it) tens of thousands of times a second, and every microsecond it
spends per request is taken from the app on the same node. pyreqwest, the fastest general
client found, spends most of its time per request handing it to its Tokio thread and the reply
back under the GIL; aiohttp costs more. Writing the request on a keep-alive connection straight
from the event loop, and parsing the reply with llhttp (through httptools, the parser uvicorn
uses), costs a fraction of either: docs/performance.md has the figures, measured in one run.

What it does, and all it does:

- HTTP/1.1 with keep-alive, one request at a time on each connection (no pipelining); at most
  ``max_connections`` idle connections are kept, and one idle for ``IDLE_LIMIT`` is not reused
  (below the 5 s keep-alive of uvicorn or Node, so the app rarely closes one under us).
  ``http://`` and ``https://`` (the system's trust store, host name checked). Credentials in
  the URL become basic authentication.
- One deadline for the whole request, connecting included. A connection whose request timed
  out or was cancelled is closed, never reused: its reply could still arrive.
- The keep-alive race: a reused connection that the app closed while it sat idle is retried
  once, on a fresh connection, but only when not one byte of a reply had arrived. If that
  fresh connection cannot even be made, the outcome is ``disconnected``, not ``connection``:
  the app may have received the request and crashed on it, so the attempt must count
  towards ``--max-deliveries``.
- Replies: status, ``Content-Type``, ``Retry-After``, and the body of a 2xx JSON reply (other
  bodies are read and dropped, whatever their size). Chunked bodies, ``Connection: close`` and
  HTTP/1.0 replies are the parser's job; interim (1xx) replies are skipped; a reply without a
  length ends when the app closes the connection.
- Limits, so that no app can take the sidecar's memory: a header block over ``MAX_HEAD_BYTES``
  (64 KiB) or a 2xx JSON body over ``max_body`` (1 MiB) is a bad reply, and the connection is
  dropped at once. An oversized JSON body is not an acknowledgement: it may carry a RETRY.
- No redirects, proxies, cookies or compression: none means anything for a delivery.

Every outcome is an :class:`~streamgroup_sidecar.replies.Attempt`; transport errors are the
short names ``connection`` (could not connect), ``tls`` (the TLS handshake failed: certificate
not trusted, or the app does not speak TLS), ``timeout``, ``disconnected`` (the connection
ended before the reply did), ``bad-reply`` (not HTTP, or over the limits) and ``bad-request``
(a header that would split the request; nothing is sent).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from urllib.parse import unquote, urlsplit

import httptools

from .encoding import Request
from .replies import Attempt, wants_body

USER_AGENT = "streamgroup-sidecar"
# Replies are only read to find {"status": ...} (or a batch's "statuses"): a larger 2xx JSON body
# is not an answer but a bad reply (acking it would drop the statuses it may carry).
MAX_REPLY_BYTES = 1024 * 1024
# A reply's header block (status line and fields) larger than this is a bad reply, and the
# connection is dropped: without a cap, an app sending headers without end takes all our memory.
MAX_HEAD_BYTES = 64 * 1024
# An idle connection this old is dropped when next picked, not reused: below the keep-alive
# timeouts of common app servers (uvicorn and Node 5 s, Go 90 s+), so the app seldom closes one first.
IDLE_LIMIT = 4.0

_TIMEOUT = Attempt(error="timeout")
_DISCONNECTED = Attempt(error="disconnected")
_BAD_REPLY = Attempt(error="bad-reply")
_BAD_REQUEST = Attempt(error="bad-request")
_CONNECTION = Attempt(error="connection")
_TLS = Attempt(error="tls")


class _OverLimit(Exception):
    """A body over the limit: raised in on_body, feed_data turns it into HttpParserCallbackError."""


def origin(url: str) -> str:
    """``scheme://[userinfo@]host[:port]`` of ``url``: where a routed request's target is appended."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class _Connection(asyncio.Protocol):
    """One keep-alive connection: it sends a request, parses the reply, resolves the waiter."""

    def __init__(self, max_body: int, any_body: bool = False) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._max_body = max_body
        self._any_body = any_body
        self.transport: asyncio.Transport | None = None
        self.reusable = False
        self.received = False  # a byte of the current request's reply arrived
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Attempt] | None = None
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._content_type = ""
        self._retry_after: str | None = None
        self._sized = False  # Content-Length or chunked: the reply's end is known without a close
        self._keep_body = False
        self._body: list[bytes] = []
        self._size = 0
        self._head_room = MAX_HEAD_BYTES  # bytes the header block may still take

    def send(self, data: bytes, waiter: asyncio.Future[Attempt]) -> None:
        assert self.transport is not None
        self._waiter = waiter
        self.received = self.reusable = False
        self._reset()
        self.transport.write(data)

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def expire(self) -> None:
        """The request's deadline passed: report a timeout and drop the connection (its reply may still come)."""
        self._resolve(_TIMEOUT)
        self.abort()

    def _resolve(self, attempt: Attempt) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(attempt)

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes | memoryview) -> None:
        self.received = True
        if len(data) > self._head_room and not self._status:
            self._feed_head(data)  # seldom: more bytes than the header block has room for
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # not HTTP, a protocol switch, too big
            self._resolve(_BAD_REPLY)
            self.abort()
            return
        if not self._status:  # the header block goes on in the next read
            self._head_room -= len(data)

    def _feed_head(self, data: bytes | memoryview) -> None:
        """Feed only as much as the header block has room for: it must end within it.

        The cap counts bytes as they arrive, not header fields, so that it costs nothing on the
        common path, and because httptools holds a header value until it ends: one header without
        end would otherwise take all our memory.
        """
        view = memoryview(data)
        room = self._head_room
        try:
            self._parser.feed_data(view[:room])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._resolve(_BAD_REPLY)
            self.abort()
            return
        if not self._status:  # no room left, and still no end of the header block
            self._resolve(_BAD_REPLY)
            self.abort()
            return
        self.data_received(view[room:])  # the body (or, after an interim reply, the next head)

    def eof_received(self) -> bool:
        return False  # close our side too: a half-closed connection is no use

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._waiter is not None:
            if exc is None and self._status >= 200 and not self._sized:
                # No Content-Length and not chunked: the reply ends when the app closes the connection
                # (cleanly: after a reset the body may be cut short).
                self._complete()
            else:
                self._resolve(_DISCONNECTED)
        # The parser holds this protocol's bound methods: a reference cycle that only the cyclic
        # collector frees, and it runs seldom (see __main__._tune_gc). Connections come and go for
        # the life of the sidecar (idle ones expire), so break the cycle here and let reference
        # counting free them at once. Nothing reaches the parser after connection_lost.
        del self._parser

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:
            raise ConnectionError("a reply to no request")  # feed_data raises; the connection is dropped

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-type":
            self._content_type = value.decode("latin-1")
        elif name == b"retry-after":
            self._retry_after = value.decode("latin-1")
        elif name == b"content-length":
            self._sized = True
        elif name == b"transfer-encoding":
            # Only a chunked reply ends on its own; any other coding is read until the app closes.
            self._sized = value.rstrip().lower().endswith(b"chunked")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._keep_body = wants_body(self._status, self._content_type) or (
            self._any_body and 200 <= self._status < 300)

    def on_body(self, body: bytes) -> None:
        if self._keep_body:
            self._size += len(body)
            if self._size > self._max_body:
                raise _OverLimit  # not an answer: a bad reply, and no point reading the rest
            self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            self._reset()  # an interim reply (100 Continue, 103 Early Hints): the real one follows
            return
        self.reusable = self._parser.should_keep_alive()
        self._complete()

    def _complete(self) -> None:
        self._resolve(Attempt(status=self._status, body=b"".join(self._body) if self._keep_body else b"",
                              content_type=self._content_type, retry_after=self._retry_after))


class ConnectionPool:
    """Requests to one origin (scheme, host, port), on a pool of keep-alive connections."""

    def __init__(self, url: str, timeout: float, max_connections: int, max_body: int = MAX_REPLY_BYTES,
                 any_body: bool = False) -> None:
        """``any_body``: keep the body of every 2xx reply, whatever its Content-Type (within ``max_body``)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c <= " " or c == "\x7f" for c in self.target):
            raise ValueError(f"the URL's path has a space or control character: {url!r}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        authority = f"{host}:{parts.port}" if parts.port else host
        fixed = f"Host: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            fixed += f"Authorization: Basic {base64.b64encode(credentials).decode()}\r\n"
        self._fixed = fixed
        self._timeout = timeout
        self._max_connections = max_connections
        self._max_body = max_body
        self._any_body = any_body
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._closed = False

    def encode(self, method: str, headers: dict[str, str], body: bytes, target: str | None = None) -> bytes | None:
        """The request's bytes; ``None`` if a header name or value, or ``target``, would break the request apart.

        ``target``: a path on the same origin instead of the URL's (a routing protocol's route).
        """
        if target is None:
            target = self.target
        elif not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
            return None
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        n = len(headers)
        if lines.count("\n") != n or lines.count("\r") != n or "\0" in lines:
            return None
        length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
        return f"{method} {target} HTTP/1.1\r\n{self._fixed}{length}{lines}\r\n".encode() + body

    async def request(self, method: str, headers: dict[str, str], body: bytes = b"",
                      target: str | None = None) -> Attempt:
        data = self.encode(method, headers, body, target)
        if data is None:
            return _BAD_REQUEST
        if self._closed:
            return _DISCONNECTED
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + self._timeout
        connection = self._take_idle(now)
        if connection is None:
            return await self._on_fresh_connection(loop, data, deadline)
        attempt = await self._exchange(loop, connection, data, deadline)
        if attempt is not _DISCONNECTED or connection.received or self._closed:
            return attempt
        # The app had closed it while it sat idle (or crashed on this very request): once more, on a
        # fresh connection; if none can be made, the attempt still counts (it is not "connection").
        attempt = await self._on_fresh_connection(loop, data, deadline)
        return _DISCONNECTED if attempt is _CONNECTION or attempt is _TLS else attempt

    async def _on_fresh_connection(self, loop: asyncio.AbstractEventLoop, data: bytes, deadline: float) -> Attempt:
        connection = await self._connect(loop, deadline)
        if isinstance(connection, Attempt):
            return connection  # could not connect
        return await self._exchange(loop, connection, data, deadline)

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection | Attempt:
        try:
            async with asyncio.timeout_at(deadline):
                _, connection = await loop.create_connection(
                    self._new_connection, self._host, self._port, ssl=self._ssl)
        except TimeoutError:
            return _TIMEOUT
        except ssl.SSLError:  # the certificate is not trusted, or the app does not speak TLS
            return _TLS
        except (ConnectionResetError, ConnectionAbortedError):
            # Connected, then dropped: with TLS, by the app during the handshake.
            return _TLS if self._ssl is not None else _CONNECTION
        except OSError:  # refused or unreachable
            return _CONNECTION
        if self._closed:  # close() came first, or while connecting
            connection.abort()
            return _DISCONNECTED
        return connection

    def _take_idle(self, now: float) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            assert connection.transport is not None
            fresh = now - connection.idle_since < IDLE_LIMIT
            if fresh and connection.reusable and not connection.transport.is_closing():
                return connection
            connection.abort()  # closed by the app (or dropped) while it sat idle, or idle too long
        return None

    def _new_connection(self) -> _Connection:
        return _Connection(self._max_body, self._any_body)

    async def _exchange(self, loop: asyncio.AbstractEventLoop, connection: _Connection, data: bytes,
                        deadline: float) -> Attempt:
        waiter: asyncio.Future[Attempt] = loop.create_future()
        timer = loop.call_at(deadline, connection.expire)
        self._busy.add(connection)
        try:
            connection.send(data, waiter)
            attempt = await waiter
        except BaseException:  # cancelled: the reply may still come, so the connection cannot be reused
            connection.abort()
            raise
        finally:
            timer.cancel()
            self._busy.discard(connection)
        if connection.reusable and not self._closed and len(self._idle) < self._max_connections:
            connection.idle_since = loop.time()
            self._idle.append(connection)
        elif connection.transport is not None and not connection.transport.is_closing():
            connection.transport.close()
        return attempt

    def close(self) -> None:
        """Drop every connection; requests in progress end as ``disconnected``, later ones too."""
        self._closed = True
        for connection in [*self._idle, *self._busy]:
            connection.abort()
        self._idle.clear()
        self._busy.clear()


class BuiltinDeliverer:
    """The default :class:`~streamgroup_sidecar.delivering.Deliverer`: POSTs with :class:`ConnectionPool`."""

    def __init__(self, url: str, timeout: float, max_connections: int) -> None:
        self._pool = ConnectionPool(url, timeout, max_connections)
        self._timeout = timeout
        self._probes: dict[str, ConnectionPool] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self._pool.close()
        for pool in self._probes.values():
            pool.close()

    async def post(self, request: Request) -> Attempt:
        return await self._pool.request("POST", request.headers, request.body, request.target)

    async def probe(self, url: str) -> bool:
        pool = self._probes.get(url)
        if pool is None:
            pool = self._probes[url] = ConnectionPool(url, self._timeout, 1)
        attempt = await pool.request("GET", {})
        return attempt.status is not None and 200 <= attempt.status < 300
