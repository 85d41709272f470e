"""The health and metrics endpoint of the sidecar and the operator: ``/healthz``, ``/readyz``, ``/metrics``.

``/healthz`` says the process and its event loop are alive (kubelet restarts it
otherwise). ``/readyz`` says whether it can do its job right now (for the sidecar: Redis
reachable, the group present on every stream, the app answering). Each check is reported
by name in the JSON body so that a failing probe explains itself.

Why the standard library's threaded WSGI server rather than an asyncio one: probes and
scrapes come a few times a minute, and an aiohttp server kept aiohttp in every sidecar's
memory only for them (a sixth of its memory budget; docs/performance.md has the figures). Serving from
its own thread also lets ``/healthz`` notice an event loop that stopped turning, which a
server running on that loop could not report. ``/metrics`` is prometheus_client's own WSGI
app (content negotiation, gzip, ``name[]`` filters).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

Checks = Callable[[], dict[str, bool]]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def make_app(registry: CollectorRegistry, readiness: Checks, liveness: Checks,
             problems: Callable[[], list[str]] | None = None) -> WSGIApp:
    """``problems``: sentences ``/readyz`` adds to its checks (e.g. which command Redis refuses), if any."""
    metrics = make_wsgi_app(registry)

    def report(checks: dict[str, bool], start_response: StartResponse, notes: list[str] | None = None) -> list[bytes]:
        ok = all(checks.values())
        body = json.dumps({"ok": ok, **checks, **({"problems": notes} if notes else {})}).encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
            return [b""]
        if path == "/healthz":
            return report(liveness(), start_response)
        if path == "/readyz":
            return report(readiness(), start_response, problems() if problems else None)
        if path == "/metrics":
            result: Iterable[bytes] = metrics(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds the process up at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per probe or scrape."""


class Server:
    """Serves a WSGI app from a background thread; start and stop are quick and never block the loop long."""

    def __init__(self, app: WSGIApp, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    async def start(self) -> int:
        server = make_server(self._host, self._port, self._app, _ThreadingServer, _QuietHandler)
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="health-server", daemon=True)
        self._thread.start()
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()  # returns within one poll interval
        server.server_close()
