"""The scenarios ``bench.run`` measures, each a function returning a dict of figures.

Why one function per scenario, separate from the table: so that ``bench.run`` can repeat and
interleave the throughput scenarios (a noisy shared machine drifts; interleaving spreads the
drift over all of them alike) and so that a scenario can be called on its own from a shell.
Scripts that load the CPU from Python (HTTP clients, the Redis ceiling, the naive loop) run
in their own processes, so the driver that times them never competes with them for the GIL.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from .common import (
    GROUP,
    PYTHON,
    STREAM,
    RedisServer,
    SidecarProcess,
    Sink,
    entry_fields,
    fresh_stream,
    percentile,
    prefill,
    release,
    run_json,
    wait_drained,
    wait_until,
)


def redis_ceiling(redis: RedisServer, entries: int, count: int = 100, depth: int = 4) -> dict[str, Any]:
    client = redis.client()
    client.delete(STREAM)
    prefill(client, entries)
    client.xgroup_create(STREAM, GROUP, id="0")
    return run_json([PYTHON, "-m", "bench.redis_ceiling", "--redis-url", redis.url, "--entries", str(entries),
                     "--count", str(count), "--depth", str(depth), "--max-seconds", "120"], timeout=180)


def http_client(sink: Sink, client: str, loop: str, requests: int, concurrency: int, max_seconds: float,
                depth: int = 1) -> dict[str, Any]:
    return run_json([PYTHON, "-m", "bench.http_clients", "--client", client, "--loop", loop, "--url", sink.url,
                     "--requests", str(requests), "--concurrency", str(concurrency), "--depth", str(depth),
                     "--max-seconds", str(max_seconds)], timeout=max_seconds + 60)


def naive(redis: RedisServer, sink: Sink, max_seconds: float, session: bool = False) -> dict[str, Any]:
    client = redis.client()
    # Enough entries that the loop never runs dry within max_seconds (it does a few thousand a second at most).
    client.delete(STREAM)
    prefill(client, int(max_seconds * 6000) + 1000)
    client.xgroup_create(STREAM, GROUP, id="0")
    argv = [PYTHON, "-m", "bench.naive", "--redis-url", redis.url, "--app-url", sink.url,
            "--max-seconds", str(max_seconds)]
    return run_json([*argv, "--session"] if session else argv, timeout=max_seconds + 60)


def forwarder(redis: RedisServer, sink: Sink, entries: int, in_flight: int, max_seconds: float) -> dict[str, Any]:
    """``bench/forwarder.py`` drains ``entries`` pre-filled ones (the group at the stream's start)."""
    client = redis.client()
    client.delete(STREAM)
    prefill(client, entries)
    client.xgroup_create(STREAM, GROUP, id="0")
    result = run_json([PYTHON, "-m", "bench.forwarder", "--redis-url", redis.url, "--app-url", sink.url,
                       "--entries", str(entries), "--in-flight", str(in_flight), "--max-seconds", str(max_seconds)],
                      timeout=max_seconds + 60)
    result["sidecar_cpu"] = result["cpu_seconds"] / result["seconds"] if result.get("seconds") else 0.0
    return result


def saturation(redis: RedisServer, sink: Sink, entries: int, options: dict[str, str], sidecars: int = 1,
               timeout: float = 300.0) -> dict[str, Any]:
    """Pre-fill ``entries``, start ``sidecars`` in one group, release the group, time until drained.

    Sidecars start against a group positioned at the stream's end, so their start-up (imports,
    connections) is not timed; the clock starts when the group is moved back to the start and
    one more entry wakes their blocking reads, and stops when the group has nothing left to
    read and nothing pending.
    """
    client = redis.client()
    fresh_stream(client, entries)
    procs = [SidecarProcess(redis.url, sink.url, f"bench-{i}", options) for i in range(sidecars)]
    try:
        for proc in procs:
            proc.wait_ready()
        sink.reset()
        cpu = [p.proc.cpu_seconds() for p in procs]
        sink_cpu, redis_cpu = sink.proc.cpu_seconds(), redis.proc.cpu_seconds()
        rss_peak = 0.0
        client.config_resetstat()
        started = release(client)
        deadline = time.monotonic() + timeout
        next_sample = 0.0
        while True:
            now = time.monotonic()
            if now >= next_sample:
                rss_peak = max([rss_peak, *(p.proc.rss_mb() for p in procs)])
                next_sample = now + 0.25
            try:
                finished = wait_drained(client, timeout=min(0.25, max(0.0, deadline - now)),
                                        procs=[p.proc for p in procs])
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        seconds = finished - started
        total = entries + 1
        stats = sink.stats()
        acked = sum(p.metric("streamgroup_sidecar_entries_total", 'outcome="acked"') for p in procs)
        calls = command_calls(client)
        return {
            "entries": total, "seconds": seconds, "rate": total / seconds, "sidecars": sidecars,
            "sink_requests": stats["requests"], "sink_entries": stats["entries"], "acked": acked,
            "verified": acked == total and stats["entries"] >= total,
            "sidecar_cpu": sum(p.proc.cpu_seconds() - c for p, c in zip(procs, cpu, strict=True)) / seconds,
            "sink_cpu": (sink.proc.cpu_seconds() - sink_cpu) / seconds,
            "redis_cpu": (redis.proc.cpu_seconds() - redis_cpu) / seconds,
            "rss_peak_mb": max([rss_peak, *(p.proc.rss_mb() for p in procs)]),
            "entries_per_xreadgroup": total / max(1, calls.get("xreadgroup", 0)),
            "entries_per_xack": total / max(1, calls.get("xack", 0)),
            "redis_calls": calls,
        }
    finally:
        for proc in procs:
            proc.stop()


def command_calls(client: Any) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (pipelined commands count one by one)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()
            if isinstance(value, dict) and "calls" in value}


