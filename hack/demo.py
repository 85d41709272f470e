"""The main job, locally: a private redis-server, the sample app, the sidecar, a producer.

Produces entries on two streams with `streamgroup produce`, waits until the sidecar has
delivered and acknowledged every one of them, prints what each side saw, and stops
everything it started. Run it with `bash hack/demo.sh [ENTRIES]`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STREAMS = ("orders", "refunds")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"demo: {what} did not happen within {timeout:.0f}s")


def get_json(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    workdir = Path(tempfile.mkdtemp(prefix="streamgroup-demo-"))
    redis_port, app_port, health_port = free_port(), free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str], **env: str) -> None:
        log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, **env}, cwd=REPO))
        print(f"demo: started {name:<12} log: {workdir / (name + '.log')}")

    try:
        start("redis-server", [shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
                               "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)])
        start("sample-app", [sys.executable, "examples/app.py", str(app_port)])
        start("sidecar", [str(BIN / "streamgroup-sidecar")],
              SG_REDIS_URL=redis_url, SG_STREAMS=",".join(STREAMS), SG_GROUP="demo", SG_CONSUMER="demo-1",
              SG_START_FROM="0", SG_APP_URL=f"http://127.0.0.1:{app_port}/", SG_HEALTH_HOST="127.0.0.1",
              SG_HEALTH_PORT=str(health_port), SG_STATS_INTERVAL="500ms")
        health = f"http://127.0.0.1:{health_port}"
        wait_for("the sidecar becoming ready", lambda: get_json(health + "/readyz")["ok"])

        started = time.monotonic()
        for stream in STREAMS:
            lines = "".join(json.dumps({"n": n, "stream": stream, "note": "héllo ✓"}) + "\n"
                            for n in range(count))
            subprocess.run([str(BIN / "streamgroup"), "--redis-url", redis_url, "produce", stream],
                           input=lines.encode(), check=True)
        total = count * len(STREAMS)
        metrics = f"{health}/metrics"
        acked = 'streamgroup_sidecar_entries_total{outcome="acked"'
        wait_for(f"{total} acknowledgements", lambda: metric(metrics, acked) >= total, 60)
        elapsed = time.monotonic() - started
        time.sleep(0.6)  # one stats refresh, so lag and pending below are current

        delivered = get_json(f"http://127.0.0.1:{app_port}/stats")["received"]
        print()
        print(f"produced      {total} entries on {', '.join(STREAMS)}")
        print(f"delivered     {delivered} POSTs received by the app")
        print(f"acknowledged  {metric(metrics, acked):.0f} "
              f"(XACK round trips: {metric(metrics, 'streamgroup_sidecar_ack_batches_total'):.0f})")
        print(f"pending       {metric(metrics, 'streamgroup_sidecar_group_pending'):.0f}, "
              f"lag {metric(metrics, 'streamgroup_sidecar_group_lag'):.0f}")
        print(f"time          {elapsed:.2f}s from the first XADD to the last ack")
        print()
        subprocess.run([str(BIN / "streamgroup"), "--redis-url", redis_url, "status", *STREAMS], check=True)
        if delivered < total:
            raise SystemExit("demo: some entries were not delivered")
    finally:
        # One at a time, last started first: the sidecar flushes its acks and leaves the group while
        # Redis and the app are still up (stopped together, it warns that it could not hand over).
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print(f"demo: stopped everything; logs are in {workdir}")
        sidecar_log = workdir / "sidecar.log"
        troubles = [line for line in (sidecar_log.read_text(errors="replace") if sidecar_log.exists() else "")
                    .splitlines() if '"level":"warning"' in line or '"level":"error"' in line]
        if troubles:
            print("demo: the sidecar logged warnings or errors:", *troubles, sep="\n  ")


if __name__ == "__main__":
    main()
