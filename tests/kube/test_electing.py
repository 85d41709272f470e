"""Two operators, one Lease: only the holder acts, and a new one takes over when it is killed, cut off or stopped.

Each test runs two operator processes (``operator-a`` first, so it leads, then ``operator-b``) with
short durations, and watches the Lease from the test (every version the API server stores, through a
watch) to check, from the times the holders wrote themselves, that no standby took the Lease before
the leader's could have expired. What each process did is read from its own side: its
``streamgroup_operator_leader`` gauge and reconcile counters on ``/metrics``, and its log lines.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.kube.streamgroups import GROUP, PLURAL, VERSION, condition, create, deployment, eventually, get_sg, manifest
from tests.support.kube import ControlPlane
from tests.support.operator_process import OperatorProcess
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy, through

LEASE = "streamgroup-operator"
FAST = {"lease": 3.0, "renew": 2.0, "retry": 0.5}


@dataclass(frozen=True)
class Version:
    """One version of the Lease as the API server stored it, and when the test saw it (monotonic)."""

    seen: float
    holder: str
    acquired: dt.datetime | None
    renewed: dt.datetime | None
    seconds: int | None


class Leases:
    """Every version of the Lease, from a watch running beside the test."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.versions: list[Version] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        version = ""
        while not self._stop.is_set():
            stream = watch.Watch().stream(self.api.list_namespaced_lease, self.namespace,
                                          field_selector=f"metadata.name={LEASE}", resource_version=version,
                                          timeout_seconds=5)
            try:
                for event in stream:
                    lease = event["object"]
                    version = lease.metadata.resource_version
                    spec = lease.spec
                    self.versions.append(Version(time.monotonic(), spec.holder_identity or "", spec.acquire_time,
                                                 spec.renew_time, spec.lease_duration_seconds))
            except ApiException:
                version = ""

    def stop(self) -> None:
        self._stop.set()

    def holder(self) -> str:
        return self.versions[-1].holder if self.versions else ""

    def holders(self) -> list[str]:
        """The holders in turn, each once per turn."""
        turns: list[str] = []
        for v in self.versions:
            if not turns or turns[-1] != v.holder:
                turns.append(v.holder)
        return turns

    def handover(self, old: str, new: str) -> tuple[Version, Version]:
        """The last version ``old`` wrote (a renewal or its release) and the first one ``new`` wrote."""
        first = next(i for i, v in enumerate(self.versions) if v.holder == new)
        before = [v for v in self.versions[:first] if v.holder in (old, "")]
        return before[-1], self.versions[first]


@pytest.fixture
def leases(api_client: client.ApiClient, namespace: str) -> Iterator[Leases]:
    recorder = Leases(api_client, namespace)
    yield recorder
    recorder.stop()


class Operators:
    """The test's operator processes, stopped at its end (their logs printed: pytest shows them on failure)."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.started: list[OperatorProcess] = []

    def start(self, name: str, kubeconfig: Path | None = None, lease: float = FAST["lease"],
              renew: float = FAST["renew"], retry: float = FAST["retry"]) -> OperatorProcess:
        process = OperatorProcess(kubeconfig or self.kubeconfig, [self.namespace], POD_NAME=name,
                                  SG_OPERATOR_LEADER_ELECT_LEASE_DURATION=f"{lease}s",
                                  SG_OPERATOR_LEADER_ELECT_RENEW_DEADLINE=f"{renew}s",
                                  SG_OPERATOR_LEADER_ELECT_RETRY_PERIOD=f"{retry}s")
        self.started.append(process)
        return process.start()

    def stop(self) -> None:
        for process in self.started:
            if process.log.exists():  # not stopped by the test already
                print(f"--- {process.env['POD_NAME']} log (end):\n" + process.tail(60))
            process.stop()


@pytest.fixture
def operators(kubeconfig: Path, namespace: str, streamgroup_crd: None) -> Iterator[Operators]:
    made = Operators(kubeconfig, namespace)
    yield made
    made.stop()


def metric(process: OperatorProcess, name: str) -> float:
    """The sum of a metric's samples on the process's /metrics (0 when it has none)."""
    text = process.get("/metrics")[1]
    return sum(float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def leads(process: OperatorProcess) -> bool:
    return metric(process, "streamgroup_operator_leader") == 1.0


def lines(process: OperatorProcess, message: str) -> list[dict[str, Any]]:
    """The process's JSON log lines with this message."""
    found = []
    for line in process.logs().splitlines():
        if line.startswith("{") and f'"msg":"{message}"' in line:
            found.append(json.loads(line))
    return found


