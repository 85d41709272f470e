"""Run every benchmark scenario against private processes and print one table with its ratios.

Why one command: the machine is shared and noisy, so a ratio is only meaningful between
figures measured in the same run, minutes apart. This starts a private ``redis-server`` and
the sink (``bench/sink.py``) on free loopback ports, measures

1. the Redis ceiling (pipelined XREADGROUP COUNT 100 + XACK from Python, no HTTP),
2. the HTTP ceiling: each client candidate posting the sidecar's request at 64 in flight,
   no Redis, plus the sink's own ceiling (pipelined raw sockets),
3. the naive tutorial loop (``requests.post`` and one XACK per entry),
4. the real ``python -m streamgroup_sidecar`` in per-entry mode: saturation throughput,
   p50/p99 latency from XADD to the app at a fixed producer rate, and its RSS; next to it, the
   simplest forwarder built from the same client (``bench/forwarder.py``),
5. batch mode (``--batch-size``), or a "not available" row when the sidecar lacks it,
6. 1, 2 and 4 sidecars in one group,

then prints the figures, the ratios and the targets side by side, and stops everything it
started (also when interrupted). The throughput scenarios are repeated ``--repeat`` times,
interleaved, and their median is reported with the range.

Usage (from the repository root, with the project's venv)::

    .venv/bin/python -m bench.run            # the full run, about 5 minutes
    .venv/bin/python -m bench.run --quick    # tiny sizes, under a minute (smoke test)
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from . import scenarios
from .common import (
    PYTHON,
    RedisServer,
    Sink,
    batch_mode_supported,
    best_loop,
    has_module,
    machine,
    run_json,
    stop_all,
)

CLIENTS = ("builtin", "aiohttp", "pyreqwest", "aiosonic", "httpx")
LOOPS = ("asyncio", "uvloop")
TARGETS = {"per_entry_vs_http": 0.9, "per_entry_vs_naive": 15.0, "batch_vs_redis": 0.30, "p99_ms": 5.0,
           "rss_mb": 60.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the whole run in under a minute")
    parser.add_argument("--entries", type=int, help="entries per sidecar saturation run (90000; quick 2000)")
    parser.add_argument("--ceiling-entries", type=int, help="entries for the Redis ceiling (200000; quick 10000)")
    parser.add_argument("--requests", type=int, help="requests per HTTP client run (100000; quick 2000)")
    parser.add_argument("--client-seconds", type=float, help="time limit of one HTTP client run (15; quick 2)")
    parser.add_argument("--naive-seconds", type=float, help="duration of the naive loop (8; quick 1)")
    parser.add_argument("--duration", type=float, help="latency run: seconds at --rate (20; quick 3)")
    parser.add_argument("--warmup", type=float, help="latency run: first seconds left out (2; quick 0.5)")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency run: producer entries/s (1000)")
    parser.add_argument("--repeat", type=int, help="rounds of the throughput scenarios, median reported (2; quick 1)")
    parser.add_argument("--in-flight", type=int, default=64, help="SG_MAX_IN_FLIGHT in per-entry mode (64)")
    parser.add_argument("--concurrency", type=int, default=64, help="HTTP client requests in flight (64)")
    parser.add_argument("--batch-size", type=int, default=100, help="SG_BATCH_SIZE in batch mode (100)")
    parser.add_argument("--batch-wait", default="5ms", help="SG_BATCH_WAIT in batch mode (5ms)")
    parser.add_argument("--batch-requests", type=int, default=8,
                        help="batch requests in flight: SG_MAX_IN_FLIGHT = this x --batch-size (8)")
    parser.add_argument("--scale", default="1,2,4", help="sidecar counts for scale-out (1,2,4)")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="HTTP clients to compare")
    parser.add_argument("--skip", default="", help="comma-separated: redis,http,naive,sidecar,forwarder,latency,"
                                                   "batch,scale,json")
    parser.add_argument("--json", dest="json_path", help="also write every figure to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"entries": (90000, 2000), "ceiling_entries": (200000, 10000), "requests": (100000, 2000),
                "client_seconds": (15.0, 2.0), "naive_seconds": (8.0, 1.0), "duration": (20.0, 3.0),
                "warmup": (2.0, 0.5), "repeat": (2, 1)}
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    return args


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.skip = set(filter(None, args.skip.split(",")))
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.once: dict[str, dict[str, Any]] = {}
        self.clients = [c for c in args.clients.split(",") if c]
        self.scale = [int(n) for n in args.scale.split(",") if n]

    def record(self, key: str, measure: Callable[[], dict[str, Any]]) -> None:
        started = time.monotonic()
        try:
            result = measure()
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        result["wall"] = time.monotonic() - started
        self.results.setdefault(key, []).append(result)
        rate = result.get("rate")
        print(f"  {key:<34} {f'{rate:,.0f}/s' if isinstance(rate, float) else result.get('error', '')}",
              file=sys.stderr, flush=True)

    def round(self, redis: RedisServer, sink: Sink, batch: tuple[bool, str]) -> None:
        a = self.args
        timeout = max(60.0, a.entries / 500)
        if "redis" not in self.skip:
            self.record("redis_ceiling", lambda: scenarios.redis_ceiling(redis, a.ceiling_entries))
        if "http" not in self.skip:
            self.record("sink_ceiling", lambda: scenarios.http_client(
                sink, "raw", best_loop(), a.requests * 10, a.concurrency, a.client_seconds, depth=16))
            self.record("raw_socket", lambda: scenarios.http_client(
                sink, "raw", best_loop(), a.requests * 4, a.concurrency, a.client_seconds))
            for client in self.clients:
                for loop in LOOPS:
                    if not has_module("httptools" if client == "builtin" else client) or not has_module(loop):
                        self.results.setdefault(f"http:{client}:{loop}", [{"error": "not installed"}])
                        continue
                    self.record(f"http:{client}:{loop}", functools.partial(
                        scenarios.http_client, sink, client, loop, a.requests, a.concurrency, a.client_seconds))
        if "naive" not in self.skip and not has_module("requests"):
            self.results.setdefault("naive", [{"error": "not installed"}])
            self.results.setdefault("naive_session", [{"error": "not installed"}])
        elif "naive" not in self.skip:
            self.record("naive", lambda: scenarios.naive(redis, sink, a.naive_seconds))
            self.record("naive_session", lambda: scenarios.naive(redis, sink, a.naive_seconds, session=True))
        per_entry = {"max_in_flight": str(a.in_flight)}
        if "sidecar" not in self.skip:
            self.record("sidecar", lambda: scenarios.saturation(redis, sink, a.entries, per_entry, timeout=timeout))
        if "forwarder" not in self.skip:
            self.record("forwarder", lambda: scenarios.forwarder(redis, sink, a.entries, a.in_flight, timeout))
        if "batch" not in self.skip and batch[0]:
            batch_options = {"batch_size": str(a.batch_size), "batch_wait": a.batch_wait,
                             "max_in_flight": str(a.batch_size * a.batch_requests)}
            self.record("batch", lambda: scenarios.saturation(redis, sink, a.entries * 3, batch_options,
                                                              timeout=timeout))
        if "scale" not in self.skip:
            for n in self.scale:
                if n == 1 and "sidecar" not in self.skip:
                    continue  # the per-entry run above is the one-sidecar figure
                self.record(f"scale:{n}", functools.partial(
                    scenarios.saturation, redis, sink, a.entries, per_entry, sidecars=n, timeout=timeout))

    def run(self) -> None:
        a = self.args
        self.once["machine"] = machine()
        batch = batch_mode_supported()
        self.once["batch_support"] = {"supported": batch[0], "reason": batch[1]}
        redis = RedisServer()
        sink = Sink()
        try:
            for n in range(a.repeat):
                print(f"round {n + 1}/{a.repeat}", file=sys.stderr, flush=True)
                self.round(redis, sink, batch)
            if "latency" not in self.skip:
                print("latency", file=sys.stderr, flush=True)
                try:
                    self.once["latency"] = scenarios.latency(redis, sink, a.rate, a.duration, a.warmup,
                                                             {"max_in_flight": str(a.in_flight)})
                except Exception as exc:
                    self.once["latency"] = {"error": f"{type(exc).__name__}: {exc}"}
            if "json" not in self.skip:
                self.once["json"] = run_json([PYTHON, "-m", "bench.json_codecs"], timeout=120)
        finally:
            sink.stop()
            redis.stop()
            stop_all()
        self.once["machine"]["load_average_after"] = machine()["load_average"]


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric figure over the runs that succeeded, and the range of ``rate``."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0].get("error", "failed") if runs else "not run"}
    out: dict[str, Any] = {}
    for key, value in ok[0].items():
        values = [r[key] for r in ok if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and values:
            out[key] = statistics.median(values)
        else:
            out[key] = value
    rates = [r["rate"] for r in ok if "rate" in r]
    if rates:
        out["rate_min"], out["rate_max"], out["runs"] = min(rates), max(rates), len(rates)
    return out


def _rate(s: dict[str, Any], unit: str) -> str:
    if "error" in s:
        return str(s["error"])
    text = f"{s['rate']:,.0f} {unit}"
    if s.get("runs", 1) > 1:
        text += f" ({s['rate_min']:,.0f}-{s['rate_max']:,.0f})"
    return text


def _verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    if value != value:  # NaN
        return "n/a"
    if higher_is_better:
        return f"MET (+{(value / target - 1) * 100:.0f}%)" if value >= target else (
            f"MISSED ({(1 - value / target) * 100:.0f}% short)")
    return f"MET ({(1 - value / target) * 100:.0f}% under)" if value <= target else (
        f"MISSED ({(value / target - 1) * 100:.0f}% over)")


def build_table(bench: Bench) -> tuple[list[list[str]], dict[str, Any]]:
    """Rows of (scenario, result, ratio, target, verdict) and the summarized figures behind them."""
    s = {key: summary(runs) for key, runs in bench.results.items()}
    rows: list[list[str]] = []
    figures: dict[str, Any] = {"summary": s, "once": bench.once}

    def rate_of(key: str) -> float:
        value = s.get(key, {}).get("rate")
        return float(value) if isinstance(value, (int, float)) else float("nan")

    redis_rate = rate_of("redis_ceiling")
    if "redis_ceiling" in s:
        rows.append(["1 Redis ceiling: pipelined XREADGROUP COUNT 100 + XACK", _rate(s["redis_ceiling"], "entries/s"),
                     "", "", ""])
    http = {k: v for k, v in s.items() if k.startswith("http:") and "error" not in v}
    best_key = max(http, key=lambda k: http[k]["rate"]) if http else None
    best = float(http[best_key]["rate"]) if best_key else float("nan")
    if "sink_ceiling" in s:
        rows.append(["2 Sink ceiling: raw sockets, 64 conns x 16 pipelined", _rate(s["sink_ceiling"], "req/s"),
                     "", "", ""])
        rows.append(["  raw-socket client, 64 in flight (upper bound)", _rate(s["raw_socket"], "req/s"), "", "", ""])
    for key in sorted(k for k in s if k.startswith("http:")):
        _, client, loop = key.split(":")
        ratio = f"{rate_of(key) / best:.2f}x best" if key in http else ""
        rows.append([f"  {client} on {loop}, 64 in flight", _rate(s[key], "req/s"), ratio, "", ""])
    if best_key:
        _, client, loop = best_key.split(":")
        rows.append([f"  HTTP ceiling = best client ({client} on {loop})", f"{best:,.0f} req/s", "", "", ""])
    naive = rate_of("naive")
    if "naive" in s:
        rows.append(["3 Naive loop: COUNT 1, requests.post, XACK each", _rate(s["naive"], "entries/s"), "", "", ""])
        rows.append(["  same with a requests.Session (keep-alive)", _rate(s["naive_session"], "entries/s"),
                     "", "", ""])
    side = rate_of("sidecar")
    if "sidecar" in s:
        general = {k: v for k, v in http.items() if not k.startswith("http:builtin:")}
        general_key = max(general, key=lambda k: general[k]["rate"]) if general else None
        rows.append([f"4 Sidecar per-entry, saturation (in flight {bench.args.in_flight})",
                     _rate(s["sidecar"], "entries/s"), f"{side / best:.2f}x HTTP ceiling",
                     f">= {TARGETS['per_entry_vs_http']}x", _verdict(side / best, TARGETS["per_entry_vs_http"])])
        rows.append(["", "", f"{side / naive:.1f}x naive", f">= {TARGETS['per_entry_vs_naive']:.0f}x",
                     _verdict(side / naive, TARGETS["per_entry_vs_naive"])])
        if general_key:  # the ceiling of the fastest client the sidecar could have used instead of its own
            _, client, loop = general_key.split(":")
            rows.append(["", "", f"{side / float(general[general_key]['rate']):.2f}x the best general-purpose "
                                 f"client's ceiling ({client} on {loop})", "", ""])
        if "error" not in s["sidecar"]:
            rows.append(["  CPU at saturation (cores): sidecar / sink / redis",
                         f"{s['sidecar']['sidecar_cpu']:.2f} / {s['sidecar']['sink_cpu']:.2f} / "
                         f"{s['sidecar']['redis_cpu']:.2f}",
                         f"{s['sidecar']['sidecar_cpu'] / side * 1e6:,.0f} us sidecar CPU per entry", "", ""])
    if "forwarder" in s:
        forwarder = rate_of("forwarder")
        rows.append(["  what-if: simplest forwarder, same client (no retries, leases, metrics)",
                     _rate(s["forwarder"], "entries/s"),
                     f"{forwarder / best:.2f}x HTTP ceiling; sidecar = {side / forwarder:.2f}x it", "", ""])
        if "error" not in s["forwarder"]:
            rows.append(["  CPU of the forwarder (cores)", f"{s['forwarder']['sidecar_cpu']:.2f}",
                         f"{s['forwarder']['sidecar_cpu'] / forwarder * 1e6:,.0f} us per entry", "", ""])
    lat = bench.once.get("latency")
    if lat is not None:
        if "error" in lat:
            rows.append([f"  latency at {bench.args.rate:,.0f}/s", str(lat["error"]), "", "", ""])
        else:
            rows.append([f"  latency XADD -> app at {lat['rate']:,.0f}/s: p50 / p99",
                         f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} ms", f"p99.9 {lat['p999_ms']:.2f} ms",
                         f"p99 <= {TARGETS['p99_ms']:.0f} ms", _verdict(lat["p99_ms"], TARGETS["p99_ms"], False)])
            rows.append([f"  CPU at {lat['rate']:,.0f}/s (cores): sidecar / sink / redis",
                         f"{lat['sidecar_cpu']:.2f} / {lat['sink_cpu']:.2f} / {lat['redis_cpu']:.2f}",
                         f"{lat['sidecar_cpu'] / lat['rate'] * 1e6:,.0f} us sidecar CPU per entry", "", ""])
            rows.append([f"  RSS at steady state ({lat['rate']:,.0f}/s)", f"{lat['rss_mb']:.1f} MB",
                         f"peak at saturation {s.get('sidecar', {}).get('rss_peak_mb', float('nan')):.1f} MB",
                         f"<= {TARGETS['rss_mb']:.0f} MB", _verdict(lat["rss_mb"], TARGETS["rss_mb"], False)])
    support = bench.once.get("batch_support", {})
    if "batch" not in bench.skip:
        if not support.get("supported"):
            rows.append(["5 Sidecar batch mode", str(support.get("reason")), "", f">= {TARGETS['batch_vs_redis']}x "
                         "Redis ceiling", "n/a"])
        elif "batch" in s:
            b = rate_of("batch")
            a = bench.args
            rows.append([f"5 Sidecar batch mode ({a.batch_size}/request, {a.batch_requests} requests in flight)",
                         _rate(s["batch"], "entries/s"), f"{b / redis_rate:.2f}x Redis ceiling",
                         f">= {TARGETS['batch_vs_redis']}x", _verdict(b / redis_rate, TARGETS["batch_vs_redis"])])
            if "error" not in s["batch"]:
                rows.append(["  CPU (cores): sidecar / sink / redis",
                             f"{s['batch']['sidecar_cpu']:.2f} / {s['batch']['sink_cpu']:.2f} / "
                             f"{s['batch']['redis_cpu']:.2f}", f"{b / side:.1f}x the per-entry rate", "", ""])
    scale_keys = [n for n in bench.scale if (n == 1 and "sidecar" in s) or f"scale:{n}" in s]
    for n in scale_keys:
        key = "sidecar" if n == 1 and "scale:1" not in s else f"scale:{n}"
        one = rate_of("scale:1") if "scale:1" in s else side
        cpu = s[key].get("sidecar_cpu")
        rows.append([f"6 Scale-out: {n} sidecar{'s' if n > 1 else ''} in one group" if n == scale_keys[0]
                     else f"  {n} sidecars in one group", _rate(s[key], "entries/s"),
                     f"{rate_of(key) / one:.2f}x one sidecar" + (f", sidecars use {cpu:.2f} cores"
                                                                   if isinstance(cpu, (int, float)) else ""),
                     "", ""])
    return rows, figures


def render(rows: list[list[str]], markdown: bool) -> str:
    header = ["Scenario", "Result", "Ratio (same run)", "Target", "Verdict"]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row).rstrip() for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind through the finally blocks
    started = time.monotonic()
    bench = Bench(args)
    try:
        bench.run()
    finally:
        stop_all()
    rows, figures = build_table(bench)
    m = bench.once["machine"]
    print(f"\nStreamgroup bench{' (quick)' if args.quick else ''}: {m['cpus']} CPUs ({m['cpu']}), "
          f"{m['memory_gb']} GB, Python {m['python']}, redis-server {m['redis']}; load average before "
          f"{m['load_average']}, after {m.get('load_average_after')}; {args.repeat} round(s), "
          f"{time.monotonic() - started:.0f} s\n")
    print(render(rows, args.markdown))
    codecs = bench.once.get("json", {}).get("us_per_entry")
    if codecs:
        print("\nEncoding, microseconds per entry: " + ", ".join(f"{k} {v:.2f}" for k, v in codecs.items()
                                                                   if v is not None))
    if args.json_path:
        figures["args"] = vars(args)
        figures["raw"] = bench.results
        with open(args.json_path, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=2, default=str)
    failed = [k for k, v in figures["summary"].items() if "error" in v and v["error"] != "not installed"]
    failed += [f"{k} (not every entry acked and received)" for k, v in figures["summary"].items()
               if v.get("verified") is False]
    if failed:
        print(f"\nfailed scenarios: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
