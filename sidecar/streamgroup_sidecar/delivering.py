"""One HTTP attempt: POST a prepared request to the app and report what happened.

Every outcome, including transport errors, becomes an :class:`~streamgroup_sidecar.replies.Attempt`;
deciding what it means is :mod:`streamgroup_sidecar.replies`' job. Every client reports every
outcome the same way (``connection``, ``tls``, ``timeout``, ``disconnected``, ``bad-reply``, and
the same limits on a reply's header block and JSON body): tests/sidecar/test_http_contract.py
runs one conformance suite against all three.

Three clients behind one interface, chosen with ``--http-client``:

- ``builtin`` (the default, :mod:`.posting`): keep-alive HTTP/1.1 on the event loop with
  httptools' parser; the least CPU per entry of the three (docs/performance.md).
- ``pyreqwest`` (:mod:`.delivering_pyreqwest`): Rust's reqwest, a general-purpose client with
  its own TLS stack, for an app the built-in client has trouble with.
- ``aiohttp`` (:mod:`.delivering_aiohttp`): the most widely used Python client, as a fallback.

The alternatives are imported only when chosen: each costs memory (pyreqwest starts a Tokio
runtime, aiohttp is a large package).
"""

from __future__ import annotations

from typing import Protocol

from .encoding import Request
from .posting import BuiltinDeliverer
from .replies import Attempt

CLIENTS = ("builtin", "pyreqwest", "aiohttp")


class Deliverer(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def post(self, request: Request) -> Attempt: ...
    async def probe(self, url: str) -> bool: ...


def make_deliverer(client: str, url: str, timeout: float, max_connections: int) -> Deliverer:
    if client == "aiohttp":
        from .delivering_aiohttp import AiohttpDeliverer

        return AiohttpDeliverer(url, timeout, max_connections)
    if client == "pyreqwest":
        from .delivering_pyreqwest import PyreqwestDeliverer

        return PyreqwestDeliverer(url, timeout, max_connections)
    if client == "builtin":
        return BuiltinDeliverer(url, timeout, max_connections)
    raise ValueError(f"unknown HTTP client {client!r}; choose one of {', '.join(CLIENTS)}")
