"""The sidecar on Redis Cluster against the sidecar on one Redis, in the same run.

One sidecar in cluster mode reads a stream in six partitions (``bench:{0}`` … ``bench:{5}``) spread
over a private cluster of three primaries (``--replicas 1`` gives each a replica), with one lane per
partition (see ``streamgroup_sidecar.reading``); the standalone figure is the usual saturation run
(one stream, one ``redis-server``, no replica). Both in per-entry and in batch mode, rounds
interleaved, medians reported, and the ratio cluster / standalone of throughput and of the sidecar's
CPU per entry. On a small machine every server takes CPU from the sidecar: without replicas both sides
replicate nothing, which is the like-for-like comparison; with them, CPU per entry is the figure to
compare.

It also prints the figures for sizing a cluster (docs/performance.md, "The path to 1,000,000
entries/s"): the server CPU a primary spends per entry written (XADD, pipelined as producers batch)
and per entry consumed by the sidecar (XREADGROUP, XACK, the rest), from which one primary's ceiling
follows, since Redis runs commands on one thread. Every server binds 127.0.0.1 on a free port and
dies with the bench; every wait is bounded.

    .venv/bin/python -m bench.cluster                    # 60,000 entries, 2 rounds, no replicas
    .venv/bin/python -m bench.cluster --replicas 1 --repeat 3
    .venv/bin/python -m bench.cluster --entries 5000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from . import scenarios
from .common import GROUP, Proc, RedisServer, SidecarProcess, Sink, entry_fields, stop_all, wait_until

PARTITIONS = [f"bench:{{{n}}}" for n in range(6)]
BUS_OFFSET = 10000


def _free_pair() -> int:
    """A port whose cluster bus port (+10000) is free too."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + BUS_OFFSET > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
            try:
                bus.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """Private cluster-enabled ``redis-server`` processes: three primaries, each with ``replicas`` replicas."""

    def __init__(self, replicas: int = 0) -> None:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli are needed (apt-get install redis-server)")
        self.dir = Path(tempfile.mkdtemp(prefix="sg-bench-cluster-"))
        self.ports: list[int] = []
        self.procs: list[Proc] = []
        for _ in range(3 * (1 + replicas)):
            port = _free_pair()
            folder = self.dir / str(port)
            folder.mkdir()
            self.ports.append(port)
            self.procs.append(Proc(f"redis-{port}", [
                binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]))
        for port, proc in zip(self.ports, self.procs, strict=True):
            wait_until(lambda port=port: self.node(port).ping(), 10.0, f"node {port} answering", proc)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(replicas), "--cluster-yes"],
                       capture_output=True, timeout=120, check=True)
        wait_until(self._ok, 60.0, "cluster_state:ok on every node")

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)

    def _ok(self) -> bool:
        return all(b"cluster_state:ok" in self.node(port).execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                   for port in self.ports)

    @property
    def seeds(self) -> str:
        return "redis://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0], socket_timeout=30)

    def reset_stats(self) -> None:
        for port in self.ports:
            self.node(port).config_resetstat()

    def calls(self, command: str) -> int:
        """Calls of ``command`` on every node since :meth:`reset_stats` (replicas' replicated writes left out)."""
        total = 0
        for port in self.ports:
            node = self.node(port)
            role: Any = node.info("replication")
            stats: Any = node.info("commandstats")
            if role["role"] == "master":
                total += int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
        return total

    def cpu_seconds(self, role: str | None = None) -> float:
        """CPU time of every server, or of those whose replication role is ``role`` (master, slave)."""
        total = 0.0
        for port, proc in zip(self.ports, self.procs, strict=True):
            if role is None or self.node(port).info("replication")["role"] == role:  # type: ignore[index]
                total += proc.cpu_seconds()
        return total

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _fresh_partitions(cluster: RedisCluster, client: redis.RedisCluster, entries: int, chunk: int = 2000) -> float:
    """``entries`` spread evenly over the partitions, the group at their ends (a sidecar started now sees
    nothing); returns the primaries' CPU seconds per entry written (pipelined XADD, ``chunk`` at a time)."""
    for key in PARTITIONS:
        client.delete(key)
    before = cluster.cpu_seconds("master")
    for start in range(0, entries, chunk):
        pipe = client.pipeline()  # type: ignore[no-untyped-call]
        for i in range(start, min(entries, start + chunk)):
            pipe.xadd(PARTITIONS[i % len(PARTITIONS)], entry_fields(i))
        pipe.execute()
    written = (cluster.cpu_seconds("master") - before) / entries
    for key in PARTITIONS:
        client.xgroup_create(key, GROUP, id="$", mkstream=True)
    return written


def _drained(client: redis.RedisCluster) -> bool:
    for key in PARTITIONS:
        info: Any = client.xinfo_groups(key)
        row = next(row for row in info if row["name"].decode() == GROUP)
        if int(row["pending"]) or row.get("lag") != 0:
            return False
    return True


