"""The images' sizes and the sidecar's start-up in a container: what every node pulls and waits for.

Builds both Dockerfile targets with ``hack/image.sh`` (podman on the local Debian base unless ``--base``
names another; ``--no-build`` measures the images already tagged), then for each image:

* **image**: its size as podman stores it (uncompressed layers, the base's included), and compressed:
  every layer gzipped at level 6, about what a registry sends on a pull;
* **Python env**: the size of the venv ``/opt/streamgroup`` inside it, and its largest packages;
* **start → /readyz**: ``--runs`` times, a container of the image started as the operator starts the
  sidecar (user 65532, read-only root, no capabilities, host network) against a private redis-server
  and a tiny app on loopback: seconds from the container's start (podman's ``StartedAt``) until
  ``/readyz`` answers 200, and from calling ``podman run`` (container creation included) until then.

    .venv/bin/python -m bench.image                 # build both, measure, print a table (~2 minutes)
    .venv/bin/python -m bench.image --no-build --runs 10 --json /tmp/image.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import ROOT, RedisServer, free_port, stop_all

TARGETS = ("sidecar", "full")
MB = 1_000_000


def podman_setup() -> tuple[dict[str, str], list[str]]:
    """The environment and flags hack/podman-env.sh gives podman on this kind of machine."""
    out = subprocess.run(["bash", "-c", 'source hack/podman-env.sh; echo "$CONTAINERS_CONF";'
                                        ' printf "%s\\n" "${SG_PODMAN_FLAGS[@]}"'],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=30).stdout.splitlines()
    return {**os.environ, "CONTAINERS_CONF": out[0]}, out[1:]


class Podman:
    def __init__(self) -> None:
        self.env, self.flags = podman_setup()

    def __call__(self, *args: str, timeout: float = 300.0) -> str:
        done = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout


class App(ThreadingHTTPServer):
    """An app that accepts every delivery (nothing is delivered here: the streams stay empty)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


def build(target: str, tag: str, base: str) -> float:
    started = time.monotonic()
    subprocess.run(["bash", "hack/image.sh", "--target", target, "--tag", tag, "--base", base], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL, timeout=1800)
    return time.monotonic() - started


def compressed_size(podman: Podman, tag: str) -> int:
    """The bytes of every layer of the image gzipped at level 6 (what a registry would store and send)."""
    with tempfile.TemporaryDirectory(prefix="sg-bench-image-") as folder:
        archive = Path(folder) / "image.tar"
        podman("save", "--format", "oci-archive", "-o", str(archive), tag, timeout=600)
        total = 0
        with tarfile.open(archive) as tar:
            index = json.load(_member(tar, "index.json"))
            manifest = json.load(_member(tar, _blob(index["manifests"][0]["digest"])))
            for layer in manifest["layers"]:
                blob = _member(tar, _blob(layer["digest"]))
                if layer["mediaType"].endswith("+gzip"):
                    total += int(layer["size"])
                    continue
                counter = _Counter()
                with gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=6, mtime=0) as out:
                    while chunk := blob.read(1 << 20):
                        out.write(chunk)
                total += counter.count
        return total


def _blob(digest: str) -> str:
    algorithm, value = digest.split(":", 1)
    return f"blobs/{algorithm}/{value}"


def _member(tar: tarfile.TarFile, name: str) -> Any:
    member = tar.extractfile(name)
    if member is None:
        raise RuntimeError(f"{name} missing from the archive")
    return member


