"""Leader election's pure decisions: what to write, when to wait, when to stop, and who and where we are.

The last class runs the decisions as candidates would, against an in-memory Lease with optimistic
concurrency, slow and lost requests and killed processes: at no moment do two candidates act.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import pytest

from streamgroup_operator.config import ConfigError, ElectionSettings, parse_settings
from streamgroup_operator.electing import (
    SERVICE_ACCOUNT_NAMESPACE,
    Act,
    Lease,
    Seen,
    Terms,
    deadline,
    decide,
    identity,
    lease_namespace,
    micro_time,
    observe,
    released,
)

TERMS = Terms(lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)
WALL = dt.datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=dt.UTC)
STAMP = "2026-12-01T10:00:00.123456Z"


def lease(holder: str, version: str = "1", duration: int | None = 15, transitions: int = 0) -> Lease:
    return Lease(version, holder, duration, "2026-11-30T08:00:00.000000Z", "2026-11-30T08:00:00.000000Z",
                 transitions)


class TestDeciding:
    def test_without_a_lease_we_create_it_held_by_us(self) -> None:
        decision = decide(Seen(None, 0.0), "me", 0.0, WALL, TERMS)
        assert decision.act is Act.CREATE and decision.holder == "me"
        assert decision.spec == {"holderIdentity": "me", "leaseDurationSeconds": 15, "acquireTime": STAMP,
                                 "renewTime": STAMP, "leaseTransitions": 0}

    def test_our_own_lease_is_renewed_keeping_when_we_acquired_it_and_the_transitions(self) -> None:
        decision = decide(Seen(lease("me", transitions=4), 100.0), "me", 100.0, WALL, TERMS)
        assert decision.act is Act.RENEW and decision.spec is not None
        assert decision.spec["renewTime"] == STAMP
        assert decision.spec["acquireTime"] == "2026-11-30T08:00:00.000000Z"
        assert decision.spec["leaseTransitions"] == 4

    def test_anothers_lease_is_waited_for_until_we_have_seen_it_unchanged_for_its_duration(self) -> None:
        seen = Seen(lease("other", transitions=2), 100.0)
        waiting = decide(seen, "me", 114.9, WALL, TERMS)
        assert waiting.act is Act.WAIT and waiting.holder == "other" and waiting.spec is None
        assert waiting.expires == 115.0
        taking = decide(seen, "me", 115.0, WALL, TERMS)
        assert taking.act is Act.ACQUIRE and taking.holder == "me" and taking.spec is not None
        assert taking.spec["holderIdentity"] == "me" and taking.spec["leaseTransitions"] == 3
        assert taking.spec["acquireTime"] == taking.spec["renewTime"] == STAMP

    def test_the_times_written_in_the_lease_are_never_trusted_only_our_own_clock(self) -> None:
        # Renewed "a day ago" by the holder's clock, but we only just saw it: it is valid for us.
        assert decide(Seen(lease("other"), 500.0), "me", 500.0, WALL, TERMS).act is Act.WAIT

    def test_the_duration_is_the_one_the_lease_says_or_ours_when_it_says_none(self) -> None:
        assert decide(Seen(lease("other", duration=1), 0.0), "me", 1.0, WALL, TERMS).act is Act.ACQUIRE
        assert decide(Seen(lease("other", duration=None), 0.0), "me", 14.0, WALL, TERMS).act is Act.WAIT
        assert decide(Seen(lease("other", duration=None), 0.0), "me", 15.0, WALL, TERMS).act is Act.ACQUIRE

    def test_a_released_lease_is_taken_at_once(self) -> None:
        decision = decide(Seen(lease("", duration=1, transitions=7), 50.0), "me", 50.0, WALL, TERMS)
        assert decision.act is Act.ACQUIRE and decision.spec is not None
        assert decision.spec["leaseTransitions"] == 8

    def test_the_lease_says_whole_seconds_never_fewer_than_the_duration(self) -> None:
        assert Terms(2.5, 2.0, 0.5).lease_seconds == 3
        assert Terms(0.2, 0.1, 0.05).lease_seconds == 1
        assert decide(Seen(None, 0.0), "me", 0.0, WALL, Terms(2.5, 2.0, 0.5)).spec == {
            "holderIdentity": "me", "leaseDurationSeconds": 3, "acquireTime": STAMP, "renewTime": STAMP,
            "leaseTransitions": 0}

    def test_times_are_written_as_kubernetes_micro_times_in_utc(self) -> None:
        assert micro_time(dt.datetime(2026, 12, 1, 11, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))) == (
            "2026-12-01T10:00:00.000005Z")


class TestObserving:
    def test_the_clock_restarts_only_when_the_lease_changes(self) -> None:
        first = observe(None, lease("other", version="7"), 10.0)
        assert first == Seen(lease("other", version="7"), 10.0)
        assert observe(first, lease("other", version="7"), 12.0) is first
        assert observe(first, lease("other", version="8"), 12.0) == Seen(lease("other", version="8"), 12.0)
        assert observe(first, None, 13.0) == Seen(None, 13.0)

    def test_a_lease_is_read_from_its_json(self) -> None:
        body = {"metadata": {"name": "sg", "resourceVersion": "42"},
                "spec": {"holderIdentity": "pod-a_1f2e", "leaseDurationSeconds": 15, "acquireTime": "a",
                         "renewTime": "r", "leaseTransitions": 3}}
        assert Lease.of(body) == Lease("42", "pod-a_1f2e", 15, "a", "r", 3)
        assert Lease.of({"metadata": {"resourceVersion": "1"}, "spec": {}}) == Lease("1", "", None, None, None, 0)


class TestReleasing:
    def test_a_released_lease_has_no_holder_and_lasts_one_second(self) -> None:
        assert released(lease("me", transitions=5), WALL) == {
            "holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": STAMP, "renewTime": STAMP,
            "leaseTransitions": 5}


class TestStopping:
    @pytest.mark.parametrize("terms", [TERMS, Terms(3.0, 2.0, 0.5), Terms(2.0, 1.9, 0.1)])
    def test_a_leader_stops_before_any_standby_may_take_over(self, terms: Terms) -> None:
        # A standby sees a renewal no earlier than it was sent; it takes over a lease later at the soonest.
        for sent in (0.0, 7.5, 1e6):
            assert deadline(sent, terms) < sent + terms.lease_duration
            assert decide(Seen(lease("leader", duration=terms.lease_seconds), sent), "standby",
                          deadline(sent, terms), WALL, terms).act is Act.WAIT


class TestWhoAndWhere:
    def test_the_namespace_given_wins_then_the_pods_then_the_service_accounts(self) -> None:
        def files(found: str | None) -> Callable[[str], str | None]:
            return lambda path: found if path == SERVICE_ACCOUNT_NAMESPACE else None

        given = ElectionSettings(namespace="ops")
        assert lease_namespace(given, {"POD_NAMESPACE": "pods"}, files("accounts")) == "ops"
        assert lease_namespace(ElectionSettings(), {"POD_NAMESPACE": "pods"}, files("accounts")) == "pods"
        assert lease_namespace(ElectionSettings(), {}, files("accounts\n")) == "accounts"

    def test_no_namespace_anywhere_is_one_line_naming_the_flag_and_the_way_out(self) -> None:
        with pytest.raises(ConfigError) as info:
            lease_namespace(ElectionSettings(), {"POD_NAMESPACE": " "}, lambda _: None)
        message = str(info.value)
        assert "\n" not in message
        assert "--leader-elect-namespace" in message and "--leader-elect false" in message

    def test_the_identity_is_the_pods_name_or_the_hosts_with_a_random_suffix(self) -> None:
        assert identity({"POD_NAME": "sg-operator-7d9f"}, "host", "ab12") == "sg-operator-7d9f_ab12"
        assert identity({}, "host", "ab12") == "host_ab12"
        assert identity({"POD_NAME": "p"}) != identity({"POD_NAME": "p"})


class TestSettings:
    def test_on_by_default_with_client_gos_durations(self) -> None:
        election = parse_settings([], {}).election
        assert election == ElectionSettings(True, None, "streamgroup-operator", 15.0, 10.0, 2.0)

    def test_flags_and_variables(self) -> None:
        election = parse_settings(
            ["--leader-elect-lease-duration", "3s", "--leader-elect-renew-deadline", "2s"],
            {"SG_OPERATOR_LEADER_ELECT_RETRY_PERIOD": "500ms", "SG_OPERATOR_LEADER_ELECT_NAMESPACE": "ops",
             "SG_OPERATOR_LEADER_ELECT_LEASE_NAME": "sg-a", "SG_OPERATOR_LEADER_ELECT_LEASE_DURATION": "60"}).election
        assert election == ElectionSettings(True, "ops", "sg-a", 3.0, 2.0, 0.5)
        assert parse_settings(["--leader-elect", "false"], {}).election.enabled is False
        assert parse_settings([], {"SG_OPERATOR_LEADER_ELECT": "FALSE"}).election.enabled is False

    @pytest.mark.parametrize("argv, named", [
        (["--leader-elect", "yes"], "--leader-elect / SG_OPERATOR_LEADER_ELECT"),
        (["--leader-elect-lease-name", "Not_A_Name"], "--leader-elect-lease-name"),
        (["--leader-elect-renew-deadline", "15s"], "must be shorter than --leader-elect-lease-duration"),
        (["--leader-elect-retry-period", "10s"], "must be shorter than --leader-elect-renew-deadline"),
    ])
    def test_bad_values_are_refused_naming_the_flag(self, argv: list[str], named: str) -> None:
        with pytest.raises(ConfigError, match=named):
            parse_settings(argv, {})

    def test_durations_are_not_checked_against_each_other_without_election(self) -> None:
        settings = parse_settings(["--leader-elect", "false", "--leader-elect-renew-deadline", "1m"], {})
        assert settings.election.enabled is False


# --- candidates against an in-memory Lease --------------------------------------------------


@dataclass
class Store:
    """The API server's side: one Lease, replaced only at the resourceVersion it has."""

    body: dict[str, Any] | None = None
    versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def read(self) -> dict[str, Any] | None:
        return dict(self.body) if self.body is not None else None

    def write(self, spec: dict[str, Any], version: str | None) -> dict[str, Any] | None:
        current = self.body["metadata"]["resourceVersion"] if self.body is not None else None
        if current != version:
            return None  # 409
        self.body = {"metadata": {"resourceVersion": str(next(self.versions))}, "spec": spec}
        return dict(self.body)


