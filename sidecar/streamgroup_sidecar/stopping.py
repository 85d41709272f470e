"""The stop signal: set once, when the sidecar starts shutting down.

Units look at it between steps (the reader before each read, the reclaimer before each page) and
wait on it instead of sleeping, so a back-off of many seconds never holds up a shutdown that has
``--shutdown-grace`` seconds in all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any


class Stop:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def during(self, delay: float) -> bool:
        """Sleep ``delay`` seconds, less if the stop comes first; ``True`` if it came."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), delay)
        return self._event.is_set()

    async def before(self, wait: Awaitable[Any]) -> bool:
        """Wait for ``wait`` or the stop, whichever comes first (the other is cancelled); ``True`` if stopped."""
        tasks = [asyncio.ensure_future(wait), asyncio.ensure_future(self._event.wait())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        return self._event.is_set()