def latency(redis: RedisServer, sink: Sink, rate: float, seconds: float, warmup: float,
            options: dict[str, str]) -> dict[str, Any]:
    """A producer XADDs at a fixed ``rate``, stamping ``time.time_ns()`` into each entry; the sink
    measures receipt minus stamp. The first ``warmup`` seconds are left out."""
    client = redis.client()
    client.delete(STREAM)
    client.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
    sidecar = SidecarProcess(redis.url, sink.url, "bench-latency", options)
    try:
        sidecar.wait_ready()
        sink.reset(latency_field="sent_ns")
        total = int(rate * seconds)
        skip = int(rate * warmup)
        rss: list[float] = []
        cpu = sidecar.proc.cpu_seconds()
        sink_cpu, redis_cpu = sink.proc.cpu_seconds(), redis.proc.cpu_seconds()
        started = time.perf_counter()
        next_sample = started + warmup
        for i in range(total):
            target = started + i / rate
            now = time.perf_counter()
            if target > now:
                time.sleep(target - now)
            client.xadd(STREAM, entry_fields(i, time.time_ns()))  # type: ignore[arg-type]
            if now >= next_sample:
                rss.append(sidecar.proc.rss_mb())
                next_sample = now + 1.0
        produced = time.perf_counter() - started
        cpu = sidecar.proc.cpu_seconds() - cpu
        sink_cpu, redis_cpu = sink.proc.cpu_seconds() - sink_cpu, redis.proc.cpu_seconds() - redis_cpu
        # The sink keeps at most MAX_LATENCIES samples (the first ones): count entries, not samples.
        wait_until(lambda: sink.stats()["entries"] >= total, 30.0, "every entry received", sidecar.proc)
        lat_ms = [us / 1000 for us in sink.latencies_us()[skip:]]
        return {
            "entries": total, "measured": len(lat_ms), "rate": total / produced,
            "p50_ms": percentile(lat_ms, 50), "p90_ms": percentile(lat_ms, 90), "p99_ms": percentile(lat_ms, 99),
            "p999_ms": percentile(lat_ms, 99.9), "max_ms": max(lat_ms) if lat_ms else float("nan"),
            "rss_mb": statistics.median(rss) if rss else sidecar.proc.rss_mb(),
            "rss_max_mb": max(rss) if rss else sidecar.proc.rss_mb(),
            # Leak check for long runs (--duration 300): the first and the last ten samples.
            "rss_first_mb": statistics.median(rss[:10]) if rss else float("nan"),
            "rss_last_mb": statistics.median(rss[-10:]) if rss else float("nan"),
            # The shape of a long run: the median of each minute's samples.
            "rss_per_minute_mb": [round(statistics.median(rss[i:i + 60]), 2) for i in range(0, len(rss), 60)],
            "sidecar_cpu": cpu / produced, "sink_cpu": sink_cpu / produced, "redis_cpu": redis_cpu / produced,
        }
    finally:
        sidecar.stop()
