"""Helpers to run a real sidecar in the test's event loop, configured through its own parser."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import redis

from streamgroup_sidecar.config import Settings, parse_settings
from streamgroup_sidecar.running import Sidecar
from tests.support.apps import RecordingApp
from tests.support.redis_server import RedisServer


def settings_for(server: RedisServer, app: RecordingApp, **env: str) -> Settings:
    """Settings as the operator would give them: ``SG_`` variables, read by the sidecar's parser."""
    base = {
        "SG_REDIS_URL": server.url,
        "SG_STREAMS": "orders",
        "SG_GROUP": "workers",
        "SG_CONSUMER": "c1",
        "SG_APP_URL": app.url,
        "SG_START_FROM": "0",
        "SG_HEALTH_HOST": "127.0.0.1",
        "SG_HEALTH_PORT": "0",
        "SG_RETRY_INITIAL": "20ms",
        "SG_RETRY_MAX": "200ms",
        "SG_READ_BLOCK": "200ms",
        "SG_STATS_INTERVAL": "100ms",
        "SG_SHUTDOWN_GRACE": "5s",
    }
    base.update({f"SG_{k.upper()}": v for k, v in env.items()})
    return parse_settings([], base)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Sidecar]:
    """A sidecar running (its group ready) until the block ends, then stopped gracefully.

    Errors of the sidecar fail the test.
    """
    sidecar = Sidecar(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop))
    try:
        while not sidecar.health.groups_ok:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield sidecar
    finally:
        stop.set()
        await asyncio.wait_for(task, settings.shutdown.grace + 5)


def group_pending(client: redis.Redis, stream: str, group: str = "workers") -> int:
    return int(client.xpending(stream, group)["pending"])


def group_backlog(client: redis.Redis, stream: str, group: str = "workers") -> tuple[int, int]:
    """(lag, pending) of the group on ``stream``: both 0 once everything was read and acknowledged."""
    [info] = [g for g in client.xinfo_groups(stream) if g["name"] == group.encode()]
    return int(info["lag"] or 0), int(info["pending"])


async def wait_for_pending_zero(client: redis.Redis, streams: list[str], timeout: float = 30.0) -> None:
    """Wait until the group has read every entry of ``streams`` and has nothing pending."""
    deadline = asyncio.get_running_loop().time() + timeout
    while any(group_backlog(client, s) != (0, 0) for s in streams):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError({s: group_backlog(client, s) for s in streams})
        await asyncio.sleep(0.05)


async def eventually(value: Callable[[], object], expected: object, timeout: float = 10.0) -> None:
    """Wait until ``value()`` equals ``expected``.

    The sidecar updates its counters when Redis's reply reaches it, which can be a moment after a test's own
    client already sees the work done in Redis; reading a counter right after ``wait_for_pending_zero`` races.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while (got := value()) != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"expected {expected!r} within {timeout}s, still {got!r}")
        await asyncio.sleep(0.01)


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as reply:
        return reply.status, await reply.text()
