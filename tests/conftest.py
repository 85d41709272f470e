"""Shared fixtures: private redis-server instances and recording HTTP apps, all on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.apps import RecordingApp
from tests.support.redis_server import RedisServer

# StreamGroup fixtures (CRD, operator process) for the tests under tests/kube.
pytest_plugins = ["tests.kube.streamgroups"]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def app() -> AsyncIterator[RecordingApp]:
    recording = await RecordingApp().start()
    try:
        yield recording
    finally:
        await recording.stop()
