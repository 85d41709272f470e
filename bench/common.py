"""Process plumbing shared by the benchmark scenarios.

Why: every figure must come from private processes on loopback that the bench starts and
always stops again (a shared machine, other work running), so starting ``redis-server``, the
sink and sidecars, waiting for them, sampling their memory and CPU, and killing them on the
way out lives in one place. Nothing here binds anything but 127.0.0.1, and every wait is
bounded in time.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
STREAM = "bench"
GROUP = "bench"

_LIVE: list[Proc] = []
PROCESS_LOG = "SG_BENCH_PROCESS_LOG"
"""If set, every process the bench starts is recorded there: PID, start time and name, one per line."""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the bench dies, so nothing is ever left running."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """A child process with its log in a temp file; registered so :func:`stop_all` can end it."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        fd, path = tempfile.mkstemp(prefix=f"sg-bench-{name}-", suffix=".log")
        os.close(fd)
        self.log = Path(path)
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(list(argv), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                          preexec_fn=_die_with_parent)
        self.ps = psutil.Process(self.popen.pid)
        _LIVE.append(self)
        record = os.environ.get(PROCESS_LOG)
        if record:  # for the smoke test, which must look only at the processes this run started
            with open(record, "a") as out:
                out.write(f"{self.pid} {self.ps.create_time()} {name}\n")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss) / (1024 * 1024)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self in _LIVE:
            _LIVE.remove(self)
        self.log.unlink(missing_ok=True)
        return self.popen.returncode


def stop_all() -> None:
    """Stop every process this bench started and is still running (newest first)."""
    for proc in reversed(list(_LIVE)):
        proc.stop(timeout=5.0)


def wait_until(check: Any, timeout: float, what: str, proc: Proc | None = None, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, redis.RedisError):
            pass
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}:\n"
                               f"{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout}s" + (f"\n{proc.tail()}" if proc else ""))
        time.sleep(every)


class RedisServer:
    """A private ``redis-server`` on a free loopback port, no persistence, in a temp dir."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sg-bench-redis-"))
        self.proc = Proc("redis", [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
        ])
        wait_until(lambda: self.client().ping(), 10.0, "redis-server answering PING", self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=30)

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def best_loop() -> str:
    """uvloop when installed (the sink and the raw load generator are fastest on it), else asyncio."""
    return "uvloop" if has_module("uvloop") else "asyncio"


def _http_json(url: str, data: bytes | None = None, timeout: float = 10.0) -> Any:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read() or b"null")


class Sink:
    """The app side: ``bench/sink.py`` in its own process; counts requests and entries received."""

    def __init__(self, loop: str | None = None) -> None:
        loop = loop or best_loop()
        self.port = free_port()
        self.proc = Proc("sink", [PYTHON, "-m", "bench.sink", "--port", str(self.port), "--loop", loop])
        wait_until(lambda: self.stats() is not None, 10.0, "sink answering /_stats", self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stats(self) -> dict[str, int]:
        result: dict[str, int] = _http_json(f"{self.url}_stats")
        return result

    def reset(self, latency_field: str | None = None) -> None:
        _http_json(f"{self.url}_reset", json.dumps({"latency_field": latency_field}).encode())

    def latencies_us(self) -> list[int]:
        result: list[int] = _http_json(f"{self.url}_latencies")
        return result

    def stop(self) -> None:
        self.proc.stop()


def sidecar_env(redis_url: str, app_url: str, consumer: str, health_port: int,
                options: dict[str, str]) -> dict[str, str]:
    """``SG_`` variables as the operator would set them, plus ``options`` (``{"max_in_flight": "64"}``...)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "SG_REDIS_URL": redis_url,
        "SG_STREAMS": STREAM,
        "SG_GROUP": GROUP,
        "SG_CONSUMER": consumer,
        "SG_APP_URL": app_url,
        "SG_HEALTH_HOST": "127.0.0.1",
        "SG_HEALTH_PORT": str(health_port),
        "SG_LOG_LEVEL": "warning",
        "SG_SHUTDOWN_GRACE": "5s",
    }
    env.update({f"SG_{name.upper()}": value for name, value in options.items()})
    return env


