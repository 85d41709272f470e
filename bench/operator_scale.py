"""One operator carrying many StreamGroups: how fast they are made, and what it costs once nothing changes.

A private control plane (etcd + kube-apiserver, ``tests/support/kube.py``), one private ``redis-server``
and the real operator process (``python -m streamgroup_operator``, watching one namespace). The bench
writes a few entries on N streams, then creates N StreamGroups (one stream each, ``startFrom: "0"``,
so every group has a lag), and measures:

* **made**: seconds from the first create until every consumer group exists in Redis, and until every
  Deployment exists (seen by a watch);
* **lag shown**: seconds from each StreamGroup's creation until its status first shows ``lag`` (the
  slowest, the median), and until every status does;
* **steady state**, after a settling time, over a window (``--window``): the operator's CPU (user +
  system of its process only, in % of one core) and RSS, Redis commands per second, and the API writes
  while nothing changes: StreamGroups and Deployments whose resourceVersion moved (from the watches,
  with the fields that changed), and the API server's own count of writes and reads by resource
  (``apiserver_request_total`` on its ``/metrics``: the control plane is private, only the operator
  talks to it then);
* during the burst (from the first create until every Deployment is scaled and so reported): the
  CPU of each process (operator, kube-apiserver, etcd, redis-server, the bench itself) and the API
  requests by verb and resource;
* ``--profile`` (or ``--profile burst``): py-spy on the operator's process over the window (or the
  burst), where the CPU goes by package and function (the CPU figure then includes py-spy's sampling).

Everything it starts binds 127.0.0.1, is stopped on the way out (and dies with the bench), and every
wait is bounded (``--timeout``).

    .venv/bin/python -m bench.operator_scale --streamgroups 1000
    .venv/bin/python -m bench.operator_scale --streamgroups 200 --profile
    .venv/bin/python -m bench.operator_scale --streamgroups 1000 --json /tmp/scale.json --keep-log /tmp/op.log
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
from kubernetes import client as k8s

from tests.support.kube import BinariesMissing, ControlPlane

from .common import (
    PROCESS_LOG,
    PYTHON,
    ROOT,
    Proc,
    RedisServer,
    free_port,
    machine,
    percentile,
    stop_all,
    wait_until,
)
from .profile_sidecar import callers, parse_raw, short

API_GROUP, VERSION, PLURAL = "streamgroup.io", "v1alpha1", "streamgroups"
NAMESPACE = "scale"
GROUP = "g"
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "APPLY")
IGNORED_PATHS = ("metadata.resourceVersion", "metadata.managedFields")

# Which part of the operator a frame belongs to, by the path py-spy reports (first match wins).
AREAS = (
    ("streamgroup_operator/", "operator code"),
    ("streamgroup_core/", "operator code"),
    ("kopf/", "kopf"),
    ("kubernetes/", "kubernetes client"),
    ("urllib3/", "kubernetes client (urllib3)"),
    ("dateutil/", "kubernetes client (dateutil)"),
    ("redis/", "redis-py"),
    ("aiohttp/", "aiohttp (kopf's API client)"),
    ("yarl/", "aiohttp (kopf's API client)"),
    ("multidict/", "aiohttp (kopf's API client)"),
    ("prometheus_client/", "prometheus_client"),
    ("logging/", "logging"),
    ("json/", "json"),
    ("asyncio/", "asyncio event loop"),
    ("selectors.py", "asyncio event loop"),
    ("concurrent/", "threads (asyncio.to_thread)"),
    ("threading.py", "threads (asyncio.to_thread)"),
    ("ssl.py", "ssl"),
    ("socket.py", "socket"),
    ("copy.py", "copy"),
)


def manifest(index: int, redis_url: str, autoscaling: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "redis": {"url": redis_url},
        "streams": [stream_name(index)],
        "group": GROUP,
        "startFrom": "0",
        "template": {"spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]}},
    }
    if autoscaling:
        spec["autoscaling"] = {"minReplicas": 0, "maxReplicas": 3, "targetLagPerReplica": 100}
    return {"apiVersion": f"{API_GROUP}/{VERSION}", "kind": "StreamGroup",
            "metadata": {"name": sg_name(index)}, "spec": spec}


def expected_replicas(entries: int, autoscaling: bool) -> int:
    """What the operator settles on for a stream of ``entries`` unread ones (see :func:`manifest`)."""
    return min(3, -(-entries // 100)) if autoscaling else 1


def sg_name(index: int) -> str:
    return f"sg-{index:05d}"


def stream_name(index: int) -> str:
    return f"scale-{index:05d}"


def changed_paths(old: Any, new: Any, prefix: str = "", depth: int = 3) -> list[str]:
    """The dotted paths (``depth`` levels deep at most) where two objects differ."""
    if depth == 0 or not isinstance(old, dict) or not isinstance(new, dict):
        return [] if old == new or prefix in IGNORED_PATHS else [prefix or "(root)"]
    paths = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}.{key}" if prefix else key
        if path in IGNORED_PATHS:
            continue
        if old.get(key) != new.get(key):
            paths += changed_paths(old.get(key), new.get(key), path, depth - 1)
    return paths


@dataclass
class Seen:
    """What a watch saw of one object."""

    added: float
    body: dict[str, Any]
    lag_at: float | None = None
    handled_at: float | None = None
    """When its status first showed observedGeneration (the change handler had handled it)."""
    changes: list[tuple[float, list[str]]] = field(default_factory=list)
    """(when, changed paths) of every MODIFIED event."""


class Watcher(threading.Thread):
    """A watch on one resource in one namespace, raw JSON: what exists, when it came, and every change."""

    def __init__(self, plane: ControlPlane, path: str, context: ssl.SSLContext) -> None:
        super().__init__(daemon=True, name=f"watch {path}")
        self.host, self.port = "127.0.0.1", plane.apiserver_port
        self.path = path
        self.context = context
        self.lock = threading.Lock()
        self.objects: dict[str, Seen] = {}
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def _get(self, query: str) -> http.client.HTTPResponse:
        for _ in range(60):  # a new CRD's storage answers 429 for a moment
            connection = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=900)
            connection.request("GET", f"{self.path}?{query}")
            response = connection.getresponse()
            if response.status != 429:
                break
            response.read()
            connection.close()
            time.sleep(0.5)
        if response.status != 200:
            raise RuntimeError(f"GET {self.path}?{query}: {response.status} {response.read()[:500]!r}")
        return response

    def run(self) -> None:
        try:
            listing = json.loads(self._get("limit=0").read())
            version = listing["metadata"]["resourceVersion"]
            for item in listing.get("items", []):
                self._record("ADDED", item)
            self.ready.set()
            while True:  # a watch the server ended is taken up again from the last version seen
                response = self._get(f"watch=1&allowWatchBookmarks=true&timeoutSeconds=600&resourceVersion={version}")
                for line in response:
                    event = json.loads(line)
                    body = event["object"]
                    version = body.get("metadata", {}).get("resourceVersion", version)
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch {self.path}: {body}")
                    if event["type"] != "BOOKMARK":
                        self._record(event["type"], body)
        except BaseException as exc:  # shown by the bench (and the control plane going away ends it)
            self.error = exc
            self.ready.set()

    def _record(self, kind: str, body: dict[str, Any]) -> None:
        now = time.monotonic()
        name = body["metadata"]["name"]
        has_lag = isinstance(body.get("status", {}).get("lag"), int)
        handled = body.get("status", {}).get("observedGeneration") is not None
        with self.lock:
            seen = self.objects.get(name)
            if seen is None:
                seen = self.objects[name] = Seen(now, body)
            elif kind == "MODIFIED":
                seen.changes.append((now, changed_paths(seen.body, body)))
                seen.body = body
            if has_lag and seen.lag_at is None:
                seen.lag_at = now
            if handled and seen.handled_at is None:
                seen.handled_at = now

    def snapshot(self) -> dict[str, Seen]:
        with self.lock:
            return dict(self.objects)


def ssl_context(plane: ControlPlane) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(plane.ca_cert))
    context.load_cert_chain(*(str(path) for path in plane.admin_cert))
    return context


_METRIC = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def apiserver_requests(plane: ControlPlane, context: ssl.SSLContext) -> Counter[tuple[str, str]]:
    """The API server's request counts so far, by (verb, resource[/subresource])."""
    with urllib.request.urlopen(f"{plane.url}/metrics", context=context, timeout=30) as reply:
        text = reply.read().decode()
    counts: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        resource = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        counts[(labels.get("verb", ""), resource)] += int(float(match["value"]))
    return counts


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def redis_commands(client: redis.Redis) -> int:
    stats: Any = client.info("stats")
    return int(stats["total_commands_processed"])