class _Counter:
    """A write-only file that only counts what is written to it."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        pass


# Run by the image's own Python: the sidecar image has no shell (and no du) to ask.
_SIZES = """
import glob, json, os
def size(top):
    if os.path.isfile(top):
        return os.lstat(top).st_size
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(top) for f in fs)
[site] = glob.glob("/opt/streamgroup/lib/python3*/site-packages")
parts = sorted(((size(os.path.join(site, n)), n) for n in os.listdir(site)), reverse=True)[:6]
print(json.dumps({"total": size("/opt/streamgroup"), "largest": {n: b for b, n in parts}}))
"""


def python_env(podman: Podman, tag: str) -> dict[str, Any]:
    found = json.loads(podman("run", "--rm", *podman.flags, "--entrypoint", "python", tag, "-c", _SIZES))
    return {"mb": found["total"] / MB, "largest_mb": {name: size / MB for name, size in found["largest"].items()}}


def _started_at(podman: Podman, name: str) -> float:
    text = json.loads(podman("inspect", name))[0]["State"]["StartedAt"]
    # RFC 3339 with nanoseconds; datetime reads microseconds.
    head, _, rest = text.partition(".")
    fraction, zone = rest[:9], rest[9:]
    parsed = dt.datetime.fromisoformat(f"{head}.{fraction[:6]}{zone.replace(' ', '')}")
    return parsed.timestamp()


def start_to_ready(podman: Podman, tag: str, redis_url: str, app_url: str, runs: int) -> dict[str, Any]:
    from_start, from_run = [], []
    for run in range(runs):
        port = free_port()
        called = time.time()
        name = podman(
            "run", "--detach", *podman.flags, "--read-only", "--read-only-tmpfs=false", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--user", "65532:65532",
            "--env", f"SG_REDIS_URL={redis_url}", "--env", "SG_STREAMS=bench", "--env", "SG_GROUP=bench",
            "--env", f"SG_CONSUMER=bench-{run}", "--env", f"SG_APP_URL={app_url}",
            "--env", "SG_HEALTH_HOST=127.0.0.1", "--env", f"SG_HEALTH_PORT={port}", tag).strip()
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(OSError), urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
                    if reply.status == 200:
                        ready = time.time()
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{tag} not ready in 60 s: {podman('logs', name)[-2000:]}")
                time.sleep(0.005)
            from_start.append(ready - _started_at(podman, name))
            from_run.append(ready - called)
        finally:
            podman("rm", "--force", "--time", "0", name)
    return {"start_to_ready_s": _summary(from_start), "run_to_ready_s": _summary(from_run)}


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@contextlib.contextmanager
def servers() -> Iterator[tuple[RedisServer, App]]:
    redis_server = RedisServer()
    app = App()
    try:
        yield redis_server, app
    finally:
        app.shutdown()
        app.server_close()
        redis_server.stop()
        stop_all()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    podman = Podman()
    results: dict[str, Any] = {"date": dt.date.today().isoformat(), "base": args.base, "images": {}}
    with servers() as (redis_server, app):
        for target in TARGETS:
            tag = f"{args.repository}:bench" + ("-sidecar" if target == "sidecar" else "")
            figures: dict[str, Any] = {"tag": tag}
            if not args.no_build:
                figures["build_s"] = build(target, tag, args.base)
            figures["image_mb"] = json.loads(podman("image", "inspect", tag))[0]["Size"] / MB
            figures["compressed_mb"] = compressed_size(podman, tag) / MB
            figures["python_env"] = python_env(podman, tag)
            figures.update(start_to_ready(podman, tag, redis_server.url, app.url, args.runs))
            results["images"][target] = figures
    base_tag = "localhost/debian-python:bookworm" if args.base == "local" else args.base
    results["base_image_mb"] = json.loads(podman("image", "inspect", base_tag))[0]["Size"] / MB
    results["base_compressed_mb"] = compressed_size(podman, base_tag) / MB
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"images on {results['base']} base ({results['date']}); base image {results['base_image_mb']:.0f} MB, "
             f"{results['base_compressed_mb']:.0f} MB compressed",
             "| image | image MB | compressed MB | Python env MB | largest packages (MB) | start → /readyz s "
             "(median, min-max) | podman run → /readyz s |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for target, figures in results["images"].items():
        env = figures["python_env"]
        largest = ", ".join(f"{name} {size:.0f}" for name, size in env["largest_mb"].items())
        ready, run = figures["start_to_ready_s"], figures["run_to_ready_s"]
        lines.append(f"| {target} | {figures['image_mb']:.0f} | {figures['compressed_mb']:.0f} | {env['mb']:.0f} | "
                     f"{largest} | {ready['median']:.2f} ({ready['min']:.2f}-{ready['max']:.2f}) | "
                     f"{run['median']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.image", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base", default="local", help="hack/image.sh --base (default: local, the Debian base)")
    parser.add_argument("--repository", default="localhost/streamgroup", help="where the bench tags its images")
    parser.add_argument("--no-build", action="store_true", help="measure the images already tagged")
    parser.add_argument("--runs", type=int, default=5, help="containers started per image (default 5)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    results = measure(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
