"""docs/cli.md shows what the command really prints: its dead-letter examples, replayed on real dead letters.

The sidecar (its own code, in this process) delivers to an app that refuses one entry for good (422)
and fails another until --max-deliveries is used up (500), and reclaims an entry deleted from the
stream while a vanished consumer held it (trimmed). The CLI then lists and re-drives those dead
letters, and its output must be the documented one, up to IDs, times and column widths.
"""

from __future__ import annotations

import re
from pathlib import Path

import redis
from aiohttp import web

from tests.cli.conftest import Run
from tests.sidecar.conftest import running, settings_for
from tests.support.apps import Received, RecordingApp
from tests.support.redis_server import RedisServer

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
FAILING = {"A-1018": 422, "A-1019": 500}


def documented_output(command: str) -> list[str]:
    """The lines docs/cli.md shows after ``$ <command>``, up to the next prompt or the end of the block."""
    lines = DOC.read_text().splitlines()
    start = lines.index(f"$ {command}") + 1
    shown = []
    for line in lines[start:]:
        if line.startswith(("$ ", "```")):
            break
        shown.append(line)
    return shown


def normal(lines: list[str]) -> list[str]:
    """Lines with entry IDs, times and column widths left out, sorted (dead letters' order depends on timing)."""
    out = []
    for line in lines:
        line = re.sub(r"\b\d{13}-\d+\b", "<id>", line)
        line = re.sub(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\b", "<time>", line)
        out.append(" ".join(line.split()))
    return sorted(out)


def answer(got: Received) -> web.Response:
    return web.Response(status=FAILING.get(got.json()["order"], 204))


def orders_with_a_lost_entry(client: redis.Redis) -> None:
    """A-1017, read by a consumer that then vanished and deleted from the stream; then A-1018 and A-1019."""
    client.xadd("orders", {"order": "A-1017", "qty": "2"})
    client.xgroup_create("orders", "billing", id="0")
    [[_, [(lost_id, _)]]] = client.xreadgroup("billing", "orders-5d2b-9qf", {"orders": ">"}, count=1)
    client.xdel("orders", lost_id)
    client.xadd("orders", {"order": "A-1018", "qty": "1"})
    client.xadd("orders", {"order": "A-1019", "qty": "5"})


class TestTheDeadLettersExamples:
    async def test_list_and_redrive_print_what_the_docs_show(self, redis_server: RedisServer, cli: Run) -> None:
        client = redis_server.client()
        orders_with_a_lost_entry(client)
        app = await RecordingApp(answer).start()
        try:
            settings = settings_for(redis_server, app, group="billing", consumer="orders-7c9f-2xk",
                                    claim_min_idle="100ms", claim_interval="100ms")
            async with running(settings):
                await app.wait_until(lambda: client.xlen("orders:dead") == 3)
        finally:
            await app.stop()
        listed = cli("dead-letters", "list", "orders")
        assert listed.code == 0
        assert normal(listed.out.splitlines()) == normal(documented_output("streamgroup dead-letters list orders"))
        redriven = cli("dead-letters", "redrive", "orders", "--all")
        assert redriven.code == 0
        assert normal(redriven.out.splitlines()) == normal(
            documented_output("streamgroup dead-letters redrive orders --all"))