class OperatorUnderTest:
    """``python -m streamgroup_operator`` watching one namespace, its /healthz waited for."""

    def __init__(self, kubeconfig: Path, resync: float, extra: list[str], source: Path | None = None) -> None:
        self.port = free_port()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
               "PYTHONUNBUFFERED": "1",
               # Its Lease in the bench's namespace (a variable, not a flag: versions without election ignore it).
               "SG_OPERATOR_LEADER_ELECT_NAMESPACE": NAMESPACE}
        if source is not None:  # another version's operator and core, e.g. `git archive REV operator core`
            env["PYTHONPATH"] = f"{source / 'operator'}:{source / 'core'}"
        self.proc = Proc("operator", [
            PYTHON, "-m", "streamgroup_operator", "--kubeconfig", str(kubeconfig), "--namespaces", NAMESPACE,
            "--host", "127.0.0.1", "--port", str(self.port), "--resync-interval", f"{resync}s",
            "--sidecar-image", "streamgroup/streamgroup:bench", *extra,
        ], env=env)
        wait_until(self.healthy, 60.0, "operator answering /healthz", self.proc, every=0.1)

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as reply:
            return bool(reply.status == 200)


def area(frame: str) -> str:
    for marker, name in AREAS:
        if marker in frame:
            return name
    return "other"


