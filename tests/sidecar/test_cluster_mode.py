"""What cluster mode changes in the sidecar, checked without a cluster: dead-letter keys in their
source's slot (and the start-up refusal of one that is not), streams grouped by slot, which errors mean
"Redis failed", readiness across a partial outage, and a sidecar that cannot discover its cluster.

The sidecar on a real six-node cluster is in tests/topologies/test_sidecar_cluster.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    ConnectionError,
    MovedError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from streamgroup_core.deadletters import dead_letter_key_for
from streamgroup_core.partitions import keyslot, partition_keys
from streamgroup_sidecar import commands, health
from streamgroup_sidecar.config import ConfigError, Settings, parse_settings
from streamgroup_sidecar.dead_lettering import DeadLetterSlotError, dead_letter_keys
from streamgroup_sidecar.health import CLUSTER_SETTLE, Health
from streamgroup_sidecar.metrics import Metrics
from streamgroup_sidecar.reading import slot_groups
from streamgroup_sidecar.running import Sidecar
from tests.support.ports import free_port

DEFAULT = "{stream}:dead"


def cluster_settings(streams: str, **env: str) -> Settings:
    base = {"SG_REDIS_URL": f"redis://127.0.0.1:{free_port()},127.0.0.1:{free_port()}", "SG_REDIS_MODE": "cluster",
            "SG_STREAMS": streams, "SG_GROUP": "workers", "SG_CONSUMER": "c1", "SG_HEALTH_HOST": "127.0.0.1",
            "SG_HEALTH_PORT": "0", "SG_READ_BLOCK": "200ms", "SG_STATS_INTERVAL": "100ms", "SG_SHUTDOWN_GRACE": "2s"}
    base.update({f"SG_{k.upper()}": v for k, v in env.items()})
    return parse_settings([], base)


class TestDeadLetterKeys:
    @pytest.mark.parametrize("mode", ["standalone", "sentinel"])
    def test_outside_cluster_mode_the_template_gives_the_key_as_it_stands(self, mode: str) -> None:
        assert dead_letter_key_for(DEFAULT, "orders", mode) == "orders:dead"
        assert dead_letter_key_for(DEFAULT, "orders:{3}", mode) == "orders:{3}:dead"
        assert dead_letter_key_for("dlq:{stream}", "orders", mode) == "dlq:orders"

    def test_in_cluster_mode_the_default_key_shares_its_source_s_slot(self) -> None:
        assert dead_letter_key_for(DEFAULT, "orders", "cluster") == "{orders}:dead"
        assert dead_letter_key_for(DEFAULT, "orders:{3}", "cluster") == "orders:{3}:dead"
        assert dead_letter_key_for(DEFAULT, "{user1}.events", "cluster") == "{user1}.events:dead"
        for stream in ["orders", "a{b", "x{", "é", *partition_keys("orders", 16)]:
            key = dead_letter_key_for(DEFAULT, stream, "cluster")
            assert keyslot(key) == keyslot(stream), (stream, key)
            assert dead_letter_keys(DEFAULT, [stream], "cluster") == {stream: key}

    def test_in_cluster_mode_a_template_is_taken_as_it_stands_when_its_keys_share_the_slots(self) -> None:
        assert dead_letter_keys("{{stream}}:dead", ["orders"], "cluster") == {"orders": "{orders}:dead"}
        assert dead_letter_keys("dlq:{stream}", ["orders:{3}"], "cluster") == {"orders:{3}": "dlq:orders:{3}"}

    def test_in_cluster_mode_a_key_in_another_slot_is_refused_naming_both_slots(self) -> None:
        with pytest.raises(DeadLetterSlotError) as refused:
            dead_letter_keys("dlq:{stream}", ["orders:{1}", "orders"], "cluster")
        message = str(refused.value)
        assert f"'orders' (slot {keyslot('orders')})" in message
        assert f"'dlq:orders' (slot {keyslot('dlq:orders')})" in message
        assert "--dead-letter-stream" in message and isinstance(refused.value, ConfigError)
        # The partition's tag is broken by the template's braces: `{orders:{3}` is its hash tag.
        with pytest.raises(DeadLetterSlotError, match=r"'\{orders:\{3\}\}:dead'"):
            dead_letter_keys("{{stream}}:dead", ["orders:{3}"], "cluster")
        # A name with a stray closing brace cannot be its own hash tag.
        with pytest.raises(DeadLetterSlotError, match="without a brace"):
            dead_letter_keys(DEFAULT, ["foo{}"], "cluster")
        assert dead_letter_keys("dlq:{stream}", ["orders"], "standalone") == {"orders": "dlq:orders"}

    def test_a_sidecar_in_cluster_mode_refuses_to_start_with_such_a_template(self) -> None:
        # `dlq:orders:{0}` keeps the partition's tag, `dlq:orders` is in another slot than `orders`.
        settings = cluster_settings("orders:{0},orders", dead_letter_stream="dlq:{stream}")
        with pytest.raises(DeadLetterSlotError, match=rf"'orders' \(slot {keyslot('orders')}\) in 'dlq:orders'"):
            Sidecar(settings)


class TestSlotGroups:
    def test_streams_sharing_a_slot_are_read_together_in_the_order_given(self) -> None:
        streams = ("orders:{1}", "refunds", "orders:{0}", "refunds:{1}", "orders")
        assert slot_groups(streams) == [("orders:{1}", "refunds:{1}"), ("refunds",), ("orders:{0}",), ("orders",)]
        assert len(slot_groups((*partition_keys("orders", 6), "refunds"))) == 7


class TestRedisFailures:
    @pytest.mark.parametrize("exc", [
        ConnectionError("lost"), ClusterDownError("CLUSTERDOWN The cluster is down"), ClusterError("TTL exhausted."),
        TryAgainError("TRYAGAIN"), MovedError("3999 127.0.0.1:6381"), AskError("3999 127.0.0.1:6381"),
        RedisClusterException("Redis Cluster cannot be connected"), SlotNotCoveredError("Slot 1 is not covered"),
        ResponseError("UNBLOCKED the stream key no longer exists"),
    ])
    def test_what_the_cluster_raises_while_it_changes_is_a_redis_outage_that_units_retry(
        self, exc: Exception
    ) -> None:
        assert isinstance(exc, commands.REDIS_FAILURES)
        assert commands.is_outage(exc)

    def test_a_wrong_command_is_not_an_outage(self) -> None:
        assert not commands.is_outage(ResponseError("NOGROUP No such key"))
        assert not commands.is_outage(ResponseError("ERR syntax error"))


class TestReadinessInClusterMode:
    def make(self, cluster: bool) -> Health:
        return Health(Metrics(CollectorRegistry()), None, cluster=cluster)  # type: ignore[arg-type]

    def test_redis_is_back_only_once_no_call_failed_for_a_whole_back_off(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from streamgroup_core.logs import Incident

        now = [1000.0]
        monkeypatch.setattr(health.time, "monotonic", lambda: now[0])
        h = self.make(cluster=True)
        reads, acks = Incident(logging.getLogger("t"), "reads"), Incident(logging.getLogger("t"), "acks")
        h.redis_recovered(reads)
        assert h.redis_ok
        h.redis_failed("xreadgroup", reads, ConnectionError("primary gone"))
        assert not h.redis_ok
        now[0] += 1.0
        h.redis_recovered(acks)  # another primary answers: part of the cluster is still down
        assert not h.redis_ok
        now[0] += CLUSTER_SETTLE
        h.redis_recovered(acks)
        assert h.redis_ok

    def test_outside_cluster_mode_the_first_success_ends_the_outage(self) -> None:
        from streamgroup_core.logs import Incident

        h = self.make(cluster=False)
        incident = Incident(logging.getLogger("t"), "reads")
        h.redis_failed("xreadgroup", incident, ConnectionError("restarting"))
        assert not h.redis_ok
        h.redis_recovered(incident)
        assert h.redis_ok


async def test_a_sidecar_that_cannot_discover_its_cluster_keeps_retrying_and_is_not_ready() -> None:
    settings = cluster_settings("orders:{0},refunds")  # nothing listens on the seeds
    sidecar = Sidecar(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop))
    errors = sidecar.metrics.redis_errors.labels("xgroup_create")
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while errors._value.get() < 3:
            assert not task.done(), task.exception()
            assert asyncio.get_running_loop().time() < deadline, "no retries seen"
            await asyncio.sleep(0.05)
        assert sidecar.health.readiness() == {"redis": False, "group": False, "app": True, "permissions": True}
    finally:
        stop.set()
        await asyncio.wait_for(task, settings.shutdown.grace + 5)
