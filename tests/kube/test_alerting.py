"""Every shipped alert, fired and resolved in a real Prometheus.

A Prometheus server from Debian's package (tests/support/prometheus.py) scrapes the real operator
process (two of them on one Lease, for the operator's own alerts) and the real sidecar processes
every second and evaluates the chart's own alerting rules, rendered with helm with low thresholds and
short ``for:`` durations (``SHORT``). For each alert a scenario on the real API server and a real
redis-server brings about the symptom the alert is about, waits for the alert to fire in Prometheus,
then removes the cause and waits for it to resolve. The test plays the kubelet: a replica is a Pod
object plus a sidecar process started with the env the operator wrote into the Deployment (see
tests/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
import urllib.error
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from kubernetes import client

from tests.kube.streamgroups import create, deployment, eventually, manifest, sidecar_env
from tests.support.apps import Received, RecordingApp
from tests.support.kube import ControlPlane
from tests.support.operator_process import OperatorProcess
from tests.support.prometheus import PrometheusServer, render_alert_rules
from tests.support.redis_server import RedisServer
from tests.support.sidecar_process import SidecarProcess
from tests.support.tcp_proxy import TcpProxy, through

REPO = Path(__file__).resolve().parents[2]
NAME = "billing"
OPERATOR_JOB = "streamgroup-operator"
SIDECAR_JOB = "streamgroup-sidecar"

# The chart's alert values for these tests: thresholds low enough for a few entries, every `for:`
# and window a few seconds (Prometheus scrapes and evaluates every second, the operator measures
# every 0.5 s).
SHORT = {
    "lagHigh": "20", "lagFor": "2s",
    "pendingHigh": "5", "pendingFor": "2s",
    "oldestPendingSeconds": "2", "oldestPendingFor": "2s",
    "deadLettersWindow": "4s",
    "noConsumerFor": "3s",
    "operatorDownFor": "3s",
    "operatorMultipleLeadersFor": "3s",
}
FIRE = 30.0
"""Seconds an alert may take to fire or resolve: a few scrapes, evaluations and resyncs, with room."""


@pytest.fixture(scope="module")
def alert_rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_alert_rules(tmp_path_factory.mktemp("rules"), SHORT)


@pytest.fixture
def prometheus(alert_rules: Path, operator: OperatorProcess) -> Iterator[PrometheusServer]:
    server = PrometheusServer([alert_rules], {OPERATOR_JOB: [f"127.0.0.1:{operator.port}"], SIDECAR_JOB: []})
    with server:
        yield server
        print("prometheus log (end):\n" + server.logs()[-3000:])  # shown for a failed test only


def group_labels(namespace: str) -> dict[str, str]:
    return {"namespace": namespace, "name": NAME, "stream": "orders", "group": NAME}


class Replicas:
    """Plays the kubelet for the StreamGroup: per replica a Pod object (the operator then counts its
    consumer as live) and a sidecar process with the Deployment's env, scraped by Prometheus."""

    def __init__(self, apis: Any, namespace: str, prometheus: PrometheusServer) -> None:
        self.apis = apis
        self.namespace = namespace
        self.prometheus = prometheus
        self.sidecars: list[SidecarProcess] = []

    def start(self) -> SidecarProcess:
        body = eventually(lambda: deployment(self.apis, self.namespace, NAME), what="the Deployment")
        pod = f"{NAME}-{len(self.sidecars)}"
        self.apis.core.create_namespaced_pod(self.namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(name=pod, labels={"streamgroup.io/name": NAME}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="billing:1")])))
        process = SidecarProcess(sidecar_env(body, pod, {}))
        process.env.update({"SG_HEALTH_HOST": "127.0.0.1", "SG_HEALTH_PORT": str(process.health_port)})
        self.sidecars.append(process.start())
        process.wait_ready()
        self.prometheus.scrape(SIDECAR_JOB, [f"127.0.0.1:{p.health_port}" for p in self.sidecars])
        return process

    def cleanup(self) -> None:
        for process in self.sidecars:
            process.cleanup()


