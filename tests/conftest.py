"""Shared fixtures: private redis-server instances and recording HTTP apps, all on loopback."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests.support.apps import RecordingApp
from tests.support.redis_server import RedisServer

# StreamGroup fixtures (CRD, operator process) for the tests under tests/kube.
pytest_plugins = ["tests.kube.streamgroups"]

# Property-based tests (tests/*/test_fuzzing_*.py). "ci", the default, is deterministic: the same examples on
# every run (derandomized, no example database), few enough that the whole fuzz set stays well under a minute.
# HYPOTHESIS_PROFILE=long hunts for bugs with many more random examples, remembering failures in .hypothesis/.
# No deadline and no too-slow check: the machine is shared and its timing is noise, not a property.
hypothesis_settings.register_profile(
    "ci", max_examples=100, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.register_profile(
    "long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
