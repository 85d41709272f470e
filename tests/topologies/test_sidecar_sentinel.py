"""The sidecar in sentinel mode: it delivers across a ``SENTINEL FAILOVER``, and across the primary
killed (SIGKILL, the sentinels promote the replica), and loses nothing counted.

Its client is a plain ``redis.asyncio.Redis`` whose connections ask the sentinels where the primary is
each time they connect; after a failover the old primary refuses writes (READONLY) or cuts blocked
reads short (UNBLOCKED), the sidecar drops its connections, and the next ones reach the new primary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from tests.sidecar.conftest import wait_for_pending_zero
from tests.support.apps import RecordingApp
from tests.support.redis_topologies import RedisSentinel
from tests.support.sidecar_process import SidecarProcess
from tests.topologies.delivering import Counted, Tally, produce

PASSWORD = "data-pw"
SENTINEL_PASSWORD = "sentinel-pw"
STREAMS = ["orders", "refunds"]
TOTAL = 4000
POISON_EVERY = 500

pytestmark = pytest.mark.slow


@pytest.fixture
def sentinel() -> Iterator[RedisSentinel]:
    with RedisSentinel(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD) as server:
        yield server


def primary_client(sentinel: RedisSentinel) -> redis.Redis:
    return sentinel.data_client(sentinel.node(sentinel.primary_port()))


@pytest.mark.parametrize("failover", ["sentinel-failover", "primary-killed"])
async def test_a_sidecar_delivers_across_a_failover_and_loses_nothing_counted(
    sentinel: RedisSentinel, app: RecordingApp, failover: str
) -> None:
    counted = Counted()

    async def produce_async(numbers: range) -> None:
        await asyncio.to_thread(produce, lambda _: primary_client(sentinel), STREAMS, numbers, counted, POISON_EVERY)

    await produce_async(range(TOTAL // 2))
    before = sentinel.primary_port()
    sidecar = SidecarProcess({
        "SG_REDIS_URL": f"redis://{sentinel.sentinel_addresses}", "SG_REDIS_MODE": "sentinel",
        "SG_REDIS_SENTINEL_MASTER": sentinel.master_name, "SG_REDIS_PASSWORD": PASSWORD,
        "SG_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD, "SG_STREAMS": ",".join(STREAMS), "SG_GROUP": "workers",
        "SG_CONSUMER": "c1", "SG_APP_URL": app.url, "SG_START_FROM": "0", "SG_READ_BLOCK": "1s",
        "SG_STATS_INTERVAL": "1s", "SG_RETRY_INITIAL": "20ms", "SG_RETRY_MAX": "200ms",
        "SG_CLAIM_MIN_IDLE": "1s", "SG_CLAIM_INTERVAL": "300ms", "SG_LOG_LEVEL": "info",
    })
    tally = Tally(app)
    try:
        sidecar.start()
        await asyncio.to_thread(sidecar.wait_ready, 60)
        producing = asyncio.create_task(produce_async(range(TOTAL // 2, TOTAL)))
        await app.wait_until(lambda: len(tally.update().accepted) >= TOTAL // 4, timeout=120)
        failed_over_at = len(tally.accepted)
        if failover == "sentinel-failover":
            after = await asyncio.to_thread(sentinel.failover)
        else:
            # Until the old primary is back as a replica nothing can be counted (WAIT 1): the producer retries.
            _, after = await asyncio.to_thread(sentinel.kill_primary)
            await asyncio.to_thread(sentinel.restart, before)
        await asyncio.wait_for(producing, 180)
        assert counted.total == TOTAL
        await app.wait_until(lambda: tally.update().accepted >= counted.good, timeout=180)
        client = primary_client(sentinel)
        try:
            await wait_for_pending_zero(client, STREAMS, timeout=60)
            dead = {(fields[b"sg:stream"].decode(), fields[b"sg:id"].decode())
                    for stream in STREAMS for _, fields in client.xrange(f"{stream}:dead")}
        finally:
            client.close()
        await asyncio.to_thread(sidecar.wait_ready, 30)
        assert sidecar.process is not None and sidecar.process.poll() is None
        logs = sidecar.logs()
    except BaseException:
        print(sidecar.logs()[-6000:])
        raise
    finally:
        sidecar.terminate()
        await asyncio.to_thread(sidecar.wait, 15)
        sidecar.cleanup()
    assert after != before
    assert counted.poison <= dead
    assert failed_over_at < len(counted.good), "the failover happened while delivering"
    assert "Traceback" not in logs
    print(f"\n{failover} {before} -> {after} after {failed_over_at} of {TOTAL} deliveries; "
          f"{len(app.answered)} requests in all")