@pytest.fixture
def replicas(apis: Any, namespace: str, prometheus: PrometheusServer) -> Iterator[Replicas]:
    played = Replicas(apis, namespace, prometheus)
    try:
        yield played
    finally:
        played.cleanup()


class Gate:
    """An app behaviour that holds every request until opened (a hung app), then answers 204."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()

    async def __call__(self, _: Received) -> web.StreamResponse:
        await self.opened.wait()
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def producing(r: redis.Redis, per_second: float) -> AsyncIterator[None]:
    """Adds entries to orders at about ``per_second`` while the block runs."""
    async def produce() -> None:
        while True:
            r.xadd("orders", {"n": "1"})
            await asyncio.sleep(1 / per_second)

    task = asyncio.create_task(produce())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def firing(prometheus: PrometheusServer, alert: str, labels: dict[str, str]) -> dict[str, Any]:
    return await asyncio.to_thread(prometheus.wait_firing, alert, labels, FIRE)


async def resolved(prometheus: PrometheusServer, alert: str, labels: dict[str, str]) -> None:
    await asyncio.to_thread(prometheus.wait_resolved, alert, labels, FIRE)


def wait_scraped(prometheus: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    """Until ``expr`` has a value in Prometheus (the operator measured it and Prometheus scraped it)."""
    return eventually(lambda: prometheus.query(expr), timeout=FIRE, what=expr)


def add_at_once(r: redis.Redis, count: int) -> None:
    """``count`` entries in one MULTI/EXEC: a reader blocked on the stream sees them all at once."""
    pipe = r.pipeline(transaction=True)
    for n in range(count):
        pipe.xadd("orders", {"n": str(n)})
    pipe.execute()


def joined(r: redis.Redis) -> None:
    """Until one consumer is in the group (a sidecar's first XREADGROUP makes it, entries or not)."""
    eventually(lambda: r.xinfo_groups("orders")[0]["consumers"] == 1, what="the replica's consumer")


def delivering_to(app: RecordingApp, **spec: Any) -> dict[str, Any]:
    return {"port": app.port, "path": "/events", **spec}


class TestEveryShippedAlertIsCovered:
    def test_each_alert_of_the_chart_has_a_scenario_class_here(self) -> None:
        shipped = re.findall(r"- alert: (\w+)", (REPO / "charts/streamgroup/files/alerts.yaml").read_text())
        assert len(shipped) >= 6
        missing = [name for name in shipped if f"Test{name}" not in globals()]
        assert not missing, f"alerts without a real-Prometheus scenario in {__name__}: {missing}"


class TestStreamGroupLagHigh:
    async def test_fires_while_entries_pile_up_with_no_replica_and_resolves_once_a_replica_drains_them(
        self, apis: Any, namespace: str, redis_server: RedisServer, prometheus: PrometheusServer,
        replicas: Replicas, app: RecordingApp,
    ) -> None:
        labels = group_labels(namespace)
        create(apis, namespace, manifest(NAME, redis_server.url, delivery=delivering_to(app)))
        async with producing(redis_server.client(), per_second=20):
            alert = await firing(prometheus, "StreamGroupLagHigh", labels)
        assert float(alert["value"]) > 20 and alert["labels"]["severity"] == "warning"
        await asyncio.to_thread(replicas.start)
        await resolved(prometheus, "StreamGroupLagHigh", labels)
        assert redis_server.client().xinfo_groups("orders")[0]["lag"] == 0


class TestStreamGroupPendingHigh:
    async def test_fires_while_a_hung_app_holds_entries_and_resolves_once_it_answers(
        self, apis: Any, namespace: str, redis_server: RedisServer, prometheus: PrometheusServer,
        replicas: Replicas, app: RecordingApp,
    ) -> None:
        labels = group_labels(namespace)
        app.behaviour = gate = Gate()
        create(apis, namespace, manifest(NAME, redis_server.url, delivery=delivering_to(app, maxInFlight=10)))
        r = redis_server.client()
        for n in range(10):
            r.xadd("orders", {"n": str(n)})
        await asyncio.to_thread(replicas.start)
        try:
            alert = await firing(prometheus, "StreamGroupPendingHigh", labels)
            assert float(alert["value"]) == 10
            # The replica's own count, scraped from the sidecar, agrees with the operator's.
            await asyncio.to_thread(wait_scraped, prometheus,
                                    f'streamgroup_sidecar_in_flight{{job="{SIDECAR_JOB}"}} == 10')
        finally:
            gate.opened.set()
        await resolved(prometheus, "StreamGroupPendingHigh", labels)
        assert len(app.succeeded()) >= 10


class TestStreamGroupOldestPendingTooOld:
    async def test_fires_while_an_entry_waits_for_its_acknowledgement_and_resolves_once_it_is_acknowledged(
        self, apis: Any, namespace: str, redis_server: RedisServer, prometheus: PrometheusServer,
        replicas: Replicas, app: RecordingApp,
    ) -> None:
        labels = group_labels(namespace)
        app.behaviour = gate = Gate()
        create(apis, namespace, manifest(NAME, redis_server.url, delivery=delivering_to(app)))
        redis_server.client().xadd("orders", {"n": "1"})
        await asyncio.to_thread(replicas.start)
        try:
            alert = await firing(prometheus, "StreamGroupOldestPendingTooOld", labels)
            assert float(alert["value"]) > 2
            assert len(app.received) == 1 and not app.answered, "the entry was in the app's hands all along"
        finally:
            gate.opened.set()
        await resolved(prometheus, "StreamGroupOldestPendingTooOld", labels)
        assert redis_server.client().xpending("orders", NAME)["pending"] == 0


class TestStreamGroupDeadLettersGrowing:
    async def test_fires_when_entries_are_dead_lettered_and_resolves_a_window_after_the_last_one(
        self, apis: Any, namespace: str, redis_server: RedisServer, prometheus: PrometheusServer,
        replicas: Replicas, app: RecordingApp,
    ) -> None:
        labels = group_labels(namespace)
        app.behaviour = lambda _: web.Response(status=422)
        create(apis, namespace, manifest(NAME, redis_server.url,
                                         delivery=delivering_to(app, deadLetterStatuses=[422])))
        await asyncio.to_thread(replicas.start)
        # Prometheus must have seen the empty dead-letter stream first: growth is a change it measures.
        await asyncio.to_thread(wait_scraped, prometheus,
                                f'streamgroup_dead_letter_length{{namespace="{namespace}"}} == 0')
        r = redis_server.client()
        for n in range(3):
            r.xadd("orders", {"n": str(n)})
        alert = await firing(prometheus, "StreamGroupDeadLettersGrowing", labels)
        assert float(alert["value"]) > 0
        await asyncio.to_thread(wait_scraped, prometheus,
                                'streamgroup_sidecar_dead_letters_total{reason="status-422", stream="orders"} == 3')
        # Nothing else changes: it resolves because the window (4 s) slides past the last dead letter.
        await resolved(prometheus, "StreamGroupDeadLettersGrowing", labels)
        assert r.xlen("orders:dead") == 3


class TestStreamGroupNoConsumerReading:
    @pytest.mark.parametrize("start_from", ["0", "$"], ids=["from-the-start", "new-entries-of-a-used-stream"])
    async def test_fires_for_a_group_nobody_ever_read_whose_pods_never_start_and_resolves_once_one_reads(
        self, apis: Any, namespace: str, redis_server: RedisServer, prometheus: PrometheusServer,
        replicas: Replicas, app: RecordingApp, start_from: str,
    ) -> None:
        """Redis reports entries-read as nil for a group that has never read (with "$" on a stream that
        has entries, lag too), so the alert cannot rest on the rate of entries read alone."""
        labels = group_labels(namespace)
        r = redis_server.client()
        for n in range(5):
            r.xadd("orders", {"old": str(n)})
        create(apis, namespace, manifest(NAME, redis_server.url, startFrom=start_from, delivery=delivering_to(app)))
        eventually(lambda: r.xinfo_groups("orders"), what="the group")
        for n in range(5):
            r.xadd("orders", {"new": str(n)})
        alert = await firing(prometheus, "StreamGroupNoConsumerReading", labels)
        assert alert["labels"]["severity"] == "critical"
        assert r.xinfo_groups("orders")[0]["entries-read"] is None, "the case Redis cannot count"
        await asyncio.to_thread(replicas.start)
        await resolved(prometheus, "StreamGroupNoConsumerReading", labels)
        expected = 10 if start_from == "0" else 5  # "$": only what came after the group was made
        await app.wait_until(lambda: len(app.succeeded()) >= expected)
        assert len(app.succeeded()) == expected

    async def test_fires_while_every_replica_is_stuck_and_resolves_once_they_read_again(
        self, apis: Any, namespace: str, redis_server: RedisServer, prometheus: PrometheusServer,
        replicas: Replicas, app: RecordingApp,
    ) -> None:
        """The replica has joined the group before any entry comes: the alert fires because nothing
        more is read, not because no consumer exists."""
        labels = group_labels(namespace)
        app.behaviour = gate = Gate()
        create(apis, namespace, manifest(NAME, redis_server.url, delivery=delivering_to(app, maxInFlight=2)))
        r = redis_server.client()
        await asyncio.to_thread(replicas.start)
        await asyncio.to_thread(joined, r)
        add_at_once(r, 10)  # the replica takes 2, holds them, and reads no more
        try:
            await firing(prometheus, "StreamGroupNoConsumerReading", labels)
            assert await asyncio.to_thread(prometheus.query, f'streamgroup_consumers{{namespace="{namespace}"}} == 1')
        finally:
            gate.opened.set()
        await resolved(prometheus, "StreamGroupNoConsumerReading", labels)

    async def test_stays_quiet_for_a_replica_that_reads_steadily_behind_a_faster_producer(
        self, apis: Any, namespace: str, redis_server: RedisServer, prometheus: PrometheusServer,
        replicas: Replicas, app: RecordingApp,
    ) -> None:
        """A group made at "$" on a stream with entries and reading behind its producer: Redis reports
        entries-read as nil all along (it cannot count from a position in the middle of the stream),
        yet someone reads, so the alert must not fire."""

        async def slow(_: Received) -> web.StreamResponse:
            await asyncio.sleep(0.1)
            return web.Response(status=204)

        labels = group_labels(namespace)
        app.behaviour = slow
        r = redis_server.client()
        r.xadd("orders", {"old": "1"})
        create(apis, namespace, manifest(NAME, redis_server.url, startFrom="$",
                                         delivery=delivering_to(app, maxInFlight=2)))
        eventually(lambda: r.xinfo_groups("orders"), what="the group")
        await asyncio.to_thread(replicas.start)
        await asyncio.to_thread(joined, r)  # no moment with entries waiting and no consumer
        add_at_once(r, 20)  # the replica's first read ends in the middle of them: Redis stops counting
        async with producing(r, per_second=40):
            await app.wait_until(lambda: len(app.succeeded()) >= 5)
            # Were the expression true, the alert would be pending within an evaluation or two.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                assert not await asyncio.to_thread(prometheus.alerts, "StreamGroupNoConsumerReading", labels)
                await asyncio.sleep(0.3)
            behind = await asyncio.to_thread(
                prometheus.query, f'min_over_time(streamgroup_lag{{namespace="{namespace}"}}[5s]) > 0')
        assert behind, "the group was behind all along: the alert had its chance"
        assert r.xinfo_groups("orders")[0]["entries-read"] is None, "the case Redis cannot count"


class Operators:
    """Operator processes on one Lease in the test's namespace, each a target of the operator job (as the
    chart's two pods are behind its ServiceMonitor), stopped at the test's end (their logs printed: pytest
    shows them for a failed test). Each is named by ``POD_NAME``, which starts its Lease identity."""

    def __init__(self, kubeconfig: Path, namespace: str, prometheus: PrometheusServer) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.prometheus = prometheus
        self.started: list[OperatorProcess] = []

    def start(self, name: str, kubeconfig: Path | None = None, lease: float = 3.0, renew: float = 2.0,
              retry: float = 0.5, **env: str) -> OperatorProcess:
        process = OperatorProcess(kubeconfig or self.kubeconfig, [self.namespace], POD_NAME=name,
                                  SG_OPERATOR_LEADER_ELECT_LEASE_DURATION=f"{lease}s",
                                  SG_OPERATOR_LEADER_ELECT_RENEW_DEADLINE=f"{renew}s",
                                  SG_OPERATOR_LEADER_ELECT_RETRY_PERIOD=f"{retry}s", **env)
        self.started.append(process)
        self.prometheus.scrape(OPERATOR_JOB, [target(p) for p in self.started])
        return process.start()

    def stop(self) -> None:
        for process in self.started:
            if process.log.exists():  # not stopped by the test already
                print(f"--- {process.env['POD_NAME']} log (end):\n" + process.tail(60))
            if process.process is not None and process.process.poll() is None:
                process.process.send_signal(signal.SIGCONT)  # a frozen one must be able to stop
            process.stop()


@pytest.fixture
def bare_prometheus(alert_rules: Path) -> Iterator[PrometheusServer]:
    """A Prometheus with no operator target yet: the test points the operator job at the processes it starts."""
    server = PrometheusServer([alert_rules], {OPERATOR_JOB: [], SIDECAR_JOB: []})
    with server:
        yield server
        print("prometheus log (end):\n" + server.logs()[-3000:])


@pytest.fixture
def operators(kubeconfig: Path, namespace: str, streamgroup_crd: None,
              bare_prometheus: PrometheusServer) -> Iterator[Operators]:
    made = Operators(kubeconfig, namespace, bare_prometheus)
    try:
        yield made
    finally:
        made.stop()


def target(process: OperatorProcess) -> str:
    return f"127.0.0.1:{process.port}"


def leads(process: OperatorProcess) -> bool:
    """The process's own ``streamgroup_operator_leader`` gauge, from its /metrics, is 1."""
    text = process.get("/metrics")[1]
    return re.search(r"^streamgroup_operator_leader 1\.0$", text, re.M) is not None


def firing_with_value(prometheus: PrometheusServer, alert: str, value: float) -> dict[str, Any]:
    """The alert firing with this value (the instances it counts all scraped)."""
    def found() -> list[dict[str, Any]]:
        return [a for a in prometheus.alerts(alert) if a["state"] == "firing" and float(a["value"]) == value]
    return eventually(found, timeout=FIRE, what=f"{alert} firing with the value {value:g}")[0]


def readiness(process: OperatorProcess) -> int:
    try:
        return process.get("/readyz")[0]
    except urllib.error.HTTPError as exc:
        return exc.code


def leader_and_standby(operators: Operators, prometheus: PrometheusServer, kubeconfig: Path | None = None,
                       lease: float = 3.0, renew: float = 2.0) -> tuple[OperatorProcess, OperatorProcess]:
    """operator-a leading, operator-b standing by, both scraped, and StreamGroupOperatorDown quiet."""
    a = operators.start("operator-a", kubeconfig, lease=lease, renew=renew)
    eventually(lambda: leads(a), what="operator-a leading")
    b = operators.start("operator-b", kubeconfig, lease=lease, renew=renew)
    eventually(lambda: '"msg":"standby"' in b.logs(), what="operator-b standing by")
    wait_scraped(prometheus, f'sum(streamgroup_operator_leader{{job="{OPERATOR_JOB}"}}) == 1 '
                             f'and count(up{{job="{OPERATOR_JOB}"}} == 1) == 2')
    prometheus.wait_resolved("StreamGroupOperatorDown", timeout=FIRE)
    return a, b


class TestStreamGroupOperatorDown:
    """Two operators on one Lease, as the chart runs them: the alert follows leadership, not targets."""

    def test_fires_while_every_operator_is_stopped_and_resolves_once_one_runs_again(
        self, operators: Operators, bare_prometheus: PrometheusServer
    ) -> None:
        a, b = leader_and_standby(operators, bare_prometheus)
        assert b.stop() == 0
        assert a.stop() == 0
        alert = bare_prometheus.wait_firing("StreamGroupOperatorDown", timeout=FIRE)
        assert alert["labels"]["severity"] == "critical"
        assert float(alert["value"]) == 0, "no instance up"
        a.start()
        eventually(lambda: leads(a), what="operator-a leading again")
        bare_prometheus.wait_resolved("StreamGroupOperatorDown", timeout=FIRE)

    def test_fires_while_both_operators_answer_but_cannot_reach_the_lease_and_resolves_once_one_leads(
        self, operators: Operators, bare_prometheus: PrometheusServer, control_plane: ControlPlane,
        kubeconfig: Path, tmp_path: Path,
    ) -> None:
        """The case a target-down alert misses: the API server out of both pods' reach, the leader exits (it
        could not renew) and comes back as a standby, as its pod restarts it; both healthy, nobody leading."""
        with TcpProxy(control_plane.apiserver_port) as api_line:
            a, b = leader_and_standby(operators, bare_prometheus, through(api_line, kubeconfig, tmp_path))
            api_line.cut()
            assert a.process is not None
            assert a.process.wait(FIRE) == 1, "lost leadership"
            a.start()  # the kubelet restarting the container
            alert = firing_with_value(bare_prometheus, "StreamGroupOperatorDown", 2)
            assert alert["labels"]["severity"] == "critical"
            assert a.healthy() and b.healthy() and not leads(a) and not leads(b)
            eventually(lambda: readiness(a) == readiness(b) == 503, what="neither reaching the Lease")
            api_line.mend()
            eventually(lambda: leads(a) or leads(b), timeout=FIRE, what="one of them leading")
            bare_prometheus.wait_resolved("StreamGroupOperatorDown", timeout=FIRE)
            assert [leads(a), leads(b)].count(True) == 1

    def test_fires_while_a_frozen_leader_keeps_the_standby_waiting_and_resolves_once_the_standby_takes_over(
        self, operators: Operators, bare_prometheus: PrometheusServer
    ) -> None:
        """SIGSTOP: the leader's target stops answering and it renews no more, but for the standby its Lease
        runs until it has seen it unchanged for the lease duration (15 s, the chart's default): a leader
        gone and nobody leading, though one pod is healthy. Then the standby leads, the old one still frozen."""
        a, b = leader_and_standby(operators, bare_prometheus, lease=15.0, renew=10.0)
        assert a.process is not None
        a.process.send_signal(signal.SIGSTOP)
        try:
            alert = bare_prometheus.wait_firing("StreamGroupOperatorDown", timeout=FIRE)
            assert float(alert["value"]) == 1, "the standby up"
            eventually(lambda: leads(b), timeout=FIRE, what="operator-b taking the Lease over")
            bare_prometheus.wait_resolved("StreamGroupOperatorDown", timeout=FIRE)
            assert a.process.poll() is None
            assert bare_prometheus.query(f'up{{job="{OPERATOR_JOB}", instance="{target(a)}"}} == 0'), \
                "operator-a still frozen"
        finally:
            a.process.send_signal(signal.SIGCONT)


class TestStreamGroupOperatorMultipleLeaders:
    def test_fires_while_two_operators_lead_on_two_leases_and_resolves_once_one_stops(
        self, operators: Operators, bare_prometheus: PrometheusServer
    ) -> None:
        """A split brain as it can happen: the second operator on a Lease of another name, so both lead."""
        a = operators.start("operator-a")
        b = operators.start("operator-b", SG_OPERATOR_LEADER_ELECT_LEASE_NAME="streamgroup-operator-other")
        eventually(lambda: leads(a) and leads(b), what="both leading")
        alert = bare_prometheus.wait_firing("StreamGroupOperatorMultipleLeaders", timeout=FIRE)
        assert alert["labels"]["severity"] == "warning"
        assert float(alert["value"]) == 2
        assert b.stop() == 0
        bare_prometheus.wait_resolved("StreamGroupOperatorMultipleLeaders", timeout=FIRE)
        assert leads(a)
