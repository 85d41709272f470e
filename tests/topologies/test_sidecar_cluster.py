"""The sidecar on a real six-node Redis Cluster: two sidecars, a stream in six partitions
(``orders:{0}`` … ``orders:{5}``, spread over the three primaries) and an untagged stream.

Each test counts 6,000 entries that a replica acknowledged (``WAIT 1``) and asserts that every one
reached the app, poison ones the dead-letter stream in their source's slot, and that the group ends
with nothing pending; while the sidecars deliver, a primary is killed (SIGKILL, its replica
promoted), or a slot holding a partition moves to another primary (ASK while its keys move, MOVED
after). Bounded: entries, and every wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from streamgroup_core.deadletters import dead_letter_key_for
from streamgroup_core.partitions import keyslot, partition_keys
from streamgroup_sidecar.config import parse_settings
from streamgroup_sidecar.reading import slot_groups
from tests.sidecar.conftest import eventually, running, wait_for_pending_zero
from tests.support.apps import RecordingApp
from tests.support.redis_server import make_tls
from tests.support.redis_topologies import RedisCluster
from tests.support.sidecar_process import SidecarProcess
from tests.topologies.delivering import Counted, Tally, produce

PASSWORD = "data-pw"
PARTITIONS = partition_keys("orders", 6)
UNTAGGED = "refunds"
STREAMS = [*PARTITIONS, UNTAGGED]
TOTAL = 6000
POISON_EVERY = 500

FIXED_CONNECTIONS = 8
"""Per primary, beyond one per lane: the acker, the lease keeper, the stats, the reclaim sweep and four
dead-letter writers (README, "Redis topologies")."""

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(password=PASSWORD) as server:
        yield server


def sidecar_env(cluster: RedisCluster, app: RecordingApp, consumer: str) -> dict[str, str]:
    return {
        "SG_REDIS_URL": f"redis://{cluster.seeds}", "SG_REDIS_MODE": "cluster", "SG_REDIS_PASSWORD": PASSWORD,
        "SG_STREAMS": ",".join(STREAMS), "SG_GROUP": "workers", "SG_CONSUMER": consumer, "SG_APP_URL": app.url,
        "SG_START_FROM": "0", "SG_READ_BLOCK": "1s", "SG_STATS_INTERVAL": "1s", "SG_RETRY_INITIAL": "20ms",
        "SG_RETRY_MAX": "200ms", "SG_CLAIM_MIN_IDLE": "1s", "SG_CLAIM_INTERVAL": "300ms",
        "SG_MAX_IN_FLIGHT": "32", "SG_LOG_LEVEL": "info",
    }


@contextlib.asynccontextmanager
async def two_sidecars(cluster: RedisCluster, app: RecordingApp) -> AsyncIterator[list[SidecarProcess]]:
    """Sidecars ``a`` and ``b``, ready; their logs are printed if the block fails."""
    sidecars = [SidecarProcess(sidecar_env(cluster, app, name)) for name in ("a", "b")]
    try:
        for sidecar in sidecars:
            sidecar.start()
        for sidecar in sidecars:
            await asyncio.to_thread(sidecar.wait_ready, 60)
        yield sidecars
        for sidecar in sidecars:
            assert sidecar.process is not None and sidecar.process.poll() is None, \
                f"a sidecar exited:\n{sidecar.logs()[-3000:]}"
    except BaseException:
        for sidecar in sidecars:
            print(f"--- sidecar {sidecar.env['SG_CONSUMER']}\n{sidecar.logs()[-6000:]}")
        raise
    finally:
        for sidecar in sidecars:
            sidecar.terminate()
        for sidecar in sidecars:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(sidecar.wait, 15)
            sidecar.cleanup()


def primary_client(cluster: RedisCluster, stream: str) -> redis.Redis:
    return cluster.primary_of(stream).client()


async def produce_async(cluster: RedisCluster, numbers: range, counted: Counted) -> None:
    await asyncio.to_thread(produce, lambda s: primary_client(cluster, s), STREAMS, numbers, counted, POISON_EVERY)


async def wait_delivered(app: RecordingApp, tally: Tally, wanted: set[tuple[str, str]], timeout: float) -> None:
    await app.wait_until(lambda: tally.update().accepted >= wanted, timeout=timeout)


def dead_letters(cluster: RedisCluster) -> set[tuple[str, str]]:
    """(source stream, ID) of every dead letter, each read from its source's dead-letter stream."""
    client = cluster.client()
    try:
        found = set()
        for stream in STREAMS:
            for _, fields in client.xrange(dead_letter_key_for("{stream}:dead", stream, "cluster")):
                assert fields[b"sg:stream"].decode() == stream
                found.add((stream, fields[b"sg:id"].decode()))
        return found
    finally:
        client.close()


def assert_one_redis_incident_each(sidecars: list[SidecarProcess]) -> None:
    """Each sidecar logged the outage once (a primary down while the others answer is one incident)."""
    for sidecar in sidecars:
        logs = sidecar.logs()
        assert logs.count("reaching Redis failed") <= 1, logs[-3000:]
        assert "Traceback" not in logs, logs[-3000:]


