"""The HTTP delivery contract, run against every shipped client: the same bytes give the same Attempt.

The app is a raw TCP server writing its replies byte for byte (tests/support/raw_app.py), so a
case is exactly the one named: a reply in small pieces, a body one byte over the limit, a reply
to no request, headers that never end. Each test states what every client must report; a client
that cannot is removed, not excused here.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from streamgroup_sidecar.config import DeliverySettings, RetrySettings
from streamgroup_sidecar.delivering import CLIENTS, Deliverer, make_deliverer
from streamgroup_sidecar.encoding import Request
from streamgroup_sidecar.posting import MAX_REPLY_BYTES
from streamgroup_sidecar.replies import Action, Attempt, decide, unreachable
from tests.support.ports import free_port
from tests.support.raw_app import RawApp, Seen, answering, raw_apps, reply
from tests.support.redis_server import make_tls

StartApp = Callable[..., Awaitable[RawApp]]
MakeDeliverer = Callable[..., Awaitable[Deliverer]]

JSON = "application/json"
SLACK = 3.0
"""Seconds a timeout may overrun on a shared, noisy machine."""


def request(entry_id: str = "1-0") -> Request:
    return Request(orjson.dumps({"id": entry_id}), {"Content-Type": JSON, "Streamgroup-Id": entry_id})


def batch_reply(entries: int) -> bytes:
    """A batch reply's body: one status per entry, every third one DROP."""
    return orjson.dumps({"statuses": [{"entryId": f"orders/{1700000000000 + n}-0",
                                       "status": "DROP" if n % 3 == 0 else "SUCCESS"} for n in range(entries)]})


