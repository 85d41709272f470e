"""The built-in HTTP/1.1 client on the wire: keep-alive, its races, and what only it does.

The app here is a raw TCP server whose replies the tests write byte for byte (tests/support/raw_app.py),
so each case is exactly the one named (a connection closed while idle, a reply to no request)
rather than whatever a real server framework happens to send. What every client must report for
a reply of any shape is the conformance suite's (test_http_contract.py); here are the keep-alive
races, connection reuse, the header cap's exact bounds and the requests' bytes.
"""

from __future__ import annotations

import asyncio
import gc
import random
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from streamgroup_sidecar import posting
from streamgroup_sidecar.encoding import Request
from streamgroup_sidecar.posting import MAX_HEAD_BYTES, BuiltinDeliverer, ConnectionPool
from tests.support.apps import RecordingApp
from tests.support.ports import free_port
from tests.support.raw_app import Answer, RawApp, Seen, answering, raw_apps, reply
from tests.support.redis_server import make_tls


def request(entry_id: str = "1-0", **headers: str) -> Request:
    return Request(orjson.dumps({"id": entry_id}), {"Content-Type": "application/json", "Streamgroup-Id": entry_id,
                                                    **headers})


@pytest.fixture
async def raw_app() -> AsyncIterator[Callable[[Answer], Awaitable[RawApp]]]:
    async for start in raw_apps():
        yield start


