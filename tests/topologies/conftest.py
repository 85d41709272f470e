"""The topology tests' app: it refuses poison entries, so they end as dead letters in their source's slot."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.apps import RecordingApp
from tests.topologies.delivering import refuse_poison


@pytest.fixture
async def app() -> AsyncIterator[RecordingApp]:
    recording = await RecordingApp(refuse_poison).start()
    try:
        yield recording
    finally:
        await recording.stop()
