"""Least-privilege Redis users: the rules `streamgroup acl` prints are enough for each part and no more.

Every test creates the users from the command's own output on a real redis-server, then runs the
real sidecar or the real CLI as those users. What users rely on: with its rules a part does all of
its work (delivery, dead letters, reclaim, leaving the group; the CLI's reading and writing commands)
and Redis logs no refusal; outside them Redis refuses (FLUSHALL, KEYS, another StreamGroup's
streams, the sidecar adding to its own source stream); a permission taken away is named, command and
keys, in the sidecar's log, /readyz and metrics, and what was pending stays pending until it is
granted again, then is delivered.
"""

from __future__ import annotations

import asyncio
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from aiohttp import web

from streamgroup_cli.__main__ import main
from streamgroup_core.acls import setuser_arguments
from tests.support.apps import Received, RecordingApp
from tests.support.redis_server import RedisServer
from tests.support.sidecar_process import SidecarProcess

PASSWORD = "s3cret-pw"
STREAMS = ["orders", "refunds"]


def create_users(server: RedisServer, *argv: str) -> dict[str, str]:
    """Every user `streamgroup acl` prints for ``argv``, made on ``server``; their names by part."""
    admin = server.client()
    names = {}
    out = io.StringIO()
    assert main(["acl", *argv], stdout=out) == 0
    for line in out.getvalue().splitlines():
        arguments = setuser_arguments(line.replace("<password>", PASSWORD))
        admin.execute_command(*arguments)
        names[arguments[2]] = arguments[2]
    return names


def login(server: RedisServer, user: str) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, username=user, password=PASSWORD)


def refusals(server: RedisServer, user: str) -> list[dict[str, Any]]:
    """Redis' own log of what it refused ``user`` (ACL LOG)."""
    rows = server.client().execute_command("ACL", "LOG")
    found = [{k.decode(): v for k, v in zip(row[::2], row[1::2], strict=True)} for row in rows]
    return [row for row in found if row["username"] == user.encode()]


def refuse_poison(got: Received) -> web.StreamResponse:
    return web.Response(status=422 if b'"poison"' in got.body else 204)


@pytest.fixture
async def poison_app() -> Any:
    app = await RecordingApp(refuse_poison).start()
    try:
        yield app
    finally:
        await app.stop()


@pytest.fixture
def sidecar_env() -> Iterator[dict[str, str]]:
    yield {"SG_STREAMS": ",".join(STREAMS), "SG_GROUP": "billing", "SG_CONSUMER": "c1", "SG_START_FROM": "0",
           "SG_READ_BLOCK": "1s", "SG_STATS_INTERVAL": "300ms", "SG_CLAIM_MIN_IDLE": "500ms",
           "SG_CLAIM_INTERVAL": "200ms", "SG_REDIS_USERNAME": "sg-billing-sidecar", "SG_REDIS_PASSWORD": PASSWORD,
           "SG_SHUTDOWN_GRACE": "5s", "SG_LOG_LEVEL": "info"}


def start_sidecar(server: RedisServer, app: RecordingApp, env: dict[str, str]) -> SidecarProcess:
    sidecar = SidecarProcess({**env, "SG_REDIS_URL": f"redis://127.0.0.1:{server.port}/0", "SG_APP_URL": app.url})
    return sidecar.start()


def readyz(sidecar: SidecarProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.health_port}/readyz", timeout=2) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except urllib.error.URLError:
        return 0, {}  # not serving yet


def metric(sidecar: SidecarProcess, line_start: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.health_port}/metrics", timeout=2) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return None