def report_profile(stacks: list[tuple[list[str], int]], top: int) -> str:
    """Own time by package and function, and inclusive time of the operator's and kopf's functions."""
    total = sum(count for _, count in stacks) or 1
    by_area: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        by_area[area(frames[-1])] += count
        own[frames[-1]] += count
        for frame in set(frames):
            if "streamgroup_operator/" in frame or "kopf/" in frame:
                inclusive[frame] += count
    lines = [f"{total} samples of the operator on CPU", "", "Own time by package:"]
    lines += [f"  {count / total:6.1%}  {name}" for name, count in by_area.most_common()]
    lines += ["", f"Top {top} functions by own time (the first ten with their most common callers):"]
    for rank, (frame, count) in enumerate(own.most_common(top)):
        lines.append(f"  {count / total:6.1%}  {frame}")
        if rank < 10:
            lines += [f"            {n / total:5.1%} from {chain}"
                      for chain, n in callers(stacks, frame, 3).most_common(2)]
    lines += ["", f"Operator and kopf functions by inclusive time, top {top}:"]
    lines += [f"  {count / total:6.1%}  {short(frame)} ({frame.split('(', 1)[-1]}" for frame, count
              in inclusive.most_common(top)]
    return "\n".join(lines)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.figures: dict[str, Any] = {"streamgroups": args.streamgroups, "resync_interval_s": args.resync,
                                        "entries_per_stream": args.entries, "machine": machine()}
        self.profile_text = ""
        self.operator: OperatorUnderTest | None = None

    def deadline(self) -> float:
        return time.monotonic() + float(self.args.timeout)

    def run(self, plane: ControlPlane, redis_server: RedisServer) -> None:
        args = self.args
        kubectl = plane.kubectl_command()
        subprocess.run([*kubectl, "apply", "-f", str(ROOT / "crds")], check=True, capture_output=True, timeout=60)
        subprocess.run([*kubectl, "wait", "--for=condition=established", "--timeout=30s",
                        "crd/streamgroups.streamgroup.io"], check=True, capture_output=True, timeout=60)
        subprocess.run([*kubectl, "create", "namespace", NAMESPACE], check=True, capture_output=True, timeout=60)
        client = redis_server.client()
        pipe = client.pipeline(transaction=False)
        for i in range(args.streamgroups):
            for n in range(args.entries):
                pipe.xadd(stream_name(i), {"n": str(n)})
        pipe.execute()

        context = ssl_context(plane)
        sgs = Watcher(plane, f"/apis/{API_GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}", context)
        deployments = Watcher(plane, f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", context)
        for watcher in (sgs, deployments):
            watcher.start()
            watcher.ready.wait(30)
            if watcher.error is not None:
                raise RuntimeError(f"{watcher.name}: {watcher.error}")

        operator = self.operator = OperatorUnderTest(plane.kubeconfig, args.resync, args.operator_arg or [],
                                                     args.operator_source)
        self.figures["operator_rss_mb_started"] = round(operator.proc.rss_mb(), 1)

        api = plane.api_client()
        api.configuration.connection_pool_maxsize = args.create_workers
        custom = k8s.CustomObjectsApi(api)

        def create(i: int) -> None:
            custom.create_namespaced_custom_object(API_GROUP, VERSION, NAMESPACE, PLURAL,
                                                   manifest(i, redis_server.url, args.autoscaling))

        print(f"creating {args.streamgroups} StreamGroups ...", flush=True)
        processes = {"operator": operator.proc.ps, "kube-apiserver": psutil.Process(plane.pids[1]),
                     "etcd": psutil.Process(plane.pids[0]), "redis-server": redis_server.proc.ps,
                     "bench": psutil.Process()}
        cpu_before = {name: cpu_seconds(ps) for name, ps in processes.items()}
        spy = self._profiler(operator, "burst")
        burst_requests = apiserver_requests(plane, context)
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.create_workers) as pool:
            list(pool.map(create, range(args.streamgroups)))
        created = time.monotonic()
        self.figures["created_s"] = round(created - started, 1)

        streams = [stream_name(i) for i in range(args.streamgroups)]

        def groups_made() -> int:
            pipe = client.pipeline(transaction=False)
            for stream in streams:
                pipe.xinfo_groups(stream)
            return sum(1 for rows in pipe.execute() if any(r["name"] in (GROUP, GROUP.encode()) for r in rows))

        expected = expected_replicas(args.entries, args.autoscaling)

        def scaled(seen: dict[str, Seen], made: dict[str, Seen]) -> bool:
            """Every StreamGroup's first decision applied: its status and its Deployment show it."""
            return len(seen) == len(made) == args.streamgroups and all(
                s.body.get("status", {}).get("replicas") == expected for s in seen.values()) and all(
                d.body.get("spec", {}).get("replicas") == expected for d in made.values())

        groups_at = deployments_at = lag_at = scaled_at = None
        deadline = self.deadline()
        while lag_at is None or groups_at is None or deployments_at is None or scaled_at is None:
            if not operator.proc.alive():
                raise RuntimeError(f"the operator exited:\n{operator.proc.tail(4000)}")
            if time.monotonic() > deadline:
                raise TimeoutError(self._progress(sgs, deployments, groups_made()))
            now = time.monotonic()
            if groups_at is None and groups_made() == args.streamgroups:
                groups_at = now
            if deployments_at is None and len(deployments.snapshot()) >= args.streamgroups:
                deployments_at = now
            seen = sgs.snapshot()
            if lag_at is None and len(seen) == args.streamgroups and all(s.lag_at is not None for s in seen.values()):
                lag_at = max(s.lag_at or 0.0 for s in seen.values())
            if scaled_at is None and scaled(seen, deployments.snapshot()):
                scaled_at = now
            time.sleep(0.25)
        burst = time.monotonic() - started
        self.figures["burst_cpu_percent"] = {
            name: round(100 * (cpu_seconds(ps) - cpu_before[name]) / burst, 1) for name, ps in processes.items()}
        requests = apiserver_requests(plane, context)
        requests.subtract(burst_requests)
        self.figures["burst_api_requests"] = {f"{verb} {resource}": n for (verb, resource), n in
                                              sorted(requests.items(), key=lambda item: -item[1])
                                              if n > 0 and verb != "WATCH" and resource != "leases"}
        self._profiled(spy)
        seen = sgs.snapshot()
        delays = [(s.lag_at or 0.0) - s.added for s in seen.values()]
        handled = [(s.handled_at or s.lag_at or 0.0) - s.added for s in seen.values()]
        self.figures.update({
            "groups_made_s": round(groups_at - started, 1),
            "deployments_made_s": round(deployments_at - started, 1),
            "lag_in_every_status_s": round(lag_at - started, 1),
            "lag_delay_max_s": round(max(delays), 1),
            "lag_delay_p50_s": round(percentile(delays, 50), 1),
            "lag_delay_p90_s": round(percentile(delays, 90), 1),
            "handled_delay_max_s": round(max(handled), 1),
            "handled_delay_p50_s": round(percentile(handled, 50), 1),
            "handled_delay_p90_s": round(percentile(handled, 90), 1),
            "scaled_everywhere_s": round(scaled_at - started, 1),
        })
        print(f"made: every group {self.figures['groups_made_s']} s, every Deployment "
              f"{self.figures['deployments_made_s']} s, lag in every status {self.figures['lag_in_every_status_s']} s "
              f"after the first create (creating took {self.figures['created_s']} s), every Deployment at its "
              f"{expected} replica(s) and so reported {self.figures['scaled_everywhere_s']} s", flush=True)

        print(f"settling {args.settle:.0f} s more, then measuring {args.window:.0f} s ...", flush=True)
        time.sleep(args.settle)
        self._steady(plane, context, client, operator, sgs, deployments)

    def _progress(self, sgs: Watcher, deployments: Watcher, groups: int) -> str:
        seen = sgs.snapshot()
        return (f"not every StreamGroup reconciled within {self.args.timeout:.0f}s: {groups} groups, "
                f"{len(deployments.snapshot())} Deployments, {sum(1 for s in seen.values() if s.lag_at)} statuses "
                f"with lag of {self.args.streamgroups}")

    def _steady(self, plane: ControlPlane, context: ssl.SSLContext, client: redis.Redis, operator: OperatorUnderTest,
                sgs: Watcher, deployments: Watcher) -> None:
        args = self.args
        spy = self._profiler(operator, "steady")
        before_requests = apiserver_requests(plane, context)
        before_commands = redis_commands(client)
        cpu_before, rss_max = operator.proc.cpu_seconds(), 0.0
        window_start = time.monotonic()
        while (left := window_start + args.window - time.monotonic()) > 0:
            rss_max = max(rss_max, operator.proc.rss_mb())
            time.sleep(min(1.0, left))
        window_end = time.monotonic()
        cpu = operator.proc.cpu_seconds() - cpu_before
        rss_max = max(rss_max, operator.proc.rss_mb())
        commands = redis_commands(client) - before_commands
        clients: Any = client.info("clients")
        requests = apiserver_requests(plane, context)
        requests.subtract(before_requests)
        length = window_end - window_start

        written: Counter[str] = Counter()
        objects: dict[str, set[str]] = {"streamgroups": set(), "deployments": set()}
        for kind, watcher in (("streamgroups", sgs), ("deployments", deployments)):
            for name, seen in watcher.snapshot().items():
                for when, paths in seen.changes:
                    if window_start <= when <= window_end:
                        objects[kind].add(name)
                        written.update(f"{kind}: {path}" for path in paths)
        # The API server renews its own identity lease (PUT leases) every 10 s: not the operator's.
        writes = {f"{verb} {resource}": n for (verb, resource), n in sorted(requests.items())
                  if verb in WRITE_VERBS and n > 0 and resource != "leases"}
        reads = {f"{verb} {resource}": round(n / length, 1) for (verb, resource), n in sorted(requests.items())
                 if verb not in WRITE_VERBS and n > 0 and verb != "WATCH"}
        self.figures.update({
            "window_s": round(length, 1),
            "operator_cpu_percent": round(100 * cpu / length, 1),
            "operator_rss_mb": round(rss_max, 1),
            "redis_commands_per_s": round(commands / length, 1),
            "redis_connections": int(clients["connected_clients"]) - 1,  # the bench's own
            "streamgroups_rewritten": len(objects["streamgroups"]),
            "deployments_rewritten": len(objects["deployments"]),
            "fields_rewritten": dict(written.most_common(20)),
            "api_writes": writes,
            "api_requests_per_s": reads,
            "profiled": args.profile == "steady",
        })
        self._profiled(spy)

    def _profiler(self, operator: OperatorUnderTest, phase: str) -> tuple[subprocess.Popen[bytes], Path] | None:
        """py-spy recording the operator, if ``--profile`` asked for this phase."""
        args = self.args
        if args.profile != phase:
            return None
        py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
        if py_spy is None:
            raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
        raw = Path(tempfile.mkdtemp(prefix="sg-bench-pyspy-")) / "operator.txt"
        spy = subprocess.Popen([py_spy, "record", "--pid", str(operator.proc.pid), "--format", "raw",
                                "--nolineno", *([] if args.profile_all_threads else ["--gil"]),
                                "--rate", str(args.profile_rate), "--output", str(raw),
                                "--duration", str(int(args.timeout) + 60)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # attached
        return spy, raw

    def _profiled(self, started: tuple[subprocess.Popen[bytes], Path] | None) -> None:
        """Stop py-spy (it writes its output on SIGINT) and summarize what it sampled."""
        if started is None:
            return
        spy, raw = started
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if not raw.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        if self.args.keep_profile:
            shutil.copyfile(raw, self.args.keep_profile)
        self.profile_text = f"Profile of the {self.args.profile} phase\n" + report_profile(parse_raw(raw),
                                                                                          self.args.top)
        shutil.rmtree(raw.parent, ignore_errors=True)

    def render(self) -> str:
        f = self.figures
        lines = [
            f"One operator, {f['streamgroups']} StreamGroups on one redis-server (resync {f['resync_interval_s']} s, "
            f"{f['entries_per_stream']} entries per stream), {f['machine']['cpus']} CPUs, load average before "
            f"{f['machine']['load_average']}",
            "",
            f"  every group in Redis          {f.get('groups_made_s', '-')} s after the first create (target <= 60)",
            f"  every Deployment              {f.get('deployments_made_s', '-')} s (target <= 60)",
            f"  lag in every status           {f.get('lag_in_every_status_s', '-')} s; per StreamGroup from its "
            f"creation: max {f.get('lag_delay_max_s', '-')} s, p90 {f.get('lag_delay_p90_s', '-')} s, median "
            f"{f.get('lag_delay_p50_s', '-')} s "
            f"(target <= 2 resyncs = {2 * f['resync_interval_s']:g} s)",
            f"  handled (observedGeneration)  per StreamGroup from its creation: max "
            f"{f.get('handled_delay_max_s', '-')} s, p90 {f.get('handled_delay_p90_s', '-')} s, median "
            f"{f.get('handled_delay_p50_s', '-')} s",
            f"  every Deployment scaled       {f.get('scaled_everywhere_s', '-')} s (its status and the Deployment "
            "agree: the start of the steady state)",
            f"  CPU during that burst         {f.get('burst_cpu_percent', '-')} (% of one core)",
            f"  API requests in that burst    {f.get('burst_api_requests', '-')} (the bench's creates included)",
            f"  steady-state operator CPU     {f.get('operator_cpu_percent', '-')} % of one core over "
            f"{f.get('window_s', '-')} s{' (py-spy attached)' if f.get('profiled') else ''} (target <= 25)",
            f"  operator RSS                  {f.get('operator_rss_mb', '-')} MB (target <= 250)",
            f"  redis commands                {f.get('redis_commands_per_s', '-')} /s, from "
            f"{f.get('redis_connections', '-')} connection(s)",
            f"  StreamGroups rewritten        {f.get('streamgroups_rewritten', '-')} while nothing changed (target 0)",
            f"  Deployments rewritten         {f.get('deployments_rewritten', '-')} (target 0)",
            f"  API writes in the window      {f.get('api_writes', {}) or 'none'}",
            f"  API reads per second          {f.get('api_requests_per_s', {}) or 'none'}",
        ]
        if f.get("fields_rewritten"):
            lines.append(f"  fields rewritten              {f['fields_rewritten']}")
        return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.operator_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--streamgroups", type=int, default=1000, help="StreamGroups to create (default 1000)")
    parser.add_argument("--entries", type=int, default=5, help="entries on each stream, so that lag > 0 (default 5)")
    parser.add_argument("--resync", type=float, default=10.0, help="the operator's --resync-interval (default 10)")
    parser.add_argument("--no-autoscaling", dest="autoscaling", action="store_false",
                        help="StreamGroups without autoscaling (replicas from spec.replicas)")
    parser.add_argument("--create-workers", type=int, default=4, help="threads creating StreamGroups (default 4)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to wait once every status shows lag and every Deployment its replicas (default: "
                        "2 resyncs)")
    parser.add_argument("--window", type=float, default=30.0, help="steady-state window in seconds (default 30)")
    parser.add_argument("--timeout", type=float, default=300.0, help="longest wait for the StreamGroups to be made")
    parser.add_argument("--profile", nargs="?", const="steady", choices=("steady", "burst"),
                        help="py-spy on the operator during the steady-state window (default) or during the burst "
                        "of creations (from the first create until every Deployment is scaled)")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second (default 100)")
    parser.add_argument("--profile-all-threads", action="store_true",
                        help="sample every thread py-spy deems running, not only the one holding the GIL (threads "
                        "blocked in a socket read then count as running)")
    parser.add_argument("--keep-profile", metavar="PATH", help="keep py-spy's raw collapsed stacks there")
    parser.add_argument("--top", type=int, default=25, help="functions listed in the profile")
    parser.add_argument("--keep-log", metavar="PATH", help="copy the operator's log there at the end")
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="write the figures as JSON there")
    parser.add_argument("--operator-source", type=Path, metavar="DIR",
                        help="run the operator (and the core) of another version, unpacked in DIR, to compare: "
                        "mkdir DIR && git archive REV operator core | tar -x -C DIR")
    parser.add_argument("--operator-arg", action="append", metavar="ARG",
                        help="one more argument for the operator (repeatable), e.g. --operator-arg=--log-level=warning")
    args = parser.parse_args(argv)
    if args.settle is None:
        args.settle = 2 * args.resync
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind through the finally blocks
    bench = Bench(args)
    try:
        plane = ControlPlane()
    except BinariesMissing as exc:
        print(exc, file=sys.stderr)
        return 1
    redis_server: RedisServer | None = None
    failed: BaseException | None = None
    try:
        plane.start()
        record = os.environ.get(PROCESS_LOG)
        if record:  # the smoke test checks that nothing is left running, the control plane included
            with open(record, "a", encoding="utf-8") as out:
                out.writelines(f"{pid} {psutil.Process(pid).create_time()} {name}\n"
                               for pid, name in zip(plane.pids, ("etcd", "kube-apiserver"), strict=True))
        redis_server = RedisServer()
        bench.run(plane, redis_server)
    except (RuntimeError, TimeoutError, OSError, subprocess.CalledProcessError) as exc:
        failed = exc
    finally:
        if bench.operator is not None:
            if args.keep_log:
                shutil.copyfile(bench.operator.proc.log, args.keep_log)
            if failed is not None:
                print(f"operator log (end):\n{bench.operator.proc.tail(3000)}", file=sys.stderr)
        stop_all()  # the operator before the servers it talks to
        if redis_server is not None:
            redis_server.stop()
        plane.stop()
    print()
    print(bench.render())
    if bench.profile_text:
        print()
        print(bench.profile_text)
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as out:
            json.dump({**bench.figures, "args": vars(args)}, out, indent=2, default=str)
    if failed is not None:
        print(f"\nfailed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
