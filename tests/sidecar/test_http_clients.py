"""Every HTTP client reports every outcome the same way (the built-in one is the default)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from streamgroup_sidecar.delivering import Deliverer, make_deliverer
from streamgroup_sidecar.encoding import Request
from tests.support.apps import Received, RecordingApp
from tests.support.ports import free_port

REQUEST = Request(b'{"k":"v"}', {"Content-Type": "application/json", "Streamgroup-Id": "1-0"})


@pytest.fixture(params=["builtin", "pyreqwest", "aiohttp"])
async def deliverer_for(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    made: list[Deliverer] = []

    async def make(url: str, timeout: float = 5.0) -> Deliverer:
        deliverer = make_deliverer(request.param, url, timeout, 8)
        await deliverer.start()
        made.append(deliverer)
        return deliverer

    yield make
    for deliverer in made:
        await deliverer.close()


class TestOutcomes:
    async def test_status_body_and_headers_of_a_reply_are_reported(self, deliverer_for: object) -> None:
        def behaviour(got: Received) -> web.StreamResponse:
            return web.json_response({"status": "RETRY"}, status=200, headers={"Retry-After": "3"})

        app = await RecordingApp(behaviour).start()
        try:
            attempt = await deliverer_for(app.url)  # type: ignore[operator]
            result = await attempt.post(REQUEST)
        finally:
            await app.stop()
        assert (result.status, result.retry_after, result.error) == (200, "3", None)
        assert result.body == b'{"status": "RETRY"}' and "json" in result.content_type
        [received] = app.received
        assert received.body == b'{"k":"v"}' and received.headers["streamgroup-id"] == "1-0"

    async def test_non_json_bodies_are_not_kept(self, deliverer_for: object) -> None:
        app = await RecordingApp(lambda got: web.Response(status=500, text="boom")).start()
        try:
            result = await (await deliverer_for(app.url)).post(REQUEST)  # type: ignore[operator]
        finally:
            await app.stop()
        assert (result.status, result.body) == (500, b"")

    async def test_a_slow_app_is_a_timeout(self, deliverer_for: object) -> None:
        async def slow(got: Received) -> web.StreamResponse:
            await asyncio.sleep(2)
            return web.Response(status=200)

        app = await RecordingApp(slow).start()
        try:
            result = await (await deliverer_for(app.url, timeout=0.3)).post(REQUEST)  # type: ignore[operator]
        finally:
            await app.stop()
        assert result.error == "timeout" and result.status is None

    async def test_nothing_listening_is_a_connection_error(self, deliverer_for: object) -> None:
        deliverer = await deliverer_for(f"http://127.0.0.1:{free_port()}/")  # type: ignore[operator]
        result = await deliverer.post(REQUEST)
        assert result.error == "connection"
        assert await deliverer.probe(f"http://127.0.0.1:{free_port()}/health") is False

    async def test_a_redirect_is_not_followed_and_not_a_success(self, deliverer_for: object) -> None:
        app = await RecordingApp(lambda got: web.Response(status=307, headers={"Location": "/elsewhere"})).start()
        try:
            result = await (await deliverer_for(app.url)).post(REQUEST)  # type: ignore[operator]
        finally:
            await app.stop()
        assert result.status == 307 and len(app.received) == 1