async def assert_all_settled(cluster: RedisCluster, app: RecordingApp, tally: Tally, counted: Counted) -> None:
    """Every counted entry accepted by the app or dead-lettered, and the group with nothing pending."""
    await wait_delivered(app, tally, counted.good, timeout=180)
    client = cluster.client()
    try:
        await wait_for_pending_zero(client, STREAMS, timeout=60)
    finally:
        client.close()
    assert counted.poison <= dead_letters(cluster)
    assert not counted.poison & tally.update().accepted


class TestDelivery:
    async def test_two_sidecars_deliver_six_partitions_and_an_untagged_stream_without_command_getkeys(
        self, cluster: RedisCluster, app: RecordingApp
    ) -> None:
        assert len({cluster.primary_of(key).port for key in PARTITIONS}) == 3, "the partitions span every primary"
        assert len(slot_groups(tuple(STREAMS))) == 7
        counted = Counted()
        await produce_async(cluster, range(TOTAL), counted)
        assert counted.total == TOTAL and len(counted.poison) == TOTAL // POISON_EVERY
        getkeys_before = cluster.command_calls("command|getkeys")
        tally = Tally(app)
        async with two_sidecars(cluster, app):
            await assert_all_settled(cluster, app, tally, counted)
            assert set(tally.by_consumer) == {"a", "b"}, tally.by_consumer
        # Reads were routed to their slot's primary: redis-py never had to ask a node where their keys are.
        assert cluster.command_calls("command|getkeys") == getkeys_before
        # The dead letters are in their source's slot: `{refunds}:dead`, `orders:{n}:dead`.
        assert dead_letter_key_for("{stream}:dead", UNTAGGED, "cluster") == "{refunds}:dead"
        for stream in STREAMS:
            key = dead_letter_key_for("{stream}:dead", stream, "cluster")
            assert keyslot(key) == keyslot(stream)
            assert cluster.primary_of(key).client().xlen(key) >= 1  # on the primary of its source's slot


    async def test_entries_a_vanished_consumer_left_are_reclaimed_stream_by_stream_and_trimmed_ones_recorded(
        self, cluster: RedisCluster, app: RecordingApp
    ) -> None:
        client = cluster.client()
        try:
            for stream in ("orders:{2}", UNTAGGED):
                client.xgroup_create(stream, "workers", id="0", mkstream=True)
                for n in range(5):
                    client.xadd(stream, {"n": str(n)})
                client.xreadgroup("workers", "ghost", {stream: ">"})  # read, never acked
            client.xtrim(UNTAGGED, maxlen=0, approximate=False)  # gone from the stream, still pending
            # This one runs in the test's event loop, to read its counters.
            settings = parse_settings([], {
                **sidecar_env(cluster, app, "c1"), "SG_STREAMS": f"orders:{{2}},{UNTAGGED}",
                "SG_HEALTH_HOST": "127.0.0.1", "SG_HEALTH_PORT": "0", "SG_SHUTDOWN_GRACE": "5s"})
            async with running(settings) as sidecar:
                await wait_for_pending_zero(client, ["orders:{2}", UNTAGGED], timeout=30)
                await eventually(lambda: sidecar.metrics.reclaimed.labels("orders:{2}")._value.get(), 5)
                await eventually(lambda: sidecar.metrics.dead_letters.labels(UNTAGGED, "trimmed")._value.get(), 5)
            dead = client.xrange("{refunds}:dead")
            assert {f[b"sg:reason"] for _, f in dead} == {b"trimmed"} and len(dead) == 5
            assert {r.headers["streamgroup-delivery-count"] for r in app.received} == {"2"}
            assert len(app.received) == 5 and {r.stream for r in app.received} == {"orders:{2}"}
        finally:
            client.close()


