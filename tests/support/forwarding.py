"""A TCP forwarder across network namespaces, run as its own process by :class:`Forwarder`.

``python -m tests.support.forwarding LISTEN CONNECT``, each side ``[NAMESPACE@]HOST:PORT`` (no
namespace: the host's): listens on LISTEN, and for every connection accepted opens one to CONNECT and
copies bytes both ways until either side closes. Prints ``listening`` once the socket is bound, so the
starter knows it can be used. A separate process, not a thread of the test, so that a test run killed
with ``kill -9`` takes it along (parent-death signal) and a slow test cannot starve it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.netns import entered

_PR_SET_PDEATHSIG = 1
_REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Side:
    namespace: str | None
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Side:
        namespace, _, address = text.rpartition("@")
        host, _, port = address.rpartition(":")
        return cls(namespace or None, host, int(port))

    def __str__(self) -> str:
        return f"{self.namespace + '@' if self.namespace else ''}{self.host}:{self.port}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()


async def _serve(listen: Side, connect: Side) -> None:
    loop = asyncio.get_running_loop()

    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        with entered(connect.namespace):
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(upstream, (connect.host, connect.port)), 10)
        except (OSError, TimeoutError):
            upstream.close()
            client_writer.close()
            return
        reader, writer = await asyncio.open_connection(sock=upstream)
        try:
            await asyncio.gather(_pipe(client_reader, writer), _pipe(reader, client_writer))
        finally:
            writer.close()
            client_writer.close()

    with entered(listen.namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((listen.host, listen.port))
    server = await asyncio.start_server(forward, sock=sock, backlog=256)
    print("listening", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


class Forwarder:
    """The forwarder process from ``listen`` to ``connect``; ``stop()`` ends it."""

    def __init__(self, listen: str, connect: str) -> None:
        self.listen, self.connect = Side.parse(listen), Side.parse(connect)
        self.process = subprocess.Popen([sys.executable, "-m", "tests.support.forwarding", listen, connect],
                                        cwd=_REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        preexec_fn=_die_with_parent)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"listening":
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
            raise RuntimeError(f"forwarder {listen} -> {connect} did not start: {err.decode()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def main(argv: list[str]) -> int:
    listen, connect = (Side.parse(arg) for arg in argv)
    asyncio.run(_serve(listen, connect))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
