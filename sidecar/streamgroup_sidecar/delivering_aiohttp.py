"""The fallback HTTP client, aiohttp (``--http-client aiohttp``): same interface, same outcomes.

A module of its own so that aiohttp is imported only by the sidecars that choose it.
"""

from __future__ import annotations

import aiohttp

from .encoding import Request
from .posting import MAX_REPLY_BYTES
from .replies import Attempt, wants_body


class AiohttpDeliverer:
    def __init__(self, url: str, timeout: float, max_connections: int) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "streamgroup-sidecar"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, request: Request) -> Attempt:
        assert self._session is not None, "start() first"
        try:
            async with self._session.post(self._url, data=request.body, headers=request.headers,
                                          allow_redirects=False) as reply:
                content_type = reply.headers.get("Content-Type", "")
                body = b""
                if wants_body(reply.status, content_type):
                    length = reply.content_length
                    if length is None or length <= MAX_REPLY_BYTES:
                        body = await reply.content.read(MAX_REPLY_BYTES)
                else:
                    await reply.read()
                return Attempt(
                    status=reply.status, body=body, content_type=content_type,
                    retry_after=reply.headers.get("Retry-After"),
                )
        except TimeoutError:
            return Attempt(error="timeout")
        except aiohttp.ClientConnectorError:
            return Attempt(error="connection")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            return Attempt(error="disconnected")
        except aiohttp.ClientError as exc:
            return Attempt(error=type(exc).__name__)

    async def probe(self, url: str) -> bool:
        """``True`` if ``url`` answers 2xx (the app's health endpoint)."""
        assert self._session is not None, "start() first"
        try:
            async with self._session.get(url) as reply:
                await reply.read()
                return 200 <= reply.status < 300
        except (TimeoutError, aiohttp.ClientError):
            return False