class TestFaults:
    async def test_a_primary_killed_while_delivering_is_replaced_and_nothing_counted_is_lost(
        self, cluster: RedisCluster, app: RecordingApp
    ) -> None:
        counted = Counted()
        await produce_async(cluster, range(TOTAL // 2), counted)
        tally = Tally(app)
        async with two_sidecars(cluster, app) as sidecars:
            producing = asyncio.create_task(produce_async(cluster, range(TOTAL // 2, TOTAL), counted))
            await app.wait_until(lambda: len(tally.update().accepted) >= TOTAL // 4, timeout=120)
            victim = cluster.primary_of(PARTITIONS[0])
            victim.kill()
            killed_at = len(tally.accepted)
            await asyncio.to_thread(cluster.wait_failed_over, victim.port)
            # Back as a replica of the promoted one (as Kubernetes restarts a pod): until then the
            # partition has no replica, so nothing written to it can be counted.
            await asyncio.to_thread(cluster.restart, victim.port)
            await asyncio.wait_for(producing, 180)
            assert counted.total == TOTAL
            await assert_all_settled(cluster, app, tally, counted)
            for sidecar in sidecars:
                await asyncio.to_thread(sidecar.wait_ready, 30)  # ready again
            assert_one_redis_incident_each(sidecars)
        print(f"\nprimary {victim.port} killed after {killed_at} of {TOTAL} deliveries; "
              f"{len(app.answered)} requests in all")
        assert killed_at < len(counted.good)

    async def test_a_slot_moved_to_another_primary_while_delivering_loses_nothing(
        self, cluster: RedisCluster, app: RecordingApp
    ) -> None:
        counted = Counted()
        await produce_async(cluster, range(TOTAL // 2), counted)
        moving = PARTITIONS[1]
        slot = keyslot(moving)
        source = cluster.primary_of(moving).port
        target = next(port for port in cluster.replicas_by_primary() if port != source)
        tally = Tally(app)
        async with two_sidecars(cluster, app) as sidecars:
            producing = asyncio.create_task(produce_async(cluster, range(TOTAL // 2, TOTAL), counted))
            await app.wait_until(lambda: len(tally.update().accepted) >= TOTAL // 4, timeout=120)
            moved_at = len(tally.accepted)
            # A pause after each key: the source answers ASK for the keys already on the target.
            keys = await asyncio.to_thread(cluster.migrate_slot, slot, target, 0.5)
            await asyncio.wait_for(producing, 180)
            assert counted.total == TOTAL
            await assert_all_settled(cluster, app, tally, counted)
            for sidecar in sidecars:
                await asyncio.to_thread(sidecar.wait_ready, 30)
            assert_one_redis_incident_each(sidecars)
        assert keys >= 1 and cluster.primary_of(moving).port == target
        delivered = {key for key in tally.accepted if key[0] == moving} & counted.good
        print(f"\nslot {slot} ({keys} keys) moved {source} -> {target} after {moved_at} of {TOTAL} deliveries; "
              f"all {len(delivered)} counted entries of {moving} delivered")
        assert moved_at < len(counted.good)


class TestTls:
    async def test_a_sidecar_delivers_from_a_cluster_that_speaks_only_tls(
        self, tmp_path: Path, app: RecordingApp
    ) -> None:
        certificates = make_tls(tmp_path / "tls", "redis.test")
        with RedisCluster(password=PASSWORD, tls=certificates) as cluster:
            counted = Counted()
            await produce_async(cluster, range(600), counted)
            env = {**sidecar_env(cluster, app, "a"), "SG_REDIS_URL": f"rediss://{cluster.seeds}",
                   # The certificate names redis.test only: every node the sidecar discovers is checked against it.
                   "SG_REDIS_TLS_SERVER_NAME": "redis.test", "SG_REDIS_TLS_CA_FILE": str(certificates / "ca.crt"),
                   "SG_REDIS_TLS_CERT_FILE": str(certificates / "client.crt"),
                   "SG_REDIS_TLS_KEY_FILE": str(certificates / "client.key")}
            sidecar = SidecarProcess(env)
            try:
                sidecar.start()
                await asyncio.to_thread(sidecar.wait_ready, 60)
                await assert_all_settled(cluster, app, Tally(app), counted)
                assert "Traceback" not in sidecar.logs()
            except BaseException:
                print(sidecar.logs()[-6000:])
                raise
            finally:
                sidecar.terminate()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(sidecar.wait, 15)
                sidecar.cleanup()


class TestConnections:
    async def test_each_primary_holds_at_most_its_lanes_plus_the_fixed_units_even_in_a_poison_storm(
        self, cluster: RedisCluster, app: RecordingApp
    ) -> None:
        counted = Counted()
        # Every entry poison: every worker wants to write a dead letter at once.
        await asyncio.to_thread(produce, lambda s: primary_client(cluster, s), STREAMS, range(700), counted, 1)
        assert len(counted.poison) == 700
        env = {**sidecar_env(cluster, app, "storm"), "SG_MAX_IN_FLIGHT": "64"}
        sidecar = SidecarProcess(env)
        try:
            sidecar.start()
            await asyncio.to_thread(sidecar.wait_ready, 60)
            client = cluster.client()
            try:
                await wait_for_pending_zero(client, STREAMS, timeout=120)
            finally:
                client.close()
            assert counted.poison <= dead_letters(cluster)
            lanes: dict[int, int] = {}
            for group in slot_groups(tuple(STREAMS)):
                port = cluster.primary_of(group[0]).port
                lanes[port] = lanes.get(port, 0) + 1
            for port, owned in lanes.items():
                named = [line for line in cluster.node(port).client().client_list()
                         if line["name"] == "streamgroup-sidecar:workers:storm"]
                # Connections stay in the pool once opened: their number is the peak of concurrent calls.
                print(f"\nprimary {port}: {owned} lanes, {len(named)} connections")
                assert 1 <= len(named) <= owned + FIXED_CONNECTIONS, (port, owned, len(named))
        except BaseException:
            print(sidecar.logs()[-6000:])
            raise
        finally:
            sidecar.terminate()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(sidecar.wait, 15)
            sidecar.cleanup()
