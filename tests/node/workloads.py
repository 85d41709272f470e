"""The app the node tests deploy behind the sidecar, StreamGroups for it, and what tests check with it.

The app runs from the sidecar image (it has Python and redis-py) as the StreamGroup's own container: it
answers each delivery 200 and records it in the same Redis (the entry's ID in a set, a count of
deliveries, one per pod), so a test sees exactly what reached an app, duplicates included, whichever
pod took it. On SIGTERM it keeps serving for a second, as a web server finishing its requests does,
then exits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from tests.kube.streamgroups import GROUP, PLURAL, VERSION

T = TypeVar("T")

APP = r"""
import http.server, os, signal, sys, threading, time
import redis
store = redis.Redis.from_url(os.environ["RECORD_URL"])
prefix, pod = os.environ["RECORD_PREFIX"], os.environ["POD_NAME"]
delay = float(os.environ.get("APP_DELAY", "0"))

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if delay:
            time.sleep(delay)
        entry = self.headers.get("Streamgroup-Id", "")
        with store.pipeline() as pipe:
            pipe.sadd(prefix + ":ids", entry).incr(prefix + ":count").hincrby(prefix + ":pods", pod, 1).execute()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Handler)
server.daemon_threads = True
signal.signal(signal.SIGTERM, lambda *_: threading.Timer(1.0, lambda: os._exit(0)).start())
server.serve_forever()
"""


def streamgroup(name: str, image: str, redis_address: str, *, prefix: str, app_delay: float = 0.0,
                grace: int = 30, record_address: str | None = None, **spec: Any) -> dict[str, Any]:
    """A StreamGroup of the app above on stream ``orders``, group ``billing``, recording under ``prefix``
    in the same Redis (or the one at ``record_address``)."""
    app = {
        "name": "app", "image": image, "imagePullPolicy": "Never", "command": ["python", "-c", APP],
        "env": [{"name": "RECORD_URL", "value": f"redis://{record_address or redis_address}/0"},
                {"name": "RECORD_PREFIX", "value": prefix},
                {"name": "APP_DELAY", "value": str(app_delay)},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    body: dict[str, Any] = {
        "redis": {"url": f"redis://{redis_address}/0"},
        "streams": ["orders"], "group": "billing", "startFrom": "0",
        "template": {"spec": {
            "terminationGracePeriodSeconds": grace,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [app]}},
    }
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "StreamGroup", "metadata": {"name": name}, "spec": body}


def create(cluster: Any, namespace: str, body: dict[str, Any]) -> None:
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def patch(cluster: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})


def eventually(check: Callable[[], T], timeout: float, what: str, cluster: Any = None, namespace: str = "") -> T:
    """Poll ``check`` until truthy; on timeout fail with the last value (and the cluster's state)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # an API or Redis hiccup is retried like a falsy answer
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    state = cluster.diagnostics(namespace) if cluster is not None else ""
    raise AssertionError(f"{what} not reached within {timeout}s; last seen: {last!r}\n{state}")


class Record:
    """What the app recorded under ``prefix`` in Redis."""

    def __init__(self, store: redis.Redis, prefix: str) -> None:
        self.store, self.prefix = store, prefix

    def ids(self) -> set[str]:
        return {member.decode() for member in self.store.smembers(f"{self.prefix}:ids")}

    def count(self) -> int:
        return int(self.store.get(f"{self.prefix}:count") or 0)

    def pods(self) -> dict[str, int]:
        return {key.decode(): int(value) for key, value in self.store.hgetall(f"{self.prefix}:pods").items()}


def pending(store: redis.Redis, stream: str = "orders", group: str = "billing") -> int:
    return int(store.xpending(stream, group)["pending"])


def pending_by_consumer(store: redis.Redis, stream: str = "orders", group: str = "billing") -> dict[str, int]:
    return {row["name"].decode(): int(row["pending"]) for row in store.xinfo_consumers(stream, group)}


class Producer:
    """Writes entries to a stream at a steady rate from a thread until stopped; ``ids`` are those written."""

    def __init__(self, store: redis.Redis, stream: str = "orders", per_second: float = 40.0) -> None:
        self.store, self.stream, self.interval = store, stream, 1.0 / per_second
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        number = 0
        while not self._stop.wait(self.interval):
            number += 1
            self.ids.append(self.store.xadd(self.stream, {"n": str(number)}).decode())

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join()
        return self.ids


def produce(store: redis.Redis, count: int, stream: str = "orders") -> list[str]:
    return [store.xadd(stream, {"n": str(number)}).decode() for number in range(count)]
