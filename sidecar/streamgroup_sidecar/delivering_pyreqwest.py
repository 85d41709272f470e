"""An alternative HTTP client, pyreqwest (``--http-client pyreqwest``): same interface, same outcomes.

pyreqwest (Rust's reqwest) is the fastest general-purpose client measured here, and was the
default until the built-in client (:mod:`.posting`) cost a third of its CPU per request. It stays
available as a general-purpose client (its own TLS stack, a mature HTTP/1.1 implementation) for
an app the built-in client has trouble with. A module of its own so that pyreqwest and its
Tokio runtime are loaded only by the sidecars that choose it.
"""

from __future__ import annotations

from datetime import timedelta

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import ConnectError, NetworkError, PyreqwestError

from .encoding import Request
from .posting import MAX_REPLY_BYTES, USER_AGENT
from .replies import Attempt, wants_body


class PyreqwestDeliverer:
    def __init__(self, url: str, timeout: float, max_connections: int) -> None:
        self._url = url
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