def when(line: dict[str, Any]) -> dt.datetime:
    return dt.datetime.strptime(line["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def identity_of(process: OperatorProcess) -> str:
    [line] = eventually(lambda: lines(process, "became leader"), what=f"{process.env['POD_NAME']} leading")
    return str(line["holder"])


def leader_and_standby(operators: Operators, leases: Leases, **durations: float) -> tuple[OperatorProcess,
                                                                                           OperatorProcess, str]:
    """operator-a leading, then operator-b standing by for it; returns them and a's identity."""
    a = operators.start("operator-a", **durations)
    eventually(lambda: leads(a), what="operator-a leading")
    holder = identity_of(a)
    b = operators.start("operator-b", **durations)
    eventually(lambda: [line for line in lines(b, "standby") if line["holder"] == holder],
               what="operator-b standing by for operator-a")
    assert leases.holder() == holder and holder.startswith("operator-a_")
    return a, b, holder


def exists(apis: Any, namespace: str, name: str) -> bool:
    try:
        deployment(apis, namespace, name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def handled(apis: Any, namespace: str, name: str, generation: int) -> bool:
    sg = get_sg(apis, namespace, name)
    return bool(sg.get("status", {}).get("observedGeneration") == generation
                and condition(sg, "GroupReady").get("status") == "True")


def assert_taken_no_earlier_than_the_lease_allowed(leases: Leases, old: str, new: str, lease: float) -> None:
    """By the clocks the holders wrote with (one machine's): the new one took the Lease a lease after the old
    one's last renewal at the earliest, unless the old one released it first."""
    last, first = leases.handover(old, new)
    assert first.acquired is not None and last.renewed is not None
    if last.holder == "":  # released: taken at once, after the release
        assert first.acquired >= last.renewed
    else:
        gap = (first.acquired - last.renewed).total_seconds()
        assert gap >= lease, f"{new} took the Lease {gap:.3f}s after {old}'s last renewal (lease {lease}s)"


class TestOneLeader:
    def test_of_two_operators_only_the_leaseholder_acts_and_the_standby_does_nothing(
        self, apis: Any, namespace: str, operators: Operators, leases: Leases, redis_server: RedisServer
    ) -> None:
        a, b, holder = leader_and_standby(operators, leases)
        redis_server.client().xadd("orders", {"n": "1"})
        create(apis, namespace, manifest("billing", redis_server.url))
        eventually(lambda: exists(apis, namespace, "billing"), what="the Deployment")
        eventually(lambda: get_sg(apis, namespace, "billing").get("status", {}).get("lag") == 1, what="the lag")
        # Several resyncs of the leader later (its own counter, not a sleep), the standby has still done nothing.
        resyncs = metric(a, "streamgroup_operator_reconciles_total")
        eventually(lambda: metric(a, "streamgroup_operator_reconciles_total") >= resyncs + 5, what="5 resyncs")
        assert leads(a) and not leads(b)
        assert metric(b, "streamgroup_operator_reconciles_total") == 0
        assert not lines(b, "became leader") and "Handler" not in b.logs()
        assert b.get("/readyz") == (200, '{"ok": true, "lease": true}')  # ready to take over
        assert a.get("/readyz") == (200, '{"ok": true, "lease": true}')
        assert leases.holders() == [holder]
        # The standby stopped leaves the Lease alone; the leader goes on.
        assert b.stop() == 0
        assert leases.holders() == [holder]
        renewals = len(leases.versions)
        eventually(lambda: len(leases.versions) >= renewals + 2, what="the leader renewing")
        assert leases.holders() == [holder]


class TestTakingOver:
    def test_a_leader_killed_in_the_middle_of_a_change_is_replaced_within_the_lease_and_the_change_completed(
        self, apis: Any, namespace: str, operators: Operators, leases: Leases, redis_server: RedisServer
    ) -> None:
        # The StreamGroup's Redis, behind a line cut from the start: the leader's change handler connects
        # and waits for an answer (up to its 10 s timeout), with nothing made yet but the finalizer.
        with TcpProxy(redis_server.port, cut=True) as redis_line:
            a, b, holder_a = leader_and_standby(operators, leases)
            create(apis, namespace, manifest("billing", f"redis://{redis_line.address}/0"))
            eventually(lambda: redis_line.accepted >= 1, what="operator-a making the group")
            assert not exists(apis, namespace, "billing")
            assert "observedGeneration" not in get_sg(apis, namespace, "billing").get("status", {})
            assert a.process is not None
            a.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            a.process.wait(10)
            redis_line.mend()
            eventually(lambda: leads(b), what="operator-b leading", timeout=FAST["lease"] + 10)
            took = time.monotonic() - killed
            holder_b = identity_of(b)
            eventually(lambda: exists(apis, namespace, "billing"), what="the Deployment, made by operator-b")
            eventually(lambda: handled(apis, namespace, "billing", 1), what="the change handled by operator-b")
        assert redis_server.client().xinfo_groups("orders")[0]["name"] == b"billing"
        assert metric(b, "streamgroup_operator_reconciles_total") > 0
        assert leases.holders() == [holder_a, holder_b]
        assert_taken_no_earlier_than_the_lease_allowed(leases, holder_a, holder_b, FAST["lease"])
        # Within the lease, counted from the kill, plus the standby's retry and a loaded machine's slack.
        assert took < FAST["lease"] + 2 * FAST["retry"] + 3.0, f"took over {took:.1f}s after the kill"


class TestCutOff:
    def test_a_leader_cut_off_from_the_api_server_stops_before_its_lease_expires_and_the_standby_takes_over(
        self, apis: Any, namespace: str, operators: Operators, leases: Leases, redis_server: RedisServer,
        control_plane: ControlPlane, kubeconfig: Path, tmp_path: Path
    ) -> None:
        with TcpProxy(control_plane.apiserver_port) as api_line:
            a = operators.start("operator-a", kubeconfig=through(api_line, kubeconfig, tmp_path))
            eventually(lambda: leads(a), what="operator-a leading")
            holder_a = identity_of(a)
            b = operators.start("operator-b")
            eventually(lambda: lines(b, "standby"), what="operator-b standing by")
            create(apis, namespace, manifest("billing", redis_server.url))
            eventually(lambda: handled(apis, namespace, "billing", 1), what="the StreamGroup handled by operator-a")
            api_line.cut()
            assert a.process is not None
            assert a.process.wait(FAST["lease"] + 10) == 1
            [lost] = lines(a, "lost leadership")
            assert lost["holder"] == "(unknown)" and "renew deadline" in lost["reason"]
            eventually(lambda: leads(b), what="operator-b leading", timeout=FAST["lease"] + 10)
            holder_b = identity_of(b)
            # operator-b acts: a change made now is its to handle.
            apis.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "billing",
                                                       {"spec": {"replicas": 3}})
            eventually(lambda: deployment(apis, namespace, "billing")["spec"]["replicas"] == 3,
                       what="the change, by operator-b")
        assert leases.holders() == [holder_a, holder_b]
        assert_taken_no_earlier_than_the_lease_allowed(leases, holder_a, holder_b, FAST["lease"])
        # operator-a stopped (and exited) before operator-b started: they never acted at once.
        [became] = lines(b, "became leader")
        last, _ = leases.handover(holder_a, holder_b)
        assert last.renewed is not None
        assert when(lost) < when(became)
        assert (when(lost) - last.renewed).total_seconds() < FAST["lease"], "it acted past its Lease"


class TestHandingOver:
    def test_a_leader_stopped_with_sigterm_releases_the_lease_and_the_standby_takes_over_at_once(
        self, apis: Any, namespace: str, operators: Operators, leases: Leases, redis_server: RedisServer
    ) -> None:
        # A lease of 15 s, as in production: without the release the standby would wait that long.
        durations = {"lease": 15.0, "renew": 10.0, "retry": 0.5}
        a, b, holder_a = leader_and_standby(operators, leases, **durations)
        create(apis, namespace, manifest("billing", redis_server.url))
        eventually(lambda: handled(apis, namespace, "billing", 1), what="the StreamGroup handled by operator-a")
        assert a.process is not None
        a.process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        eventually(lambda: leads(b), what="operator-b leading", timeout=durations["lease"])
        took = time.monotonic() - stopped
        assert a.process.wait(20) == 0
        holder_b = identity_of(b)
        assert took < durations["lease"] / 3, f"took over {took:.1f}s after SIGTERM"
        assert leases.holders() == [holder_a, "", holder_b]
        released, taken = leases.handover(holder_a, holder_b)
        assert released.seconds == 1
        [gave_up] = lines(a, "released the Lease")
        [became] = lines(b, "became leader")
        assert when(gave_up) <= when(became)
        apis.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "billing",
                                                   {"spec": {"replicas": 2}})
        eventually(lambda: deployment(apis, namespace, "billing")["spec"]["replicas"] == 2,
                   what="the change, by operator-b")
        assert taken.holder == holder_b
