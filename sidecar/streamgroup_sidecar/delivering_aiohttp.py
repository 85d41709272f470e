"""The fallback HTTP client, aiohttp (``--http-client aiohttp``): same interface, same outcomes.

A module of its own so that aiohttp is imported only by the sidecars that choose it.

Its limits: the built-in client's (a header block of ``MAX_HEAD_BYTES``, checked once aiohttp
has read it, and a 2xx JSON body of ``MAX_REPLY_BYTES``) and aiohttp's own, which bound what it
reads of a header block (lines of at most 8190 bytes, at most 128 fields). Past any of them the
reply is ``bad-reply`` and the connection is dropped. Other bodies are read and dropped.

Two behaviours are corrected (:class:`_ResponseHandler`, through aiohttp internals that the
conformance suite, tests/sidecar/test_http_contract.py, holds in place): aiohttp takes a reply
without a length as complete at any end of the connection, a reset included; and it keeps a
reply that reaches an idle connection for the next request sent on it.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_parser import RawResponseMessage
from aiohttp.streams import StreamReader

from .encoding import Request
from .posting import IDLE_LIMIT, MAX_HEAD_BYTES, MAX_REPLY_BYTES, USER_AGENT, origin
from .replies import Attempt, wants_body

_BAD_REPLY = Attempt(error="bad-reply")
_MAX_FIELD_BYTES = 8190
_MAX_FIELDS = 128


class AiohttpDeliverer:
    def __init__(self, url: str, timeout: float, max_connections: int) -> None:
        self._url = url
        self._origin = origin(url)
        self._https = url.lower().startswith("https:")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Idle connections go after IDLE_LIMIT, as the built-in client's do: below the 5 s keep-alive of
        # uvicorn or Node, so the app seldom closes one just as a request is sent on it.
        connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=IDLE_LIMIT)
        # aiohttp has no public way to choose the protocol class; this is what it sets itself.
        connector._factory = functools.partial(  # type: ignore[assignment]
            _ResponseHandler, loop=asyncio.get_running_loop())
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, skip_auto_headers=("User-Agent",),
            headers={"User-Agent": USER_AGENT}, max_line_size=_MAX_FIELD_BYTES,
            max_field_size=_MAX_FIELD_BYTES, max_headers=_MAX_FIELDS,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, request: Request) -> Attempt:
        assert self._session is not None, "start() first"
        try:
            url = self._url if request.target is None else self._origin + request.target
            async with self._session.post(url, data=request.body, headers=request.headers,
                                          allow_redirects=False) as reply:
                if sum(len(name) + len(value) + 4 for name, value in reply.raw_headers) > MAX_HEAD_BYTES:
                    reply.close()
                    return _BAD_REPLY
                content_type = reply.headers.get("Content-Type", "")
                body = b""
                if wants_body(reply.status, content_type):
                    whole = await _json_body(reply)
                    if whole is None:
                        reply.close()  # drop the connection rather than read the rest
                        return _BAD_REPLY
                    body = whole
                else:
                    async for _ in reply.content.iter_any():  # read and dropped: the connection stays usable
                        pass
                return Attempt(
                    status=reply.status, body=body, content_type=content_type,
                    retry_after=reply.headers.get("Retry-After"),
                )
        except TimeoutError:
            return Attempt(error="timeout")
        except aiohttp.ClientSSLError:  # not trusted, or not TLS at all (a ClientConnectorError: caught first)
            return Attempt(error="tls")
        except aiohttp.ClientConnectorError as exc:
            # Connected, then dropped: with TLS, by the app during the handshake.
            handshake = self._https and isinstance(exc.os_error, ConnectionResetError | ConnectionAbortedError)
            return Attempt(error="tls" if handshake else "connection")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError):
            return Attempt(error="disconnected")  # a payload error: the body was cut short
        except aiohttp.ClientResponseError:  # not HTTP, or headers over the limits
            return _BAD_REPLY
        except aiohttp.ClientError as exc:
            return Attempt(error=type(exc).__name__)

    async def probe(self, url: str) -> bool:
        """``True`` if ``url`` answers 2xx (the app's health endpoint)."""
        assert self._session is not None, "start() first"
        try:
            # As for deliveries: a redirect is not an answer, and the body is read only to free the connection.
            async with self._session.get(url, allow_redirects=False) as reply:
                async for _ in reply.content.iter_any():
                    pass
                return 200 <= reply.status < 300
        except (TimeoutError, aiohttp.ClientError):
            return False


class _ResponseHandler(ResponseHandler):
    """aiohttp's connection protocol, corrected twice.

    A reset while a body is read cuts the body (``disconnected``): aiohttp ends a body without a
    length at any end of the connection, so the first half of a reply whose app crashed was taken
    for the whole (and ``{"status":"RET`` does not parse: an acknowledgement).

    Bytes on a connection with no request in flight drop it: aiohttp parsed them as the reply to
    the next request sent on it (a stray ``DROP`` dead-lettered the next entry).
    """

    _idle = True
    """The last reply's body has ended, and no request was sent since."""

    def set_response_params(self, **params: Any) -> None:
        self._idle = False  # aiohttp calls this before it sends each request
        super().set_response_params(**params)

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        message, payload = data  # a reply's head, parsed
        if not 100 <= message.code < 200:  # the final reply (aiohttp skips interim ones)
            payload.on_eof(self._reply_ended)
        super().feed_data(data, size)

    def _reply_ended(self) -> None:
        self._idle = True

    def data_received(self, data: bytes) -> None:
        if self._idle and data:
            self.force_close()  # a reply to no request: never kept for the next one
            if self.transport is not None:
                self.transport.close()
            return
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        payload = self._payload
        if exc is not None and payload is not None and not payload.is_eof():
            payload.set_exception(aiohttp.ClientPayloadError(f"the connection was reset: {exc!r}"))
        super().connection_lost(exc)


async def _json_body(reply: aiohttp.ClientResponse) -> bytes | None:
    """The whole body, however many pieces it comes in; ``None`` if it is over ``MAX_REPLY_BYTES``."""
    length = reply.content_length
    if length is not None and length > MAX_REPLY_BYTES:
        return None
    pieces = []
    size = 0
    while piece := await reply.content.read(MAX_REPLY_BYTES + 1 - size):  # b"" at the end
        size += len(piece)
        if size > MAX_REPLY_BYTES:
            return None
        pieces.append(piece)
    return b"".join(pieces)
