"""A TCP proxy on 127.0.0.1 that can cut the line, to put between one process and a server it talks to.

``cut()`` swallows every byte both ways from then on, on open connections and on new ones (which
are still accepted): the process sees a peer that has gone silent, as when a network drops its
packets, rather than a refused or reset connection. ``mend()`` forwards again: connections that
lost bytes while the line was cut are closed then (half a conversation was swallowed), the others
and new ones go through.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path
from types import TracebackType


class _Connection:
    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.lost_bytes = upstream is None

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


class TcpProxy:
    """Listens on a free loopback port (:attr:`port`) and forwards to ``127.0.0.1:target``."""

    def __init__(self, target: int, cut: bool = False) -> None:
        self.target = target
        self._cut = cut
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self.accepted = 0
        """Connections accepted so far, cut or not."""
        self.swallowed = 0
        """Bytes received and never delivered, both ways."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._cut = True

    def mend(self) -> None:
        with self._lock:
            self._cut = False
            silenced = [c for c in self._connections if c.lost_bytes]
            self._connections = [c for c in self._connections if not c.lost_bytes]
        for connection in silenced:
            connection.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                cut = self._cut
            upstream = None
            if not cut:
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
            connection = _Connection(client, upstream)
            with self._lock:
                self._connections.append(connection)
            threading.Thread(target=self._pump, args=(connection, client, upstream), daemon=True).start()
            if upstream is not None:
                threading.Thread(target=self._pump, args=(connection, upstream, client), daemon=True).start()

    def _pump(self, connection: _Connection, source: socket.socket, sink: socket.socket | None) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                connection.close()
                return
            with self._lock:
                cut = self._cut or sink is None
                if cut:
                    self.swallowed += len(data)
                    connection.lost_bytes = True
            if cut:
                continue
            try:
                assert sink is not None
                sink.sendall(data)
            except OSError:
                connection.close()
                return


def through(proxy: TcpProxy, kubeconfig: Path, folder: Path) -> Path:
    """The admin's kubeconfig, with the API server reached through ``proxy``."""
    config = json.loads(kubeconfig.read_text())  # the test control plane writes JSON (which is YAML)
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://{proxy.address}"
    path = folder / "through-proxy.kubeconfig"
    path.write_text(json.dumps(config))
    return path
