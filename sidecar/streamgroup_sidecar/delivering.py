"""One HTTP attempt: POST a prepared request to the app and report what happened.

Every outcome, including transport errors, becomes an :class:`~streamgroup_sidecar.replies.Attempt`;
deciding what it means is :mod:`streamgroup_sidecar.replies`' job.

Two clients behind one interface. pyreqwest (Rust's reqwest) is the default: measured in the
same run on this project's benchmark, it sends 2.5 times as many requests per second as aiohttp
on uvloop, at half the CPU per request (docs/performance.md). aiohttp stays available with
``--http-client aiohttp`` as a fallback (:mod:`.delivering_aiohttp`, imported only then).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import ConnectError, NetworkError, PyreqwestError

from .encoding import Request
from .replies import Attempt

# Replies are only read to find {"status": ...} (or a batch's "statuses"); a larger body is not one.
MAX_REPLY_BYTES = 1024 * 1024


class Deliverer(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def post(self, request: Request) -> Attempt: ...
    async def probe(self, url: str) -> bool: ...


def wants_body(status: int, content_type: str) -> bool:
    """Only a 2xx JSON reply can carry statuses worth reading."""
    return 200 <= status < 300 and "json" in content_type.lower()


class PyreqwestDeliverer:
    def __init__(self, url: str, timeout: float, max_connections: int) -> None:
        self._url = url
        self._timeout = timedelta(seconds=timeout)
        self._max_connections = max_connections
        self._client: Client | None = None

    async def start(self) -> None:
        # No proxy (the app is on localhost), no redirects (a redirect is not an acknowledgement).
        self._client = (ClientBuilder().max_connections(self._max_connections).timeout(self._timeout)
                        .follow_redirects(False).no_proxy().user_agent("streamgroup-sidecar").build())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def post(self, request: Request) -> Attempt:
        assert self._client is not None, "start() first"
        try:
            reply = await self._client.post(self._url).headers(request.headers).body_bytes(request.body).build().send()
            content = await reply.bytes()
            status = int(reply.status)
            content_type = reply.get_header("content-type") or ""
            body = bytes(content) if wants_body(status, content_type) and len(content) <= MAX_REPLY_BYTES else b""
            return Attempt(status=status, body=body, content_type=content_type,
                           retry_after=reply.get_header("retry-after"))
        except TimeoutError:
            return Attempt(error="timeout")
        except ConnectError:
            return Attempt(error="connection")
        except NetworkError:
            return Attempt(error="disconnected")
        except PyreqwestError as exc:
            return Attempt(error=type(exc).__name__)

    async def probe(self, url: str) -> bool:
        assert self._client is not None, "start() first"
        try:
            reply = await self._client.get(url).build().send()
            await reply.bytes()
            return 200 <= int(reply.status) < 300
        except (TimeoutError, PyreqwestError):
            return False


def make_deliverer(client: str, url: str, timeout: float, max_connections: int) -> Deliverer:
    if client == "aiohttp":
        # Imported only when chosen: aiohttp is about 10 MB of memory per sidecar.
        from .delivering_aiohttp import AiohttpDeliverer

        return AiohttpDeliverer(url, timeout, max_connections)
    return PyreqwestDeliverer(url, timeout, max_connections)
