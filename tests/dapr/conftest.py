"""The Dapr drop-in's test harness: real subscriber apps (uvicorn in a subprocess), entries written as Dapr's
Redis component writes them, and the sidecar as a process with ``--app-protocol dapr``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]
PUBSUB = "pubsub"


class UvicornApp:
    """One of tests/dapr/apps served by uvicorn in its own process; what it records, one JSON line a call."""

    def __init__(self, module: str, record_variable: str, **env: str) -> None:
        self.module = module
        self.port = free_port()
        self.record = Path(tempfile.mkstemp(prefix="sg-dapr-app-", suffix=".jsonl")[1])
        self.log = Path(tempfile.mkstemp(prefix="sg-dapr-app-", suffix=".log")[1])
        self.env = {**os.environ, record_variable: str(self.record), **env}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, **env: str) -> UvicornApp:
        self.env.update(env)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", f"tests.dapr.apps.{self.module}:app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning"],
                cwd=REPO, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}dapr/subscribe", timeout=1) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.module} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def calls(self) -> list[dict[str, Any]]:
        text = self.record.read_text()
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def cleanup(self) -> None:
        self.kill()
        self.record.unlink(missing_ok=True)
        self.log.unlink(missing_ok=True)


@pytest.fixture
def checkout() -> Iterator[UvicornApp]:
    app = UvicornApp("checkout", "CHECKOUT_RECORD").start()
    yield app
    app.cleanup()


def cloud_event(topic: str, data: Any, **attributes: Any) -> bytes:
    """The CloudEvent daprd writes for a publish, made with the CloudEvents SDK (structured JSON)."""
    event = CloudEvent({
        "id": str(uuid.uuid4()), "specversion": "1.0", "source": "checkout-publisher", "type": "com.dapr.event.sent",
        "datacontenttype": "application/json", "topic": topic, "pubsubname": PUBSUB,
        "traceid": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "",
        **attributes,
    }, data)
    return JSONFormat().write(event)


def publish(client: redis.Redis, topic: str, data: Any, metadata: dict[str, str] | None = None,
            **attributes: Any) -> dict[str, Any]:
    """What Dapr's Redis component does on a publish: XADD to the topic's key, field ``data`` (and
    ``metadata``, a JSON object, when the publish had some). Returns the CloudEvent written."""
    body = cloud_event(topic, data, **attributes)
    fields: dict[str, bytes] = {"data": body}
    if metadata:
        fields["metadata"] = json.dumps(metadata).encode()
    client.xadd(topic, fields)  # type: ignore[arg-type]
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def dapr_env(server: RedisServer, app: UvicornApp, consumer: str, streams: str = "orders",
             **extra: str) -> dict[str, str]:
    env = {
        "SG_REDIS_URL": server.url, "SG_STREAMS": streams, "SG_GROUP": "checkout", "SG_CONSUMER": consumer,
        "SG_APP_URL": app.url, "SG_APP_PROTOCOL": "dapr", "SG_START_FROM": "0", "SG_READ_BLOCK": "200ms",
        "SG_STATS_INTERVAL": "1s", "SG_RETRY_INITIAL": "50ms", "SG_RETRY_MAX": "300ms", "SG_LOG_LEVEL": "info",
    }
    env.update({f"SG_{k.upper()}": v for k, v in extra.items()})
    return env


def dead_letters(client: redis.Redis, key: str) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange(key)]


def backlog(client: redis.Redis, stream: str, group: str = "checkout") -> tuple[int, int]:
    [info] = [g for g in client.xinfo_groups(stream) if g["name"] == group.encode()]
    return int(info["lag"] or 0), int(info["pending"])


async def until(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``condition`` until it is true (bounded); fail with ``what`` and its last value otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := condition()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what} (last: {value!r})")
        await asyncio.sleep(0.05)
