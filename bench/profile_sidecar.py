"""Where the sidecar's CPU time goes at saturation: the hot path, ranked, to guide optimization.

Why: the throughput scenarios show the sidecar using a whole core in per-entry mode; this
tells which code uses it. By default it samples the real ``python -m streamgroup_sidecar``
process with py-spy (a sampling profiler outside the process: no instrumentation
overhead, so asyncio-heavy code is not distorted) while it drains a pre-filled stream into
the sink, then aggregates the stacks three ways: by package (sidecar, aiohttp, redis-py,
asyncio, prometheus_client...), by function's own time (self), and by function including
what it calls (inclusive), for the sidecar's own functions. Without py-spy (or with
``--tool cprofile``) it runs ``streamgroup_sidecar.running.Sidecar`` in this process under
cProfile instead, with the same private Redis and sink.

Usage: ``.venv/bin/python -m bench.profile_sidecar [--entries 60000] [--batch-size 100] [--tool cprofile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .common import (
    GROUP,
    STREAM,
    RedisServer,
    SidecarProcess,
    Sink,
    entry_fields,
    fresh_stream,
    group_state,
    release,
    sidecar_env,
    stop_all,
    wait_drained,
    wait_until,
)

# Which part of the stack a frame belongs to, by the path py-spy reports (first match wins).
AREAS = (
    ("streamgroup_sidecar/", "sidecar code"),
    ("aiohttp/", "aiohttp client"),
    ("yarl/", "aiohttp client"),
    ("multidict/", "aiohttp client"),
    ("redis/", "redis-py"),
    ("prometheus_client/", "prometheus_client"),
    ("asyncio/", "asyncio event loop"),
    ("selectors.py", "asyncio event loop"),
    ("logging/", "logging"),
    ("ssl.py", "ssl"),
    ("socket.py", "socket"),
)


CALLERS_OF_TOP = 10


def prepare_stream(client: Any, entries: int, paced: float | None) -> None:
    """An empty group at the stream's end for a paced run, else ``entries`` pre-filled ones."""
    if paced:
        client.delete(STREAM)
        client.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
    else:
        fresh_stream(client, entries)


def area(frame: str) -> str:
    for marker, name in AREAS:
        if marker in frame:
            return name
    return "other"


def parse_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) format: ``frame;frame;...;leaf count`` per line, root first."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def callers(stacks: list[tuple[list[str], int]], leaf: str, depth: int = 2) -> Counter[str]:
    """Samples where ``leaf`` is the running function, by the ``depth`` frames that called it."""
    found: Counter[str] = Counter()
    for frames, count in stacks:
        if frames[-1] == leaf and len(frames) > 1:
            found[" <- ".join(short(f) for f in reversed(frames[-1 - depth:-1]))] += count
    return found


def short(frame: str) -> str:
    """``ClientSession._request (aiohttp/client.py)`` -> ``ClientSession._request``."""
    return frame.split(" (", 1)[0]