def framed(body: bytes, framing: str, content_type: str = JSON, status: int = 200) -> bytes:
    """A whole reply with ``body``, its end marked by a length, by chunks, or by the app closing."""
    head = f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
    if framing == "length":
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    if framing == "chunked":
        pieces = [body[start:start + 1000] for start in range(0, len(body), 1000)]
        return (f"{head}Transfer-Encoding: chunked\r\n\r\n".encode()
                + b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n")
    assert framing == "close"
    return f"{head}Connection: close\r\n\r\n".encode() + body


FRAMINGS = ["length", "chunked", "close"]


async def write_in_pieces(writer: asyncio.StreamWriter, data: bytes, size: int, pause: float) -> None:
    for start in range(0, len(data), size):
        writer.write(data[start:start + size])
        await writer.drain()
        await asyncio.sleep(pause)


def outcome(attempt: Attempt) -> tuple[int | None, str | None]:
    return attempt.status, attempt.error


@pytest.fixture(params=CLIENTS)
async def deliverer(request: pytest.FixtureRequest) -> AsyncIterator[MakeDeliverer]:
    made: list[Deliverer] = []

    async def make(url: str, timeout: float = 5.0) -> Deliverer:
        made.append(make_deliverer(request.param, url, timeout, 8))
        await made[-1].start()
        return made[-1]
    yield make
    for one in made:
        await one.close()


@pytest.fixture
async def raw_app() -> AsyncIterator[StartApp]:
    async for start in raw_apps():
        yield start


class TestRepliesAreReadWhole:
    @pytest.mark.parametrize("framing", FRAMINGS)
    async def test_a_batch_reply_written_in_2_kb_pieces_keeps_every_status(
        self, deliverer: MakeDeliverer, raw_app: StartApp, framing: str
    ) -> None:
        body = batch_reply(136)
        assert 7000 < len(body) < 8000

        async def slowly(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            await write_in_pieces(writer, framed(body, framing), 2048, 0.02)
            return framing != "close"
        app = await raw_app(slowly)
        attempt = await (await deliverer(app.url)).post(request())
        assert outcome(attempt) == (200, None)
        assert attempt.body == body
        assert sum(item["status"] == "DROP" for item in orjson.loads(attempt.body)["statuses"]) == 46

    async def test_a_head_written_a_few_bytes_at_a_time_is_read(
        self, deliverer: MakeDeliverer, raw_app: StartApp
    ) -> None:
        async def dribble(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            await write_in_pieces(writer, reply(503, b"", "Retry-After: 7", "X-Pad: " + "p" * 100), 7, 0.001)
            return True
        app = await raw_app(dribble)
        attempt = await (await deliverer(app.url)).post(request())
        assert (attempt.status, attempt.retry_after) == (503, "7")

    async def test_a_header_value_in_utf_8_changes_nothing(
        self, deliverer: MakeDeliverer, raw_app: StartApp
    ) -> None:
        body = b'{"status":"DROP"}'
        app = await raw_app(answering(reply(200, body, "X-Name: caf\u00e9", f"Content-Type: {JSON}", "Retry-After: 3")))
        attempt = await (await deliverer(app.url)).post(request())
        assert (attempt.status, attempt.body, attempt.retry_after, attempt.error) == (200, body, "3", None)

    @pytest.mark.parametrize("framing", FRAMINGS)
    async def test_a_json_reply_of_exactly_the_limit_is_kept(
        self, deliverer: MakeDeliverer, raw_app: StartApp, framing: str
    ) -> None:
        body = b'{"status":"DROP","pad":"' + b"x" * (MAX_REPLY_BYTES - 26) + b'"}'
        assert len(body) == MAX_REPLY_BYTES
        app = await raw_app(answering(framed(body, framing), keep=framing != "close"))
        attempt = await (await deliverer(app.url)).post(request())
        assert outcome(attempt) == (200, None)
        assert attempt.body == body


class TestLimits:
    @pytest.mark.parametrize("framing", FRAMINGS)
    async def test_a_json_reply_over_the_limit_is_a_bad_reply_not_an_acknowledgement(
        self, deliverer: MakeDeliverer, raw_app: StartApp, framing: str
    ) -> None:
        body = b'{"status":"RETRY","pad":"' + b"x" * 1_500_000 + b'"}'
        app = await raw_app(answering(framed(body, framing), keep=framing != "close"))
        attempt = await (await deliverer(app.url)).post(request())
        assert attempt == Attempt(error="bad-reply")

    @pytest.mark.parametrize("status, content_type", [(200, "text/plain"), (500, JSON)])
    async def test_a_large_body_that_is_not_kept_is_no_failure(
        self, deliverer: MakeDeliverer, raw_app: StartApp, status: int, content_type: str
    ) -> None:
        # Only a 2xx JSON body is read for statuses; any other may be as large as the app likes.
        app = await raw_app(answering(framed(b"z" * 3_000_000, "length", content_type, status)))
        attempt = await (await deliverer(app.url)).post(request())
        assert (attempt.status, attempt.body, attempt.error) == (status, b"", None)

    @pytest.mark.parametrize("fields, expected", [(12, (200, None)), (14, (None, "bad-reply"))], ids=["60-kb", "70-kb"])
    async def test_a_header_block_over_64_kib_is_a_bad_reply(
        self, deliverer: MakeDeliverer, raw_app: StartApp, fields: int, expected: tuple[int | None, str | None]
    ) -> None:
        # 5000-byte fields, fewer than 100: within each client's own limits on fields.
        headers = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"h" * 5000) for n in range(fields))
        app = await raw_app(answering(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 0\r\n\r\n"))
        attempt = await (await deliverer(app.url)).post(request())
        assert outcome(attempt) == expected

    @pytest.mark.parametrize("shape", ["many headers", "one header"])
    async def test_a_header_block_of_a_megabyte_is_a_bad_reply(
        self, deliverer: MakeDeliverer, raw_app: StartApp, shape: str
    ) -> None:
        if shape == "many headers":
            headers = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"h" * 1000) for n in range(1100))
        else:
            headers = b"X-Pad: " + b"h" * 1_100_000 + b"\r\n"
        app = await raw_app(answering(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 0\r\n\r\n"))
        attempt = await (await deliverer(app.url)).post(request())
        assert attempt == Attempt(error="bad-reply")

    @pytest.mark.parametrize("shape", ["many headers", "one header"])
    async def test_headers_without_end_are_not_read_past_the_limit(
        self, deliverer: MakeDeliverer, raw_app: StartApp, shape: str
    ) -> None:
        # 64 MB of headers offered: the client must drop the connection long before taking them all
        # (what it read is what it holds). The kernel's buffers take a few MB, far from 64.
        offered = 64 * 1024 * 1024
        written = 0

        async def flood(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            nonlocal written
            writer.write(b"HTTP/1.1 200 OK\r\n" if shape == "many headers" else b"HTTP/1.1 200 OK\r\nX-Pad: ")
            n = 0
            while written < offered:
                piece = b"X-Pad-%d: %s\r\n" % (n, b"h" * 1000) if shape == "many headers" else b"h" * 65536
                writer.write(piece)
                await writer.drain()
                written += len(piece)
                n += 1
            await asyncio.sleep(10)  # never ends the head: only the client's limit or its timeout stops this
            return False
        app = await raw_app(flood)
        started = asyncio.get_running_loop().time()
        attempt = await (await deliverer(app.url, timeout=20.0)).post(request())
        took = asyncio.get_running_loop().time() - started
        assert attempt == Attempt(error="bad-reply")
        assert written < offered // 2, f"the client read {written} bytes of headers"
        assert took < 10, "it stopped at its limit, not at its timeout"


class TestInterimAndExtraReplies:
    @pytest.mark.parametrize("interim", [b"HTTP/1.1 100 Continue\r\n\r\n",
                                         b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"])
    async def test_an_interim_reply_before_the_real_one_is_skipped(
        self, deliverer: MakeDeliverer, raw_app: StartApp, interim: bytes
    ) -> None:
        app = await raw_app(answering(interim + reply(503, b"", "Retry-After: 7")))
        attempt = await (await deliverer(app.url)).post(request())
        assert (attempt.status, attempt.retry_after, attempt.error) == (503, "7", None)

    @pytest.mark.parametrize("late", [False, True], ids=["with-the-first", "while-idle"])
    async def test_a_second_reply_to_one_request_is_never_taken_for_the_next_request(
        self, deliverer: MakeDeliverer, raw_app: StartApp, late: bool
    ) -> None:
        def echo(entry_id: str | None, status: str = "SUCCESS") -> bytes:
            return reply(200, orjson.dumps({"id": entry_id, "status": status}), f"Content-Type: {JSON}")

        async def twice(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            entry_id = seen.header("streamgroup-id")
            writer.write(echo(entry_id))
            if entry_id == "1-0":
                if late:  # once the client has the first: the extra reaches a connection with no request on it
                    await writer.drain()
                    await first_taken.wait()
                writer.write(echo("stale", "DROP"))
            await writer.drain()
            return True
        first_taken = asyncio.Event()
        app = await raw_app(twice)
        client = await deliverer(app.url)
        attempts = [await client.post(request("1-0"))]
        first_taken.set()
        if late:
            # A client must drop the connection the extra reply came on. (Had it kept the connection and
            # read the extra one for the next request, waiting longer would not change that.)
            await app.wait_ended(1, timeout=5)
        attempts += [await client.post(request(f"{n}-0")) for n in (2, 3)]
        assert [orjson.loads(attempt.body)["id"] for attempt in attempts] == ["1-0", "2-0", "3-0"]


class TestBrokenReplies:
    async def test_a_reply_that_is_not_http_is_a_bad_reply_and_the_next_request_is_answered(
        self, deliverer: MakeDeliverer, raw_app: StartApp
    ) -> None:
        app = await raw_app(answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", reply(200)))
        client = await deliverer(app.url)
        bad = await client.post(request())
        good = await client.post(request())
        assert outcome(bad) == (None, "bad-reply")
        assert outcome(good) == (200, None)

    @pytest.mark.parametrize("cut", [
        b"Content-Le",
        b"Content-Length: 100\r\n\r\n{\"status\":\"DR",
        b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"status\":\"DR",
    ], ids=["in-the-head", "in-a-sized-body", "in-a-chunked-body"])
    async def test_a_reply_cut_short_by_the_app_closing_is_a_disconnection(
        self, deliverer: MakeDeliverer, raw_app: StartApp, cut: bytes
    ) -> None:
        app = await raw_app(answering(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + cut, keep=False))
        attempt = await (await deliverer(app.url)).post(request())
        assert attempt == Attempt(error="disconnected")

    async def test_a_reply_without_a_length_cut_by_a_reset_is_a_disconnection(
        self, deliverer: MakeDeliverer, raw_app: StartApp
    ) -> None:
        async def reset(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"status":"RET')
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST, not FIN: the body is cut, not finished
            return False
        app = await raw_app(reset)
        attempt = await (await deliverer(app.url)).post(request())
        assert attempt == Attempt(error="disconnected")

    async def test_an_app_that_hangs_up_without_a_reply_is_a_disconnection(
        self, deliverer: MakeDeliverer, raw_app: StartApp
    ) -> None:
        async def hang_up(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            return False
        app = await raw_app(hang_up)
        attempt = await (await deliverer(app.url)).post(request())
        assert attempt == Attempt(error="disconnected")


class TestTimeouts:
    @pytest.mark.parametrize("part", ["head", "body"])
    async def test_a_reply_dribbled_slowly_past_the_timeout_ends_as_a_timeout(
        self, deliverer: MakeDeliverer, raw_app: StartApp, part: str
    ) -> None:
        # A byte every 20 ms: the connection is never idle for long, but the request's deadline still holds.
        async def dribble(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            start = b"HTTP/1.1 200 OK\r\nX-Slow: " if part == "head" else (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n\"")
            writer.write(start)
            for _ in range(1000):  # 20 s at most
                writer.write(b"s")
                await writer.drain()
                await asyncio.sleep(0.02)
            return False
        app = await raw_app(dribble)
        client = await deliverer(app.url, timeout=0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        attempt = await client.post(request())
        took = loop.time() - started
        assert attempt == Attempt(error="timeout")
        assert 0.45 <= took < 0.5 + SLACK


@pytest.fixture(scope="module")
def tls_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tls(tmp_path_factory.mktemp("tls"), "localhost")


class TestUnreachableApps:
    async def test_nothing_listening_is_a_connection_error(self, deliverer: MakeDeliverer) -> None:
        attempt = await (await deliverer(f"http://127.0.0.1:{free_port()}/")).post(request())
        assert attempt == Attempt(error="connection")

    async def test_an_app_whose_certificate_is_not_trusted_is_a_tls_failure_and_gets_nothing(
        self, deliverer: MakeDeliverer, raw_app: StartApp, tls_folder: Path
    ) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_folder / "server.crt", tls_folder / "server.key")
        app = await raw_app(answering(reply(200)), tls=context)
        attempt = await (await deliverer(app.url)).post(request())
        assert attempt == Attempt(error="tls")
        assert app.requests == []

    @pytest.mark.parametrize("says", [
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",  # a plain HTTP server
        b"",  # a server that hangs up on a handshake it does not like
    ], ids=["plain-http", "hang-up"])
    async def test_an_app_that_does_not_complete_the_tls_handshake_is_a_tls_failure(
        self, deliverer: MakeDeliverer, says: bytes
    ) -> None:
        async def not_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.read(1)  # the client hello's first byte
                writer.write(says)
                await writer.drain()
            finally:
                writer.close()
        server = await asyncio.start_server(not_tls, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            attempt = await (await deliverer(f"https://127.0.0.1:{port}/")).post(request())
        finally:
            server.close()
            await server.wait_closed()
        assert attempt == Attempt(error="tls")


class TestWhatAnOutcomeCounts:
    @pytest.mark.parametrize("error", ["connection", "tls"])
    def test_an_unreachable_app_never_uses_up_an_entrys_deliveries(self, error: str) -> None:
        attempt = Attempt(error=error)
        verdict = decide(attempt, 50, DeliverySettings(max_deliveries=3), RetrySettings())
        assert unreachable(attempt)
        assert (verdict.action, verdict.reason) == (Action.RETRY, error)

    @pytest.mark.parametrize("error", ["timeout", "disconnected", "bad-reply"])
    def test_every_other_failure_counts(self, error: str) -> None:
        attempt = Attempt(error=error)
        verdict = decide(attempt, 3, DeliverySettings(max_deliveries=3), RetrySettings())
        assert not unreachable(attempt)
        assert (verdict.action, verdict.reason) == (Action.DEAD_LETTER, f"max-deliveries ({error})")



class TestHealthProbes:
    @pytest.mark.parametrize("status, up", [(200, True), (204, True), (302, False), (503, False)])
    async def test_only_a_2xx_answer_is_up_and_a_redirect_is_not_followed(
        self, deliverer: MakeDeliverer, raw_app: StartApp, status: int, up: bool
    ) -> None:
        app = await raw_app(answering(reply(status, b"", "Location: /elsewhere")))
        client = await deliverer(app.url)
        assert await client.probe(app.url) is up
        assert len(app.requests) == 1  # one GET: a redirect is an answer, not a pointer to follow
