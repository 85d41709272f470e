"""Running the `streamgroup` command in-process, and making dead letters the way the sidecar does."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import redis
import redis.asyncio as aioredis

from streamgroup_cli import reading
from streamgroup_cli.__main__ import main
from streamgroup_core.deadletters import dead_letter_fields
from streamgroup_sidecar.commands import dead_letter
from streamgroup_sidecar.entries import Entry
from tests.support.redis_server import RedisServer


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


Run = Callable[..., Result]


@pytest.fixture
def cli(redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> Run:
    """``cli("status", "orders")``: the command against the test's Redis; stdout, stderr and exit status."""

    def run(*argv: str, stdin: str = "", url: bool = True) -> Result:
        capsys.readouterr()
        out = io.StringIO()
        code = main([*(["--redis-url", redis_server.url] if url else []), *argv], stdin=io.StringIO(stdin), stdout=out)
        return Result(code, out.getvalue(), capsys.readouterr().err)

    return run


def raw_fields(client: redis.Redis, stream: str, entry_id: str) -> list[tuple[bytes, bytes]]:
    """An entry's fields exactly as stored (order and repeated names kept)."""
    found = reading.entry(reading.prepare(client), stream, entry_id)
    assert found is not None, f"{stream} has no entry {entry_id}"
    return found.fields


def sidecar_dead_letters(
    server: RedisServer,
    stream: str,
    ids: Sequence[str],
    reason: str = "status-422",
    detail: str = "last attempt: status-422",
    deliveries: int = 5,
    group: str = "workers",
    without_payload: bool = False,
) -> None:
    """Dead-letter the given entries with the sidecar's own code (XACK + XADD to ``<stream>:dead``, one script).

    The default reason and detail are what the sidecar writes when the app answers 422.
    """
    client = reading.prepare(server.client())
    try:
        client.xgroup_create(stream, group, id="0")
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    client.xreadgroup(group, "pod-a", {stream: ">"})
    entries = [
        Entry(stream, entry_id, None if without_payload else raw_fields(client, stream, entry_id),
              deliveries=0 if without_payload else deliveries)
        for entry_id in ids
    ]

    async def write() -> None:
        aclient = aioredis.Redis(host="127.0.0.1", port=server.port, password=server.password)
        try:
            for entry in entries:
                assert await dead_letter(aclient, entry, f"{stream}:dead", group, "pod-a", reason, detail)
        finally:
            await aclient.aclose()

    asyncio.run(write())


def dead_letter_at(client: redis.Redis, dlq: str, dead_id: str, stream: str, original_id: str,
                   fields: dict[str, str], reason: str = "max-deliveries (status-500)") -> None:
    """A dead letter with a chosen ID (hence a chosen age), laid out by the core's function the sidecar uses."""
    flat = dead_letter_fields(stream, original_id, [(k.encode(), v.encode()) for k, v in fields.items()],
                              group="workers", consumer="pod-a", deliveries=3, reason=reason,
                              detail="last attempt: status-500", time_ms=int(time.time() * 1000))
    client.execute_command("XADD", dlq, dead_id, *flat)  # type: ignore[no-untyped-call]