def report_stacks(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(count for _, count in stacks) or 1
    by_area: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        # Own time of a package: the deepest frame that is Python code we can name.
        by_area[area(frames[-1])] += count
        own[frames[-1]] += count
        for frame in set(frames):
            if "streamgroup_sidecar/" in frame:
                inclusive[frame] += count
    out = io.StringIO()
    out.write(f"{total} samples of the sidecar on CPU\n\nOwn time by package:\n")
    for name, count in by_area.most_common():
        out.write(f"  {count / total:6.1%}  {name}\n")
    out.write(f"\nTop {top} functions by own time (the first ones with their most common callers):\n")
    for rank, (frame, count) in enumerate(own.most_common(top)):
        out.write(f"  {count / total:6.1%}  {frame}\n")
        if rank < CALLERS_OF_TOP:
            for chain, n in callers(stacks, frame).most_common(2):
                out.write(f"            {n / total:5.1%} from {chain}\n")
    out.write(f"\nSidecar functions by inclusive time (they and what they call), top {top}:\n")
    for frame, count in inclusive.most_common(top):
        out.write(f"  {count / total:6.1%}  {frame}\n")
    return out.getvalue()


def produce(client: Any, entries: int, per_second: float) -> None:
    """XADD ``entries`` at a fixed rate (bounded: ``entries / per_second`` seconds)."""
    started = time.perf_counter()
    for i in range(entries):
        delay = started + i / per_second - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        client.xadd(STREAM, entry_fields(i, time.time_ns()))


def profile_with_py_spy(py_spy: str, entries: int, rate: int, options: dict[str, str], top: int,
                        keep: str | None, paced: float | None, native: bool = False) -> str:
    redis = RedisServer()
    sink = Sink()
    output = Path(tempfile.mkdtemp(prefix="sg-bench-pyspy-")) / "profile.txt"
    try:
        client = redis.client()
        prepare_stream(client, entries, paced)
        sidecar = SidecarProcess(redis.url, sink.url, "bench-profile", options)
        sidecar.wait_ready()
        spy = subprocess.Popen([py_spy, "record", "--pid", str(sidecar.proc.pid), "--format", "raw", "--nolineno",
                                *(["--native"] if native else []),
                                "--rate", str(rate), "--output", str(output), "--duration", "600"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # py-spy attached
        cpu = sidecar.proc.cpu_seconds()
        if paced:
            started = time.perf_counter()
            produce(client, entries, paced)
            wait_until(lambda: sink.stats()["entries"] >= entries, 30.0, "every entry received", sidecar.proc)
            finished = time.perf_counter()
            total = entries
        else:
            started = release(client)
            finished = wait_drained(client, timeout=max(60.0, entries / 500), procs=[sidecar.proc])
            total = entries + 1
        cpu = sidecar.proc.cpu_seconds() - cpu
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        sidecar.stop()
        if not output.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        if keep:
            shutil.copyfile(output, keep)
        head = (f"py-spy, {rate} Hz, on the real sidecar process ({options}"
                f"{f', producer at {paced:,.0f}/s' if paced else ', pre-filled stream'}): {total} entries in "
                f"{finished - started:.2f} s = {total / (finished - started):,.0f} entries/s, sidecar CPU "
                f"{cpu / (finished - started):.2f} cores = {cpu / total * 1e6:,.0f} us per entry "
                "(sampling slows it a little)\n")
        return head + report_stacks(parse_raw(output), top)
    finally:
        sink.stop()
        redis.stop()
        stop_all()
        shutil.rmtree(output.parent, ignore_errors=True)


def profile_with_cprofile(entries: int, options: dict[str, str], top: int, paced: float | None) -> str:
    from streamgroup_sidecar.config import parse_settings
    from streamgroup_sidecar.running import Sidecar

    redis = RedisServer()
    sink = Sink()
    try:
        client = redis.client()
        prepare_stream(client, entries, paced)
        env = sidecar_env(redis.url, sink.url, "bench-profile", 0, options)
        settings = parse_settings([], env)
        profiler = cProfile.Profile()

        async def drive() -> float:
            sidecar = Sidecar(settings)
            stop = asyncio.Event()
            task = asyncio.create_task(sidecar.run(stop))
            for _ in range(600):  # its start-up: at most 30 s
                if sidecar.health.groups_ok:
                    break
                await asyncio.sleep(0.05)
            profiler.enable()
            if paced:
                # The producer runs in a thread (not profiled) with its own connection.
                started = time.perf_counter()
                await asyncio.to_thread(produce, redis.client(), entries, paced)
            else:
                started = release(client)
            for _ in range(int(max(60.0, entries / 200) / 0.02)):  # bounded: gives up after a while
                if group_state(client, STREAM, GROUP) == (0, 0):
                    break
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - started
            profiler.disable()
            stop.set()
            await task
            return elapsed

        elapsed = asyncio.run(drive())
        total = entries if paced else entries + 1
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
        selects = sum(v[1] for k, v in raw.items() if k[0].endswith("selectors.py") and k[2] == "select")
        out.write(f"cProfile, in-process Sidecar ({options}"
                  f"{f', producer at {paced:,.0f}/s' if paced else ', pre-filled stream'}): {total} entries in "
                  f"{elapsed:.2f} s (instrumented: slower than for real); {selects / total:.1f} event-loop "
                  "iterations per entry\n")
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats("streamgroup_sidecar", top)
        return out.getvalue()
    finally:
        sink.stop()
        redis.stop()
        stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=60000)
    parser.add_argument("--in-flight", type=int, default=64, help="SG_MAX_IN_FLIGHT (per-entry mode)")
    parser.add_argument("--batch-size", type=int, default=1, help="above 1: profile batch mode")
    parser.add_argument("--batch-requests", type=int, default=8, help="batch mode: requests in flight")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--paced", type=float, metavar="ENTRIES_PER_S",
                        help="a producer adds --entries at this rate instead of a pre-filled stream")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", metavar="PATH", help="py-spy: keep the raw collapsed stacks (for flamegraph tools)")
    parser.add_argument("--native", action="store_true",
                        help="py-spy: sample C frames too (the garbage collector, hiredis, libc)")
    parser.add_argument("--tool", choices=("py-spy", "cprofile"), default=None,
                        help="py-spy when it is installed, else cprofile")
    args = parser.parse_args()
    options = {"max_in_flight": str(args.in_flight)}
    if args.batch_size > 1:
        options = {"batch_size": str(args.batch_size), "max_in_flight": str(args.batch_size * args.batch_requests)}
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    tool = args.tool or ("py-spy" if py_spy else "cprofile")
    with contextlib.suppress(KeyboardInterrupt):
        if tool == "py-spy":
            if py_spy is None:
                sys.exit("py-spy is not installed (pip install py-spy), use --tool cprofile")
            print(profile_with_py_spy(py_spy, args.entries, args.rate, options, args.top, args.keep, args.paced,
                                      args.native))
        else:
            print(profile_with_cprofile(args.entries, options, args.top, args.paced))


if __name__ == "__main__":
    main()
