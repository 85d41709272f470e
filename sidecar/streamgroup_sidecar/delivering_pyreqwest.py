"""An alternative HTTP client, pyreqwest (``--http-client pyreqwest``): same interface, same outcomes.

pyreqwest (Rust's reqwest) is the fastest general-purpose client measured here, and was the
default until the built-in client (:mod:`.posting`) cost a third of its CPU per request. It stays
available as a general-purpose client (its own TLS stack, a mature HTTP/1.1 implementation) for
an app the built-in client has trouble with. A module of its own so that pyreqwest and its
Tokio runtime are loaded only by the sidecars that choose it.

Its limits: the built-in client's (a header block of ``MAX_HEAD_BYTES``, checked once hyper has
read it, and a 2xx JSON body of ``MAX_REPLY_BYTES``, read as a stream so that a larger one is
never held) and hyper's own, which bound what it reads of a header block (about 400 KB, fewer
than 100 fields). Past any of them the reply is ``bad-reply``. Other bodies are read and dropped.
pyreqwest gives header values only as text, and refuses those that are not ASCII: such a value
reads as absent, and is left out of the header block's size.

pyreqwest's exception classes do not tell every outcome apart (an app that hangs up after the
request is a ``ConnectError``, as is a TLS failure), so :func:`_transport_error` also reads the
causes reqwest gives, innermost last.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import (
    ConnectError,
    DecodeError,
    DetailedPyreqwestError,
    NetworkError,
    PyreqwestError,
)
from pyreqwest.http import HeaderMap
from pyreqwest.response import Response

from .encoding import Request
from .posting import MAX_HEAD_BYTES, MAX_REPLY_BYTES, USER_AGENT, origin
from .replies import Attempt, wants_body

_BAD_REPLY = Attempt(error="bad-reply")
# Causes that name the TLS handshake (rustls's and hyper-rustls's words).
_TLS_WORDS = ("certificate", "tls", "corrupt message", "alert", "handshake", "peer is incompatible", "peer misbehaved")


class PyreqwestDeliverer:
    def __init__(self, url: str, timeout: float, max_connections: int) -> None:
        self._url = url
        self._origin = origin(url)
        self._timeout = timedelta(seconds=timeout)
        self._max_connections = max_connections
        self._client: Client | None = None

    async def start(self) -> None:
        # No proxy (the app is on localhost), no redirects (a redirect is not an acknowledgement).
        self._client = (ClientBuilder().max_connections(self._max_connections).timeout(self._timeout)
                        .follow_redirects(False).no_proxy().user_agent(USER_AGENT).build())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def post(self, request: Request) -> Attempt:
        assert self._client is not None, "start() first"
        try:
            # Streamed, so that the body is read in pieces and a body over the limit is never held whole.
            url = self._url if request.target is None else self._origin + request.target
            async with self._client.post(url).headers(request.headers).body_bytes(
                    request.body).build_streamed() as reply:
                if _head_size(reply.headers) > MAX_HEAD_BYTES:
                    return _BAD_REPLY
                status = int(reply.status)
                content_type = _header(reply, "content-type") or ""
                body = b""
                if wants_body(status, content_type):
                    whole = await _json_body(reply)
                    if whole is None:
                        return _BAD_REPLY  # leaving the block drops the connection, the rest unread
                    body = whole
                else:
                    reader = reply.body_reader
                    while await reader.read_chunk() is not None:  # read and dropped: the connection stays usable
                        pass
                return Attempt(status=status, body=body, content_type=content_type,
                               retry_after=_header(reply, "retry-after"))
        except TimeoutError:
            return Attempt(error="timeout")
        except PyreqwestError as exc:
            return Attempt(error=_transport_error(exc))

    async def probe(self, url: str) -> bool:
        assert self._client is not None, "start() first"
        try:
            reply = await self._client.get(url).build().send()
            await reply.bytes()
            return 200 <= int(reply.status) < 300
        except (TimeoutError, PyreqwestError):
            return False


def _header(reply: Response, name: str) -> str | None:
    try:
        return reply.get_header(name)
    except ValueError:  # not ASCII: pyreqwest does not decode it
        return None


def _head_size(headers: HeaderMap) -> int:
    """About the bytes of the header block: names, values, and 4 bytes of punctuation a field."""
    try:
        return sum(len(name) + len(value) + 4 for name, value in headers.items())
    except ValueError:  # a value pyreqwest does not decode: count the others, one name at a time
        size = 0
        for name in set(headers.keys()):
            with contextlib.suppress(ValueError):
                size += sum(len(name) + len(value) + 4 for value in headers.getall(name))
        return size


async def _json_body(reply: Response) -> bytes | None:
    """The whole body; ``None`` if it is over ``MAX_REPLY_BYTES``."""
    length = reply.get_header("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_REPLY_BYTES:
        return None
    reader = reply.body_reader
    pieces = []
    size = 0
    while (piece := await reader.read_chunk()) is not None:
        size += len(piece)
        if size > MAX_REPLY_BYTES:
            return None
        pieces.append(bytes(piece))
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _transport_error(exc: PyreqwestError) -> str:
    causes = (exc.details.get("causes") if isinstance(exc, DetailedPyreqwestError) else None) or []
    # The first cause names the URL, whose host could contain any word: only the others are read.
    messages = [m for m in (cause["message"].lower() for cause in causes) if not m.startswith("error sending request")]
    if any("connection closed before message completed" in m for m in messages):
        return "disconnected"  # the request went out and the app hung up: it may have crashed on it
    if isinstance(exc, ConnectError):
        return "tls" if any(word in m for m in messages for word in _TLS_WORDS) else "connection"
    if isinstance(exc, NetworkError):
        return "disconnected"
    if isinstance(exc, DecodeError):
        # The head or a chunk was not HTTP, or the head was over hyper's limit; or the body was cut.
        return "disconnected" if messages and "end of file" in messages[-1] else "bad-reply"
    return type(exc).__name__