async def until(check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s (last: {value!r})")
        await asyncio.sleep(0.05)


async def wait_for_pending_zero(client: redis.Redis, streams: list[str], timeout: float = 30.0) -> None:
    """Until the group ``billing`` has read every entry of ``streams`` and has nothing pending."""
    def settled() -> bool:
        rows = [next(g for g in client.xinfo_groups(s) if g["name"] == b"billing") for s in streams]
        return all(row["lag"] == 0 and row["pending"] == 0 for row in rows)
    await until(settled, timeout, "nothing left to read or pending")


def seed(server: RedisServer) -> None:
    """Ten entries on each stream (one poison on orders), and three read by a consumer that vanished."""
    admin = server.client()
    for stream in STREAMS:
        for n in range(10):
            admin.xadd(stream, {"n": str(n), **({"poison": "1"} if stream == "orders" and n == 4 else {})})
        admin.xgroup_create(stream, "billing", id="0")
    admin.xreadgroup("billing", "ghost", {"refunds": ">"}, count=3)


class TestTheSidecarsUser:
    async def test_with_only_its_rules_the_sidecar_delivers_dead_letters_reclaims_and_leaves(
        self, redis_server: RedisServer, poison_app: RecordingApp, sidecar_env: dict[str, str]
    ) -> None:
        create_users(redis_server, "--streams", ",".join(STREAMS), "--group", "billing")
        seed(redis_server)
        sidecar = start_sidecar(redis_server, poison_app, sidecar_env)
        try:
            await asyncio.to_thread(sidecar.wait_ready, 30)
            await wait_for_pending_zero(redis_server.client(), STREAMS, timeout=30)
            sidecar.terminate()
            assert await asyncio.to_thread(sidecar.wait, 30) == 0
        finally:
            sidecar.cleanup()
        admin = redis_server.client()
        assert admin.xlen("orders:dead") == 1  # the poison entry, moved by the dead-letter script
        assert {r.key for r in poison_app.succeeded()} >= {("refunds", i.decode()) for i, _ in admin.xrange("refunds")}
        assert [c["name"] for c in admin.xinfo_consumers("refunds", "billing")] == [b"ghost"]  # it left
        assert refusals(redis_server, "sg-billing-sidecar") == []

    def test_outside_its_rules_redis_refuses_it(self, redis_server: RedisServer) -> None:
        create_users(redis_server, "--streams", ",".join(STREAMS), "--group", "billing")
        redis_server.client().xadd("payments", {"n": "1"})
        sidecar = login(redis_server, "sg-billing-sidecar")
        refused = [
            lambda: sidecar.flushall(),
            lambda: sidecar.keys("*"),
            lambda: sidecar.xrange("payments"),  # another StreamGroup's stream
            lambda: sidecar.xreadgroup("billing", "c1", {"payments": ">"}),
            lambda: sidecar.xadd("orders", {"n": "x"}),  # its own source: XADD only to dead letters
            lambda: sidecar.xgroup_destroy("orders", "billing"),  # the operator's job
            lambda: sidecar.config_get("*"),
        ]
        for attempt in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
        assert sidecar.xadd("orders:dead", {"sg:reason": "test"})  # its dead letters it may add to

    async def test_a_permission_taken_away_is_named_and_nothing_is_lost_until_it_is_granted_again(
        self, redis_server: RedisServer, poison_app: RecordingApp, sidecar_env: dict[str, str]
    ) -> None:
        create_users(redis_server, "--streams", ",".join(STREAMS), "--group", "billing")
        admin = redis_server.client()
        admin.execute_command("ACL", "SETUSER", "sg-billing-sidecar", "-xack")
        for stream in STREAMS:
            admin.xgroup_create(stream, "billing", id="0", mkstream=True)
            for n in range(5):
                admin.xadd(stream, {"n": str(n)})
        sidecar = start_sidecar(redis_server, poison_app, sidecar_env)
        try:
            _, body = await until(lambda: (r := readyz(sidecar))[0] == 503 and "problems" in r[1] and r,
                                       what="/readyz naming the refusal")
            assert body["permissions"] is False
            assert any("XACK on orders" in problem or "XACK on refunds" in problem for problem in body["problems"])
            assert metric(sidecar, 'streamgroup_sidecar_redis_permission_denied{operation="xack"}') == 1
            assert metric(sidecar, "streamgroup_sidecar_ready ") == 0
            await until(lambda: "NOPERM: Redis refused XACK on" in sidecar.logs(), what="the log naming it")
            # Delivered, not acknowledged: every entry stays pending; none is delivered twice meanwhile
            # (its own reclaim sweeps, every 200 ms, see them idle, but their acks are waiting).
            await until(lambda: len(poison_app.received) >= 10, what="every entry delivered once")
            await asyncio.sleep(1.5)  # three times the claim idle limit: a re-delivery would have happened
            assert len(poison_app.received) == len({r.key for r in poison_app.received}) == 10
            assert sum(admin.xpending(s, "billing")["pending"] for s in STREAMS) == 10
            admin.execute_command("ACL", "SETUSER", "sg-billing-sidecar", "+xack")
            await wait_for_pending_zero(admin, STREAMS, timeout=30)
            await until(lambda: readyz(sidecar)[0] == 200, what="ready again")
            assert metric(sidecar, 'streamgroup_sidecar_redis_permission_denied{operation="xack"}') == 0
        except BaseException:
            print(sidecar.logs()[-4000:])
            raise
        finally:
            sidecar.terminate()
            await asyncio.to_thread(sidecar.wait, 30)
            sidecar.cleanup()
        assert PASSWORD not in sidecar.logs() if sidecar.log.exists() else True


class TestTheCliUsers:
    def run(self, server: RedisServer, user: str, *argv: str, stdin: str = "") -> tuple[int, str]:
        out = io.StringIO()
        url = f"redis://{user}:{PASSWORD}@127.0.0.1:{server.port}/0"
        return main(["--redis-url", url, *argv], stdin=io.StringIO(stdin), stdout=out), out.getvalue()

    def test_the_read_only_user_reads_everything_and_writes_nothing(
        self, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        create_users(redis_server, "--streams", ",".join(STREAMS), "--group", "billing")
        seed(redis_server)
        reader = "sg-billing-cli-read"
        for argv in (["status", *STREAMS], ["pending", "refunds", "--group", "billing"],
                     ["replay", "orders", "--from", "-"], ["dead-letters", "list", "orders"]):
            code, _ = self.run(redis_server, reader, *argv)
            assert code == 0, (argv, capsys.readouterr().err)
        capsys.readouterr()
        code, _ = self.run(redis_server, reader, "produce", "orders", stdin='{"a": "1"}\n')
        assert code == 1 and "no permissions" in capsys.readouterr().err.lower()
        assert redis_server.client().xlen("orders") == 10
        assert refusals(redis_server, reader)[0]["object"] == b"xadd"

    def test_the_writing_user_produces_redrives_purges_and_trims(self, redis_server: RedisServer) -> None:
        create_users(redis_server, "--streams", ",".join(STREAMS), "--group", "billing")
        admin = redis_server.client()
        admin.xadd("orders", {"n": "0"})
        admin.xadd("orders:dead", {"sg:stream": "orders", "sg:id": "1-0", "sg:reason": "status-422",
                                   "sg:detail": "x", "sg:deliveries": "1", "sg:group": "billing",
                                   "sg:consumer": "c1", "sg:time": "1", "n": "redriven"})
        writer = "sg-billing-cli-write"
        assert self.run(redis_server, writer, "produce", "refunds", stdin='{"a": "1"}\n')[0] == 0
        assert self.run(redis_server, writer, "dead-letters", "redrive", "orders:dead", "--all")[0] == 0
        assert self.run(redis_server, writer, "dead-letters", "purge", "orders:dead", "--all", "--yes")[0] == 0
        assert self.run(redis_server, writer, "trim", "refunds", "--maxlen", "0", "--force", "--exact")[0] == 0
        assert admin.xlen("orders") == 2 and admin.xlen("refunds") == 0
        assert refusals(redis_server, writer) == []


class TestPrintedRules:
    def test_one_line_per_part_each_with_a_placeholder_and_only_the_groups_keys(self) -> None:
        out = io.StringIO()
        assert main(["acl", "--streams", "orders,refunds", "--partitioned-streams", "invoices:2",
                     "--group", "billing"], stdout=out) == 0
        lines = out.getvalue().splitlines()
        assert [line.split()[2] for line in lines] == [
            "sg-billing-sidecar", "sg-billing-operator", "sg-billing-cli-read", "sg-billing-cli-write"]
        for line in lines:
            assert line.startswith("ACL SETUSER ") and "><password>" in line and " -@all " in line
            keys = {word for word in setuser_arguments(line) if word.startswith("~")}
            assert keys == {"~orders", "~refunds", "~invoices:{0}", "~invoices:{1}", "~orders:dead",
                            "~refunds:dead", "~invoices:{0}:dead", "~invoices:{1}:dead"}

    def test_glob_characters_in_a_stream_name_match_only_that_stream(self, redis_server: RedisServer) -> None:
        create_users(redis_server, "--streams", "jobs*", "--group", "g", "--parts", "cli-read")
        admin = redis_server.client()
        admin.xadd("jobs*", {"n": "1"})
        admin.xadd("jobs-other", {"n": "1"})
        reader = login(redis_server, "sg-g-cli-read")
        assert reader.xlen("jobs*") == 1
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.xlen("jobs-other")

    def test_bad_input_is_one_clear_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["acl", "--streams", "orders"], stdout=io.StringIO()) == 1
        assert "--group or --user-prefix" in capsys.readouterr().err
        assert main(["acl", "--partitioned-streams", "orders:x", "--group", "g"], stdout=io.StringIO()) == 1
        assert "NAME:PARTITIONS" in capsys.readouterr().err
        assert main(["acl", "--streams", "a", "--group", "g", "--parts", "sidecar,admin"], stdout=io.StringIO()) == 1
        assert "unknown part 'admin'" in capsys.readouterr().err