LOST = object()


@dataclass
class Run:
    """One candidate process: when it acted, from learning it leads until it stopped."""

    me: str
    acting: list[tuple[float, float]] = field(default_factory=list)
    since: float | None = None
    deadline: float = 0.0
    dead: bool = False


Step = Generator[tuple[str, Any], Any, None]


class Simulation:
    """Discrete events; every request reaches the store after a random delay and may lose its reply."""

    def __init__(self, seed: int, terms: Terms, end: float, delays: tuple[float, ...], loss: float,
                 kills: float) -> None:
        self.random = random.Random(seed)
        self.terms = terms
        self.end = end
        self.delays = delays
        self.loss = loss
        self.kills = kills
        self.now = 0.0
        self.store = Store()
        self.queue: list[tuple[float, int, Callable[[], None]]] = []
        self.order = itertools.count()
        self.runs: list[Run] = []
        self.names = itertools.count()

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (when, next(self.order), action))

    def delay(self) -> float:
        return self.random.choice(self.delays)

    def start(self, me: str) -> None:
        run = Run(me)
        self.runs.append(run)
        self.step(run, self.candidate(run), None)

    def stop(self, run: Run, at: float) -> None:
        """The process ends (killed, or leadership lost); its Deployment starts a new one a second later."""
        if run.since is not None:
            run.acting.append((run.since, min(at, run.deadline)))
            run.since = None
        run.dead = True
        self.at(self.now + 1.0, lambda: self.start(f"c{next(self.names)}"))

    def step(self, run: Run, steps: Step, value: Any) -> None:
        if run.dead:
            return
        # The watchdog: a leader whose deadline passed while it waited has stopped (and exited) then.
        if run.since is not None and self.now > run.deadline:
            self.stop(run, run.deadline)
            return
        try:
            kind, arg = steps.send(value)
        except StopIteration:
            return
        if kind == "sleep":
            self.at(self.now + arg, lambda: self.step(run, steps, None))
        else:  # a request reaches the store after a delay, even after its caller gave up; its reply may be lost
            operation = arg
            answered = [False]

            def resume(reply: Any) -> None:
                if not answered[0]:
                    answered[0] = True
                    self.step(run, steps, reply)

            def serve() -> None:
                reply = operation()
                if self.random.random() >= self.loss:
                    self.at(self.now + self.delay(), lambda: resume(reply))

            self.at(self.now + self.delay(), serve)
            self.at(self.now + self.terms.renew_deadline, lambda: resume(LOST))

    def candidate(self, run: Run) -> Step:
        """What :class:`streamgroup_operator.electing.Elector` does, on this simulation's clock."""
        seen: Seen | None = None
        body: dict[str, Any] | None = None
        leading = False
        while True:
            fresh = not (leading and body is not None)
            for attempt in range(2):
                if fresh:
                    reply = yield ("request", self.store.read)
                    if reply is LOST:
                        break
                    body = reply
                    seen = observe(seen, Lease.of(body) if body is not None else None, self.now)
                assert seen is not None
                sent = self.now
                decision = decide(seen, run.me, sent, WALL, self.terms)
                if decision.act is Act.WAIT:
                    if leading:
                        self.stop(run, self.now)
                        return
                    break
                version = body["metadata"]["resourceVersion"] if body is not None else None
                spec = decision.spec
                reply = yield ("request", lambda spec=spec, version=version: self.store.write(spec, version))
                if reply is LOST:
                    break
                if reply is None:  # 409
                    if attempt:
                        break
                    fresh = True
                    continue
                body = reply
                seen = observe(seen, Lease.of(body), self.now)
                run.deadline = max(run.deadline, deadline(sent, self.terms))
                if not leading:
                    leading = True
                    run.since = self.now
                break
            yield ("sleep", self.terms.retry_period * (1.0 if leading else self.random.uniform(1.0, 1.2)))

    def play(self, candidates: int) -> list[Run]:
        for _ in range(candidates):
            self.start(f"c{next(self.names)}")
        while self.queue:
            when, _, action = heapq.heappop(self.queue)
            if when > self.end:
                break
            self.now = when
            action()
            if self.random.random() < self.kills:  # now and then a process is killed
                alive = [r for r in self.runs if not r.dead]
                if alive:
                    self.stop(self.random.choice(alive), self.now)
        for run in self.runs:
            if run.since is not None:
                run.acting.append((run.since, min(self.end, run.deadline)))
        return self.runs


