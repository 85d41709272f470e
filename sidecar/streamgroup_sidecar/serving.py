"""The health and metrics endpoint: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` says the process and its event loop are alive (kubelet restarts it
otherwise). ``/readyz`` says whether it can do its job right now: Redis reachable,
the group present on every stream, the app answering. Each check is reported by
name in the JSON body so that a failing probe explains itself.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

Checks = Callable[[], dict[str, bool]]


def make_app(registry: CollectorRegistry, readiness: Checks, liveness: Checks) -> web.Application:
    def report(checks: dict[str, bool]) -> web.Response:
        ok = all(checks.values())
        return web.json_response({"ok": ok, **checks}, status=200 if ok else 503)

    async def healthz(_: web.Request) -> web.Response:
        return report(liveness())

    async def readyz(_: web.Request) -> web.Response:
        return report(readiness())

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


class Server:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self._port = port
        self.port: int | None = None

    async def start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        addresses = self._runner.addresses
        assert addresses, "the server is listening"
        self.port = int(addresses[0][1])
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