def cluster_saturation(cluster: RedisCluster, sink: Sink, entries: int, options: dict[str, str],
                       timeout: float = 300.0) -> dict[str, Any]:
    """Like :func:`bench.scenarios.saturation`, for one sidecar in cluster mode over the partitions."""
    client = cluster.client()
    xadd_cpu = _fresh_partitions(cluster, client, entries)
    proc = SidecarProcess(cluster.seeds, sink.url, "bench-cluster",
                          {**options, "redis_mode": "cluster", "streams": ",".join(PARTITIONS)})
    try:
        proc.wait_ready()
        sink.reset()
        cpu, redis_cpu, primaries_cpu = proc.proc.cpu_seconds(), cluster.cpu_seconds(), cluster.cpu_seconds("master")
        cluster.reset_stats()
        for key in PARTITIONS:  # back to the start; one more entry each wakes the lanes' blocking reads
            client.xgroup_setid(key, GROUP, "0", entries_read=0)
        started = time.perf_counter()
        for n, key in enumerate(PARTITIONS):
            client.xadd(key, entry_fields(-1 - n))  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout
        while not _drained(client):
            if not proc.proc.alive():
                raise RuntimeError(f"the sidecar exited:\n{proc.proc.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not drained after {timeout}s")
            time.sleep(0.005)
        seconds = time.perf_counter() - started
        total = entries + len(PARTITIONS)
        acked = proc.metric("streamgroup_sidecar_entries_total", 'outcome="acked"')
        return {"entries": total, "seconds": seconds, "rate": total / seconds, "acked": acked,
                "verified": acked == total and sink.stats()["entries"] >= total,
                "sidecar_cpu": (proc.proc.cpu_seconds() - cpu) / seconds,
                "redis_cpu": (cluster.cpu_seconds() - redis_cpu) / seconds,
                "primary_us_per_entry_consumed": (cluster.cpu_seconds("master") - primaries_cpu) / total * 1e6,
                "primary_us_per_entry_written": xadd_cpu * 1e6,
                "entries_per_xreadgroup": total / max(1, cluster.calls("xreadgroup")),
                "entries_per_xack": total / max(1, cluster.calls("xack"))}
    finally:
        proc.stop()
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=60_000, help="entries per per-entry run (batch: 3x)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds, medians reported")
    parser.add_argument("--in-flight", type=int, default=64, help="SG_MAX_IN_FLIGHT in per-entry mode")
    parser.add_argument("--batch-size", type=int, default=100, help="SG_BATCH_SIZE in batch mode")
    parser.add_argument("--batch-requests", type=int, default=8, help="batch requests in flight")
    parser.add_argument("--replicas", type=int, default=0, choices=(0, 1), help="replicas per primary")
    parser.add_argument("--json", dest="json_path", help="also write every figure to this JSON file")
    a = parser.parse_args()
    modes = {
        "per-entry": ({"max_in_flight": str(a.in_flight)}, a.entries),
        "batch": ({"batch_size": str(a.batch_size), "batch_wait": "5ms",
                   "max_in_flight": str(a.batch_size * a.batch_requests)}, a.entries * 3),
    }
    figures: dict[str, dict[str, list[dict[str, Any]]]] = {m: {"standalone": [], "cluster": []} for m in modes}
    standalone, cluster, sink = RedisServer(), RedisCluster(a.replicas), Sink()
    try:
        for n in range(a.repeat):
            for mode, (options, entries) in modes.items():
                order = ["standalone", "cluster"] if n % 2 == 0 else ["cluster", "standalone"]
                for kind in order:
                    print(f"round {n + 1}/{a.repeat}: {mode}, {kind}", file=sys.stderr, flush=True)
                    result = (scenarios.saturation(standalone, sink, entries, options) if kind == "standalone"
                              else cluster_saturation(cluster, sink, entries, options))
                    if not result["verified"]:
                        raise RuntimeError(f"not every entry was acked: {result}")
                    result["cpu_us_per_entry"] = result["sidecar_cpu"] / result["rate"] * 1e6
                    figures[mode][kind].append(result)
    finally:
        sink.stop()
        cluster.stop()
        standalone.stop()
        stop_all()
    print("| Mode | Standalone entries/s | Cluster entries/s | Ratio | Standalone µs CPU/entry "
          "| Cluster µs CPU/entry | Ratio | Entries per XREADGROUP, XACK (standalone; cluster) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, by_kind in figures.items():
        rate = {k: statistics.median(r["rate"] for r in runs) for k, runs in by_kind.items()}
        cpu = {k: statistics.median(r["cpu_us_per_entry"] for r in runs) for k, runs in by_kind.items()}
        per = {k: "{:.0f}, {:.0f}".format(statistics.median(r["entries_per_xreadgroup"] for r in runs),
                                          statistics.median(r["entries_per_xack"] for r in runs))
               for k, runs in by_kind.items()}
        print(f"| {mode} | {rate['standalone']:,.0f} | {rate['cluster']:,.0f} "
              f"| {rate['cluster'] / rate['standalone']:.2f}x | {cpu['standalone']:.1f} | {cpu['cluster']:.1f} "
              f"| {cpu['cluster'] / cpu['standalone']:.2f}x | {per['standalone']}; {per['cluster']} |")
    print()
    print(f"Per primary (3 primaries, {a.replicas} replica(s) each): server CPU per entry and the ceiling of one "
          "primary's core for entries both written and consumed")
    print("| Mode | µs written (XADD) | µs consumed (sidecar) | Entries/s per primary core |")
    print("| --- | --- | --- | --- |")
    for mode, by_kind in figures.items():
        runs = by_kind["cluster"]
        written = statistics.median(r["primary_us_per_entry_written"] for r in runs)
        consumed = statistics.median(r["primary_us_per_entry_consumed"] for r in runs)
        print(f"| {mode} | {written:.2f} | {consumed:.2f} | {1e6 / (written + consumed):,.0f} |")
    if a.json_path:
        Path(a.json_path).write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