class SidecarProcess:
    """The real ``python -m streamgroup_sidecar``."""

    def __init__(self, redis_url: str, app_url: str, consumer: str, options: dict[str, str] | None = None) -> None:
        self.health_port = free_port()
        self.proc = Proc(f"sidecar-{consumer}", [PYTHON, "-m", "streamgroup_sidecar"],
                         sidecar_env(redis_url, app_url, consumer, self.health_port, options or {}))

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            url = f"http://127.0.0.1:{self.health_port}/readyz"
            with urllib.request.urlopen(url, timeout=1) as reply:
                return bool(reply.status == 200)
        wait_until(ready, timeout, "sidecar /readyz", self.proc, every=0.05)

    def metric(self, name: str, label: str = "") -> float:
        """Sum of a metric's samples on ``/metrics`` whose labels contain ``label`` (all of them by default)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {" and label in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> int | None:
        return self.proc.stop(timeout=15.0)


def batch_mode_supported() -> tuple[bool, str]:
    """Whether this sidecar build has ``--batch-size`` (unknown ``SG_`` variables are silently ignored)."""
    result = subprocess.run([PYTHON, "-m", "streamgroup_sidecar", "--help"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT, check=False)
    if "--batch-size" in result.stdout and "--batch-wait" in result.stdout:
        return True, ""
    return False, "not available: this sidecar has no --batch-size / --batch-wait"


def entry_fields(i: int, stamp_ns: int | None = None) -> dict[str, str]:
    """A small, typical entry: the body the app receives is ~90 bytes of JSON."""
    fields = {"order": str(100000 + i), "amount": "12.50", "currency": "EUR", "customer": f"c-{i % 977}"}
    if stamp_ns is not None:
        fields["sent_ns"] = str(stamp_ns)
    return fields


def prefill(client: redis.Redis, n: int, stream: str = STREAM, chunk: int = 2000) -> None:
    """XADD ``n`` entries with pipelines of ``chunk`` commands."""
    for start in range(0, n, chunk):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + chunk)):
            pipe.xadd(stream, entry_fields(i))  # type: ignore[arg-type]
        pipe.execute()


def fresh_stream(client: redis.Redis, n: int, stream: str = STREAM, group: str = GROUP) -> None:
    """Stream of ``n`` entries with ``group`` created at its end: sidecars started now see nothing yet."""
    client.delete(stream)
    prefill(client, n, stream)
    client.xgroup_create(stream, group, id="$", mkstream=True)


def release(client: redis.Redis, stream: str = STREAM, group: str = GROUP) -> float:
    """Move ``group`` back to the start and wake blocked readers with one more entry; returns the start time.

    The stream then holds one more entry than was pre-filled, and every one of them is new to the group.
    """
    client.xgroup_setid(stream, group, "0", entries_read=0)
    started = time.perf_counter()
    client.xadd(stream, entry_fields(-1))  # type: ignore[arg-type]
    return started


def group_state(client: redis.Redis, stream: str = STREAM, group: str = GROUP) -> tuple[int, int | None]:
    """``(pending, lag)`` of ``group`` (lag ``None`` when Redis cannot tell)."""
    groups: Any = client.xinfo_groups(stream)
    for info in groups:
        if info["name"].decode() == group:
            lag = info.get("lag")
            return int(info["pending"]), (int(lag) if lag is not None else None)
    raise RuntimeError(f"no group {group!r} on {stream!r}")


def wait_drained(client: redis.Redis, timeout: float, procs: Sequence[Proc] = (), every: float = 0.005) -> float:
    """Wait until the group has read everything and nothing is pending; returns ``perf_counter()`` then."""
    deadline = time.monotonic() + timeout
    while True:
        pending, lag = group_state(client)
        if pending == 0 and lag == 0:
            return time.perf_counter()
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"group not drained after {timeout}s (pending {pending}, lag {lag})")
        time.sleep(every)


def run_json(argv: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run a scenario script in its own process; its last stdout line is a JSON object of results."""
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False,
                            preexec_fn=_die_with_parent)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"error": (result.stderr or result.stdout).strip().splitlines()[-1:] or [f"exit {result.returncode}"]}
    parsed: dict[str, Any] = json.loads(lines[-1])
    return parsed


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values`` (sorted or not)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return float(ordered[rank - 1])


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                   check=False).stdout.split()[2:3]
    return {
        "cpus": os.cpu_count(), "cpu": model, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0], "redis": redis_version[0] if redis_version else "?",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