def acting(runs: list[Run]) -> list[tuple[float, float, str]]:
    """Every span of acting, by start; they must not overlap."""
    spans = sorted((start, stop, run.me) for run in runs for start, stop in run.acting)
    for (_, stop, one), (start, _, other) in itertools.pairwise(spans):
        assert stop <= start, f"{one} acted until {stop:.3f} and {other} from {start:.3f}"
    return spans


class TestNoTwoActAtOnce:
    @pytest.mark.parametrize("seed", range(40))
    def test_candidates_with_slow_and_lost_requests_and_kills_never_act_at_once(self, seed: int) -> None:
        # A hostile network: a fifth of the messages take 60% of the renew deadline, a tenth of the replies
        # are lost (their writes may still have landed), processes are killed and replaced.
        terms = Terms(3.0, 2.0, 0.5)
        runs = Simulation(seed, terms, end=600.0, delays=(0.001, 0.01, 0.1, 0.5, 1.2), loss=0.1,
                          kills=0.002).play(candidates=3)
        spans = acting(runs)
        assert sum(stop - start for start, stop, _ in spans) > 600.0 * 0.1, "hardly anyone ever led"

    @pytest.mark.parametrize("seed", range(5))
    def test_on_a_calm_network_the_first_leader_keeps_leading(self, seed: int) -> None:
        runs = Simulation(seed, Terms(3.0, 2.0, 0.5), end=600.0, delays=(0.001, 0.005, 0.02), loss=0.0,
                          kills=0.0).play(candidates=3)
        [(start, stop, _)] = acting(runs)
        assert start < 0.1 and stop >= 599.0
