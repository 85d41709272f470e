"""The least-privilege ACL users of `streamgroup acl` on a Redis Cluster and behind sentinels.

ACL users live on each node, so the printed lines are run on every one. With them the sidecar
delivers every partition and dead-letters a poison entry in its source's slot, the read-only CLI
user sees every partition, and no node logs a refusal.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from aiohttp import web

from streamgroup_cli.__main__ import main
from streamgroup_core.acls import setuser_arguments
from streamgroup_core.partitions import partition_keys
from tests.support.apps import Received, RecordingApp
from tests.support.redis_topologies import RedisCluster, RedisSentinel, _Node
from tests.support.sidecar_process import SidecarProcess

PASSWORD = "acl-pw"


def users(nodes: list[_Node], *argv: str) -> None:
    out = io.StringIO()
    assert main(list(argv), stdout=out) == 0
    for line in out.getvalue().splitlines():
        arguments = setuser_arguments(line.replace("<password>", PASSWORD))
        for node in nodes:
            node.client().execute_command(*arguments)


def refusals(nodes: list[_Node]) -> list[tuple[int, Any]]:
    found = []
    for node in nodes:
        for row in node.client().execute_command("ACL", "LOG"):
            fields = dict(zip(row[::2], row[1::2], strict=True))
            found.append((node.port, fields[b"object"]))
    return found


def refuse_poison(got: Received) -> web.StreamResponse:
    return web.Response(status=422 if b'"poison"' in got.body else 204)


async def deliver(env: dict[str, str], app: RecordingApp, expected: int) -> None:
    sidecar = SidecarProcess({**env, "SG_REDIS_USERNAME": "sg-billing-sidecar", "SG_REDIS_PASSWORD": PASSWORD,
                              "SG_GROUP": "billing", "SG_CONSUMER": "c1", "SG_APP_URL": app.url, "SG_START_FROM": "0",
                              "SG_READ_BLOCK": "1s", "SG_STATS_INTERVAL": "300ms"})
    sidecar.start()
    try:
        await asyncio.to_thread(sidecar.wait_ready, 60)
        await app.wait_until(lambda: len(app.received) >= expected, timeout=60)
        sidecar.terminate()
        assert await asyncio.to_thread(sidecar.wait, 30) == 0
    except BaseException:
        print(sidecar.logs()[-4000:])
        raise
    finally:
        sidecar.cleanup()


class TestOnACluster:
    async def test_the_sidecar_and_the_read_only_cli_work_with_only_their_rules_on_every_node(self) -> None:
        keys = [*partition_keys("orders", 3), "refunds"]
        app = await RecordingApp(refuse_poison).start()
        try:
            with RedisCluster() as cluster:
                users(cluster.nodes, "--redis-mode", "cluster", "acl", "--partitioned-streams", "orders:3",
                      "--streams", "refunds", "--group", "billing")
                admin = cluster.client()
                for key in keys:
                    admin.xgroup_create(key, "billing", id="0", mkstream=True)
                    for n in range(4):
                        admin.xadd(key, {"n": str(n), **({"poison": "1"} if key == "orders:{1}" and n == 2 else {})})
                await deliver({"SG_REDIS_URL": f"redis://{cluster.seeds}", "SG_REDIS_MODE": "cluster",
                               "SG_STREAMS": ",".join(keys)}, app, 16)
                assert admin.xlen("orders:{1}:dead") == 1
                assert all(admin.xpending(key, "billing")["pending"] == 0 for key in keys)
                url = f"redis://sg-billing-cli-read:{PASSWORD}@{cluster.seeds}"
                out = io.StringIO()
                assert main(["--redis-mode", "cluster", "--redis-url", url, "status", *keys, "-o", "json"],
                            stdout=out) == 0
                assert [row["stream"] for row in json.loads(out.getvalue())] == keys
                assert refusals(cluster.nodes) == []
        finally:
            await app.stop()


class TestBehindSentinels:
    async def test_the_sidecar_works_with_only_its_rules_on_the_data_nodes(self) -> None:
        app = await RecordingApp().start()
        try:
            with RedisSentinel() as sentinel:
                data = [sentinel.primary, sentinel.replica]
                users(data, "--redis-mode", "sentinel", "--redis-sentinel-master", sentinel.master_name,
                      "--redis-url", f"redis://{sentinel.sentinel_addresses}", "acl", "--streams", "orders",
                      "--group", "billing", "--parts", "sidecar")
                primary = sentinel.data_client(sentinel.primary)
                primary.xgroup_create("orders", "billing", id="0", mkstream=True)
                for n in range(5):
                    primary.xadd("orders", {"n": str(n)})
                await deliver({"SG_REDIS_URL": f"redis://{sentinel.sentinel_addresses}", "SG_REDIS_MODE": "sentinel",
                               "SG_REDIS_SENTINEL_MASTER": sentinel.master_name, "SG_STREAMS": "orders"}, app, 5)
                assert primary.xpending("orders", "billing")["pending"] == 0
                assert refusals(data) == []
        finally:
            await app.stop()
