"""The parts agree on what they share: a dead-letter stream the sidecar writes is the one the
operator measures and the CLI lists, whatever the template (here, one making a hash tag)."""

from __future__ import annotations

from aiohttp import web

from streamgroup_cli.dead_lettering import dead_letter_streams, list_dead_letters
from streamgroup_cli.reading import prepare
from streamgroup_cli.targeting import streamgroup_target
from streamgroup_core.connecting import Endpoint
from streamgroup_core.spec import parse_resource
from streamgroup_operator import building, config, grouping
from streamgroup_sidecar.config import parse_settings
from tests.sidecar.conftest import running, wait_for_pending_zero
from tests.support.apps import Received, RecordingApp
from tests.support.redis_server import RedisServer

TEMPLATE = "{{stream}}:dead"


def drop(_: Received) -> web.StreamResponse:
    return web.json_response({"status": "DROP"})


def resource(url: str) -> dict[str, object]:
    return {"metadata": {"namespace": "shop", "name": "billing", "uid": "u1"},
            "spec": {"redis": {"url": url}, "streams": ["orders"], "group": "workers",
                     "delivery": {"deadLetterStream": TEMPLATE, "maxDeliveries": 1},
                     "template": {"spec": {"containers": [{"name": "app"}]}}}}


class TestDeadLetterStreams:
    async def test_the_sidecar_writes_where_the_operator_measures_and_the_cli_lists(
        self, redis_server: RedisServer
    ) -> None:
        sg = resource(f"redis://127.0.0.1:{redis_server.port}/0")
        spec = parse_resource(sg)
        # The sidecar runs with exactly the environment the operator writes for this StreamGroup.
        deployment = building.build_deployment(sg["metadata"], spec, 1, config.SidecarDefaults())  # type: ignore[arg-type]
        [sidecar] = [c for c in deployment["spec"]["template"]["spec"]["containers"]
                     if c["name"] == building.SIDECAR_NAME]
        env = {e["name"]: e["value"] for e in sidecar["env"] if "value" in e}
        app = await RecordingApp(drop).start()
        try:
            env.update({"SG_APP_URL": app.url, "SG_CONSUMER": "pod-1", "SG_HEALTH_HOST": "127.0.0.1",
                        "SG_HEALTH_PORT": "0", "SG_READ_BLOCK": "200ms", "SG_START_FROM": "0"})
            client = redis_server.client()
            for n in range(5):
                client.xadd("orders", {"n": str(n)})
            async with running(parse_settings([], env)):
                await wait_for_pending_zero(client, ["orders"])
        finally:
            await app.stop()

        assert client.xlen("{orders}:dead") == 5
        operator_client = grouping.connect(Endpoint(spec.redis.address))
        try:
            stats = await grouping.measure(operator_client, list(spec.streams), spec.group,
                                           list(spec.dead_letter_streams))
        finally:
            await operator_client.aclose()
        assert stats.dead_letters == 5
        target = streamgroup_target(sg, {})
        client = prepare(client)  # as the CLI's own connection is
        [dlq] = dead_letter_streams(client, None, target)
        letters, total = list_dead_letters(client, dlq, 10)
        assert (dlq, total) == ("{orders}:dead", 5)
        assert {letter.get("reason") for letter in letters} == {"dropped"}
        # Given the dead-letter stream or its source, the CLI finds the same one.
        assert dead_letter_streams(client, "orders", target) == dead_letter_streams(client, dlq, target) == [dlq]