class TestConnectionsAreKeptAlive:
    async def test_requests_one_after_another_share_one_connection(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        app = await raw_app(answering(reply(200)))
        pool = ConnectionPool(app.url, 5.0, 8)
        statuses = [(await pool.request("POST", request(f"{n}-0").headers, b"x")).status for n in range(20)]
        pool.close()
        assert statuses == [200] * 20
        assert app.connections == 1 and len(app.requests) == 20

    async def test_a_connection_the_app_closed_while_idle_is_replaced_without_a_failed_delivery(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        # The app closes every connection right after its reply, without saying so (an idle timeout).
        app = await raw_app(answering(reply(200), keep=False))
        pool = ConnectionPool(app.url, 5.0, 8)
        results = []
        for n in range(5):
            results.append(await pool.request("POST", request(f"{n}-0").headers, b"x"))
            await asyncio.sleep(0.05)
        pool.close()
        assert [(r.status, r.error) for r in results] == [(200, None)] * 5
        assert len(app.requests) == 5 and app.connections == 5, "each entry was sent once"

    async def test_a_reused_connection_that_dies_before_the_reply_is_retried_once_on_a_fresh_one(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        # Connection 1 answers its first request, then drops the second without a reply (the keep-alive race
        # when the close is not yet seen); the retry goes on connection 2.
        async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            if seen.connection == 1 and len(app.requests) == 2:
                return False
            writer.write(reply(200))
            return True
        app = await raw_app(answer)
        pool = ConnectionPool(app.url, 5.0, 8)
        first = await pool.request("POST", request("1-0").headers, b"x")
        second = await pool.request("POST", request("2-0").headers, b"x")
        pool.close()
        assert (first.status, second.status) == (200, 200)
        sent = [(s.connection, s.header("streamgroup-id")) for s in app.requests]
        assert sent == [(1, "1-0"), (1, "2-0"), (2, "2-0")]

    async def test_an_app_server_with_a_short_keep_alive_gets_every_request_once(self) -> None:
        # aiohttp's server closing idle connections after 0.1 s, requests about every 0.1 s: the races are real.
        app = await RecordingApp(keepalive_timeout=0.1).start()
        pool = ConnectionPool(app.url, 5.0, 8)
        rng = random.Random(7)
        results = []
        try:
            for n in range(30):
                results.append(await pool.request("POST", request(f"{n}-0").headers, b"{}"))
                await asyncio.sleep(rng.uniform(0.08, 0.12))
        finally:
            pool.close()
            await app.stop()
        assert [(r.status, r.error) for r in results] == [(204, None)] * 30
        assert sorted(got.headers["streamgroup-id"] for got in app.received) == sorted(f"{n}-0" for n in range(30))

    async def test_a_fresh_connection_that_dies_before_the_reply_is_a_disconnection_not_retried(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        async def hang_up(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            return False
        app = await raw_app(hang_up)
        pool = ConnectionPool(app.url, 5.0, 8)
        result = await pool.request("POST", request().headers, b"x")
        pool.close()
        assert (result.status, result.error) == (None, "disconnected")
        assert len(app.requests) == 1

    async def test_when_the_retry_after_the_race_cannot_connect_the_attempt_still_counts(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        # The app takes the second request and dies with it (it may have crashed on it): that attempt must
        # count towards --max-deliveries, so it is "disconnected", never "connection" (app down, not counted).
        async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            if len(app.requests) == 2:
                app.stop_listening()
                return False
            writer.write(reply(200))
            return True
        app = await raw_app(answer)
        pool = ConnectionPool(app.url, 5.0, 8)
        first = await pool.request("POST", request("1-0").headers, b"x")
        second = await pool.request("POST", request("2-0").headers, b"x")
        pool.close()
        assert first.status == 200
        assert (second.status, second.error) == (None, "disconnected")

    async def test_idle_connections_past_the_idle_limit_are_not_reused(
        self, raw_app: Callable[..., Awaitable[RawApp]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(posting, "IDLE_LIMIT", 0.05)
        app = await raw_app(answering(reply(200)))
        pool = ConnectionPool(app.url, 5.0, 8)
        quick = [(await pool.request("POST", request().headers, b"x")).status for _ in range(3)]
        await asyncio.sleep(0.1)
        late = await pool.request("POST", request().headers, b"x")
        pool.close()
        assert quick == [200] * 3 and late.status == 200
        assert app.connections == 2

    async def test_bytes_from_the_app_between_requests_drop_the_connection(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        async def chatty(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            writer.write(reply(200))
            if seen.connection == 1:
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(reply(500))  # a reply to nothing: the connection can no longer be trusted
            return True
        app = await raw_app(chatty)
        pool = ConnectionPool(app.url, 5.0, 8)
        first = await pool.request("POST", request().headers, b"x")
        await asyncio.sleep(0.2)
        second = await pool.request("POST", request().headers, b"x")
        pool.close()
        assert (first.status, second.status) == (200, 200) and app.connections == 2

    async def test_connection_close_in_a_reply_is_honoured(self, raw_app: Callable[..., Awaitable[RawApp]]) -> None:
        app = await raw_app(answering(reply(200, b"", "Connection: close")))
        pool = ConnectionPool(app.url, 5.0, 8)
        statuses = [(await pool.request("POST", request().headers, b"x")).status for _ in range(3)]
        pool.close()
        assert statuses == [200] * 3 and app.connections == 3

    async def test_after_a_timeout_a_late_reply_is_never_taken_for_the_next_requests(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        async def echo(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            if seen.header("streamgroup-id") == "1-0":
                await asyncio.sleep(0.5)  # too late: the client gave up after 0.2 s
            body = orjson.dumps({"status": "SUCCESS", "id": seen.header("streamgroup-id")})
            writer.write(reply(200, body, "Content-Type: application/json"))
            return True
        app = await raw_app(echo)
        pool = ConnectionPool(app.url, 0.2, 8)
        late = await pool.request("POST", request("1-0").headers, b"x")
        following = [await pool.request("POST", request(f"{n}-0").headers, b"x") for n in (2, 3)]
        pool.close()
        assert late.error == "timeout"
        assert [orjson.loads(r.body)["id"] for r in following] == ["2-0", "3-0"]

    async def test_closing_the_pool_during_a_request_on_a_reused_connection_opens_no_new_one(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        async def then_hang(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            if len(app.requests) > 1:
                await asyncio.sleep(10)
            writer.write(reply(200))
            return True
        app = await raw_app(then_hang)
        pool = ConnectionPool(app.url, 30.0, 8)
        assert (await pool.request("POST", request().headers, b"x")).status == 200
        pending = asyncio.create_task(pool.request("POST", request().headers, b"x"))
        await asyncio.sleep(0.1)
        pool.close()
        result = await asyncio.wait_for(pending, 2)
        after = await pool.request("POST", request().headers, b"x")
        assert result.error == after.error == "disconnected"
        assert app.connections == 1

    async def test_closing_the_pool_while_a_request_waits_ends_the_request(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        async def never(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            await asyncio.sleep(10)
            return False
        app = await raw_app(never)
        pool = ConnectionPool(app.url, 30.0, 8)
        pending = asyncio.create_task(pool.request("POST", request().headers, b"x"))
        await asyncio.sleep(0.1)
        pool.close()
        result = await asyncio.wait_for(pending, 2)
        assert result.error == "disconnected"

    async def test_connections_that_closed_are_freed_at_once_without_the_cyclic_collector(
        self, raw_app: Callable[..., Awaitable[RawApp]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The sidecar runs the cyclic collector seldom (__main__._tune_gc): a closed connection kept
        # alive by a reference cycle would add to its memory for minutes (issue 7's slow RSS rise).
        app = await raw_app(answering(reply(200), keep=False))  # the app closes after every reply
        pool = ConnectionPool(app.url, 5.0, 8)
        made: list[weakref.ref[posting._Connection]] = []
        new_connection = pool._new_connection

        def tracked() -> posting._Connection:
            connection = new_connection()
            made.append(weakref.ref(connection))
            return connection
        monkeypatch.setattr(pool, "_new_connection", tracked)
        gc.collect()
        gc.disable()
        try:
            for n in range(10):
                assert (await pool.request("POST", request(f"{n}-0").headers, b"x")).status == 200
            await asyncio.sleep(0.05)  # connection_lost of the last one
            pool.close()
            await asyncio.sleep(0.05)
            alive = sum(ref() is not None for ref in made)
        finally:
            gc.enable()
        assert len(made) == 10
        assert alive == 0


class TestRepliesOnTheWire:
    async def test_a_chunked_reply_leaves_its_connection_reusable(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        body = orjson.dumps({"statuses": {"orders/1-0": "RETRY"}})
        chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:])) + b"0\r\n\r\n")
        app = await raw_app(answering(chunked))
        pool = ConnectionPool(app.url, 5.0, 8)
        results = [await pool.request("POST", request().headers, b"x") for _ in range(2)]
        pool.close()
        assert [orjson.loads(r.body) for r in results] == [orjson.loads(body)] * 2
        assert app.connections == 1

    async def test_a_reply_with_a_non_chunked_transfer_encoding_ends_at_the_close(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        app = await raw_app(answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nfine", keep=False))
        pool = ConnectionPool(app.url, 5.0, 8)
        result = await pool.request("POST", request().headers, b"x")
        pool.close()
        assert (result.status, result.error) == (200, None)

    async def test_a_switch_of_protocols_is_a_bad_reply(self, raw_app: Callable[..., Awaitable[RawApp]]) -> None:
        app = await raw_app(answering(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                      b"Connection: upgrade\r\n\r\n"))
        pool = ConnectionPool(app.url, 5.0, 8)
        result = await pool.request("POST", request().headers, b"x")
        pool.close()
        assert (result.status, result.error) == (None, "bad-reply")

    async def test_a_json_body_over_the_limit_is_a_bad_reply_and_its_connection_is_dropped_unread(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        app = await raw_app(answering(reply(200, b'{"status":"RETRY"}' + b" " * 5000, "Content-Type: application/json"),
                                      reply(200, b'{"status":"RETRY"}', "Content-Type: application/json")))
        pool = ConnectionPool(app.url, 5.0, 8, max_body=1000)
        big = await pool.request("POST", request().headers, b"x")
        small = await pool.request("POST", request().headers, b"x")
        pool.close()
        assert (big.status, big.error) == (None, "bad-reply")
        assert orjson.loads(small.body) == {"status": "RETRY"} and app.connections == 2

    async def test_a_large_body_that_is_not_kept_is_read_and_the_connection_stays_usable(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        app = await raw_app(answering(reply(500, b"z" * 3_000_000, "Content-Type: text/plain"), reply(204)))
        pool = ConnectionPool(app.url, 5.0, 8)
        big = await pool.request("POST", request().headers, b"x")
        small = await pool.request("POST", request().headers, b"x")
        pool.close()
        assert (big.status, big.body, small.status) == (500, b"", 204) and app.connections == 1


class _Transport:
    """Enough of a transport to feed a connection reads of chosen sizes, without a socket."""

    aborted = False

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


async def fed(reads: list[bytes]) -> tuple[posting.Attempt | None, bool]:
    """What a connection reports when its reply arrives in exactly these reads; and whether it was dropped."""
    connection = posting._Connection(posting.MAX_REPLY_BYTES)
    transport = _Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    waiter: asyncio.Future[posting.Attempt] = asyncio.get_running_loop().create_future()
    connection.send(b"POST / HTTP/1.1\r\n\r\n", waiter)
    for data in reads:
        if transport.aborted:
            break
        connection.data_received(data)
    return (waiter.result() if waiter.done() else None), transport.aborted


def head_of(size: int) -> bytes:
    """A reply's header block of exactly ``size`` bytes, a JSON body's headers among them."""
    start = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nX-Pad: "
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"


def in_reads(reply: bytes, cut: str) -> list[bytes]:
    if cut == "one read":
        return [reply]
    if cut == "1 KB reads":
        return [reply[at:at + 1000] for at in range(0, len(reply), 1000)]
    if cut == "a small read, then the rest":  # the second read is larger than the room left
        return [reply[:40_000], reply[40_000:]]
    assert cut == "all but one byte, then the rest"
    return [reply[:MAX_HEAD_BYTES - 1], reply[MAX_HEAD_BYTES - 1:]]


CUTS = ["one read", "1 KB reads", "a small read, then the rest", "all but one byte, then the rest"]


class TestTheHeaderCap:
    @pytest.mark.parametrize("cut", CUTS)
    async def test_a_header_block_of_exactly_the_cap_is_read_however_it_arrives(self, cut: str) -> None:
        attempt, dropped = await fed(in_reads(head_of(MAX_HEAD_BYTES) + b"{}", cut))
        assert attempt is not None and (attempt.status, attempt.body) == (200, b"{}")
        assert not dropped

    @pytest.mark.parametrize("cut", CUTS)
    async def test_one_byte_more_is_a_bad_reply_and_the_connection_is_dropped(self, cut: str) -> None:
        attempt, dropped = await fed(in_reads(head_of(MAX_HEAD_BYTES + 1) + b"{}", cut))
        assert attempt == posting.Attempt(error="bad-reply")
        assert dropped

    @pytest.mark.parametrize("apart", [True, False], ids=["apart", "in-one-read"])
    async def test_an_interim_reply_counts_towards_the_cap_of_the_reply_after_it(self, apart: bool) -> None:
        interim = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        room = MAX_HEAD_BYTES - len(interim)
        outcomes = []
        for size in (room, room + 1):
            reads = [interim, head_of(size) + b"{}"] if apart else [interim + head_of(size) + b"{}"]
            attempt, _ = await fed(reads)
            assert attempt is not None
            outcomes.append((attempt.status, attempt.error))
        assert outcomes == [(200, None), (None, "bad-reply")]


class TestRequests:
    async def test_the_request_carries_host_length_agent_headers_and_body(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        app = await raw_app(answering(reply(204)))
        pool = ConnectionPool(app.url + "?tenant=a", 5.0, 8)
        result = await pool.request("POST", request("5-1").headers, b'{"id":"5-1"}')
        pool.close()
        [seen] = app.requests
        assert result.status == 204
        assert seen.head.startswith("POST /deliver?tenant=a HTTP/1.1\r\n")
        assert seen.header("host") == f"127.0.0.1:{app.port}"
        assert seen.header("content-length") == "12" and seen.body == b'{"id":"5-1"}'
        assert seen.header("user-agent") == "streamgroup-sidecar"
        assert seen.header("streamgroup-id") == "5-1" and seen.header("content-type") == "application/json"

    async def test_credentials_in_the_url_become_basic_authentication(
        self, raw_app: Callable[..., Awaitable[RawApp]]
    ) -> None:
        app = await raw_app(answering(reply(200)))
        pool = ConnectionPool(f"http://ingest:p%40ss@127.0.0.1:{app.port}/", 5.0, 8)
        await pool.request("POST", {}, b"x")
        pool.close()
        assert app.requests[0].header("authorization") == "Basic aW5nZXN0OnBAc3M="  # base64 of ingest:p@ss

    @pytest.mark.parametrize("name, value", [("Streamgroup-Id", "1-0\r\nX-Injected: yes"), ("X-Bad\r\nX", "v"),
                                             ("Streamgroup-Id", "1-0\nX-Injected: yes"), ("Streamgroup-Id", "a\0b")])
    async def test_a_header_that_would_split_the_request_is_refused_and_nothing_is_sent(
        self, raw_app: Callable[..., Awaitable[RawApp]], name: str, value: str
    ) -> None:
        app = await raw_app(answering(reply(200)))
        pool = ConnectionPool(app.url, 5.0, 8)
        result = await pool.request("POST", {name: value}, b"x")
        pool.close()
        await asyncio.sleep(0.05)
        assert (result.status, result.error) == (None, "bad-request")
        assert app.requests == []

    def test_a_url_that_is_not_http_is_refused(self) -> None:
        with pytest.raises(ValueError, match="not an http"):
            ConnectionPool("ftp://127.0.0.1/", 5.0, 8)

    def test_a_url_whose_path_would_break_the_request_line_is_refused(self) -> None:
        with pytest.raises(ValueError, match="space or control character"):
            ConnectionPool("http://127.0.0.1/a b", 5.0, 8)


class TestHTTPS:
    @pytest.fixture
    def tls_app_folder(self, tmp_path: Path) -> Path:
        return make_tls(tmp_path / "tls", "localhost")

    async def https_app(self, folder: Path) -> RecordingApp:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(folder / "server.crt", folder / "server.key")
        app = RecordingApp()
        await app.start(ssl_context=context)
        return app

    async def test_an_app_with_a_trusted_certificate_gets_the_entry(
        self, tls_app_folder: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_app_folder / "ca.crt"))
        app = await self.https_app(tls_app_folder)
        deliverer = BuiltinDeliverer(f"https://localhost:{app.port}/", 5.0, 4)
        try:
            results = [await deliverer.post(request()) for _ in range(3)]
        finally:
            await deliverer.close()
            await app.stop()
        assert [r.status for r in results] == [204] * 3 and len(app.received) == 3


class TestProbes:
    async def test_a_probe_is_a_get_and_succeeds_on_2xx_only(self) -> None:
        app = await RecordingApp().start()
        deliverer = BuiltinDeliverer(app.url, 5.0, 4)
        try:
            up = await deliverer.probe(app.url + "health")
            down = await deliverer.probe(f"http://127.0.0.1:{free_port()}/health")
        finally:
            await deliverer.close()
            await app.stop()
        assert (up, down) == (True, False)

