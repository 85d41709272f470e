"""Which Events the operator writes: one per incident with a growing count, written at most once per interval,
and the words of a rescale. Pure bookkeeping, no API server (tests/kube/test_reporting.py has that)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Mapping

from streamgroup_operator.conditions import REDIS_REACHABLE, Condition
from streamgroup_operator.recording import (
    GROUP_LOST,
    REDIS_AUTHENTICATION_FAILED,
    REDIS_REASONS,
    REDIS_UNREACHABLE,
    Incident,
    Ref,
    Write,
    confirm,
    count_patch,
    event_body,
    observe,
    redis_problem,
    rescale_message,
)
from streamgroup_operator.scaling import Autoscaling, explain

REPEAT = 60.0
DOWN = {REDIS_UNREACHABLE: "Redis unreachable: Error 111"}


class Ledger:
    """Observations in time, the way the Recorder makes them: every write succeeds unless told otherwise."""

    def __init__(self) -> None:
        self.incidents: dict[str, Incident] = {}
        self.names = (f"billing.{n:x}" for n in itertools.count(1))

    def see(self, now: float, found: Mapping[str, str], checked: Collection[str] = REDIS_REASONS,
            written: Callable[[Write], bool] = lambda write: True) -> list[Write]:
        self.incidents, writes = observe(self.incidents, checked, found, now, f"t{now:g}", REPEAT,
                                         lambda: next(self.names))
        for write in writes:
            if written(write):
                self.incidents = confirm(self.incidents, write.incident)
        return writes


def shape(writes: list[Write]) -> list[tuple[str, str, int, bool]]:
    return [(w.incident.name, w.incident.reason, w.incident.count, w.create) for w in writes]


class TestOneEventPerIncident:
    def test_the_first_observation_creates_the_event_at_once(self) -> None:
        ledger = Ledger()
        [write] = ledger.see(0, DOWN)
        assert write.create and write.incident.count == 1 and write.incident.message == "Redis unreachable: Error 111"
        assert (write.incident.first, write.incident.last, write.incident.type) == ("t0", "t0", "Warning")

    def test_while_it_lasts_observations_are_counted_in_memory_and_written_once_per_interval(self) -> None:
        ledger = Ledger()
        ledger.see(0, DOWN)
        quiet = [ledger.see(t, DOWN) for t in (10, 20, 30, 40, 50)]
        assert quiet == [[]] * 5, "no API call during the interval"
        [write] = ledger.see(60, DOWN)
        assert shape([write]) == [("billing.1", REDIS_UNREACHABLE, 7, False)]
        assert (write.incident.first, write.incident.last) == ("t0", "t60")
        assert ledger.see(70, DOWN) == []
        assert shape(ledger.see(120, DOWN)) == [("billing.1", REDIS_UNREACHABLE, 9, False)]

    def test_the_end_of_an_incident_writes_its_final_count_and_a_later_one_is_a_new_event(self) -> None:
        ledger = Ledger()
        ledger.see(0, DOWN)
        ledger.see(10, DOWN)
        assert shape(ledger.see(20, {})) == [("billing.1", REDIS_UNREACHABLE, 2, False)]
        assert ledger.incidents == {}
        assert ledger.see(30, {}) == [], "nothing open, nothing written"
        assert shape(ledger.see(40, DOWN)) == [("billing.2", REDIS_UNREACHABLE, 1, True)]

    def test_an_incident_that_ends_with_its_count_written_costs_nothing_more(self) -> None:
        ledger = Ledger()
        ledger.see(0, DOWN)
        assert ledger.see(10, {}) == []

    def test_a_different_failure_is_a_different_incident(self) -> None:
        ledger = Ledger()
        ledger.see(0, DOWN)
        refused = {REDIS_AUTHENTICATION_FAILED: "Redis refused the credentials: WRONGPASS"}
        assert shape(ledger.see(10, refused)) == [("billing.2", REDIS_AUTHENTICATION_FAILED, 1, True)]
        assert set(ledger.incidents) == {REDIS_AUTHENTICATION_FAILED}

    def test_the_latest_message_is_written_with_the_count(self) -> None:
        ledger = Ledger()
        ledger.see(0, DOWN)
        [write] = ledger.see(60, {REDIS_UNREACHABLE: "Redis unreachable: Timeout connecting"})
        assert count_patch(write.incident) == {"count": 2, "lastTimestamp": "t60",
                                               "message": "Redis unreachable: Timeout connecting"}

    def test_reasons_an_observation_did_not_check_stay_open(self) -> None:
        ledger = Ledger()
        ledger.see(0, {GROUP_LOST: "consumer group 'billing' lost"}, checked={GROUP_LOST})
        # Redis is down now: whether the group is there cannot be told, so that incident is neither over nor seen.
        ledger.see(10, DOWN, checked=REDIS_REASONS)
        assert ledger.incidents[GROUP_LOST].count == 1
        assert set(ledger.incidents) == {GROUP_LOST, REDIS_UNREACHABLE}


class TestFailedWrites:
    def test_a_failed_create_is_tried_again_after_the_interval_with_the_count_so_far(self) -> None:
        ledger = Ledger()
        ledger.see(0, DOWN, written=lambda write: False)
        assert ledger.see(30, DOWN) == []
        assert shape(ledger.see(60, DOWN)) == [("billing.1", REDIS_UNREACHABLE, 3, True)]

    def test_an_incident_never_written_ends_without_a_write(self) -> None:
        ledger = Ledger()
        ledger.see(0, DOWN, written=lambda write: False)
        assert ledger.see(10, {}) == []

    def test_a_write_confirmed_after_its_incident_ended_changes_nothing(self) -> None:
        ledger = Ledger()
        [write] = ledger.see(0, DOWN, written=lambda write: False)
        ledger.see(10, {})
        ledger.see(20, DOWN)
        assert confirm(ledger.incidents, write.incident) == ledger.incidents


class TestWhatTheEventsSay:
    def test_redis_conditions_become_event_reasons_and_messages_without_repeating_themselves(self) -> None:
        def problem(reason: str, message: str) -> tuple[str, str]:
            return redis_problem(Condition(REDIS_REACHABLE, False, reason, message))

        assert problem("Unreachable", "Error 111 connecting") == ("RedisUnreachable",
                                                                  "Redis unreachable: Error 111 connecting")
        assert problem("AuthenticationFailed", "Redis refused the credentials: x") == (
            "RedisAuthenticationFailed", "Redis refused the credentials: x")
        assert problem("PermissionDenied", "Redis refused a command: y")[0] == "RedisPermissionDenied"
        assert problem("SecretMissing", "Secret ns/auth not found") == ("SecretMissing", "Secret ns/auth not found")
        assert problem("RedisError", "ResponseError: z") == ("RedisError", "Redis failed: ResponseError: z")

    def test_the_event_refers_to_the_streamgroup_and_carries_its_count(self) -> None:
        incident = Incident("billing.1f", REDIS_UNREACHABLE, "Redis unreachable: x", "t0", "t9", count=4)
        body = event_body(Ref("team-a", "billing", "uid-1"), incident, "operator-pod")
        assert body["metadata"] == {"name": "billing.1f", "namespace": "team-a"}
        assert body["involvedObject"] == {"apiVersion": "streamgroup.io/v1alpha1", "kind": "StreamGroup",
                                          "namespace": "team-a", "name": "billing", "uid": "uid-1"}
        assert (body["type"], body["reason"], body["count"]) == ("Warning", REDIS_UNREACHABLE, 4)
        assert (body["firstTimestamp"], body["lastTimestamp"]) == ("t0", "t9")
        assert body["source"] == {"component": "streamgroup-operator"}
        assert body["reportingInstance"] == "operator-pod"

    def test_messages_are_cut_to_what_an_event_holds(self) -> None:
        _, [write] = observe({}, {REDIS_UNREACHABLE}, {REDIS_UNREACHABLE: "x" * 5000}, 0, "t0", REPEAT, lambda: "n")
        assert len(write.incident.message) == 1024


POLICY = Autoscaling(min_replicas=1, max_replicas=5, target_lag=10)


class TestRescaleMessages:
    def test_the_hpas_wording(self) -> None:
        assert rescale_message(3, explain(3, 1, 25, 0, POLICY)) == (
            "New size: 3; reason: lag 25 above target (10 per replica)")

    def test_each_decision_says_what_drove_it(self) -> None:
        with_pending = Autoscaling(min_replicas=1, max_replicas=10, target_lag=100, target_pending=10)
        from_zero = Autoscaling(min_replicas=0, max_replicas=5, target_lag=10)
        assert explain(4, 1, 100, 40, with_pending) == "pending 40 above target (10 per replica)"
        assert explain(5, 2, 900, 0, POLICY) == "lag 900 above target (10 per replica), capped at maxReplicas 5"
        assert explain(1, 0, 3, 0, from_zero) == "activation: lag 3, pending 0"
        assert explain(0, 2, 0, 0, from_zero) == "no lag and nothing pending"
        assert explain(2, 4, 15, 0, POLICY) == "lag 15 below target (10 per replica)"
        assert explain(2, 4, 15, 5, with_pending) == "lag 15 and pending 5 below target"
        assert explain(5, 8, None, None, POLICY) == "above maxReplicas 5"
        assert explain(1, 0, None, None, POLICY) == "below minReplicas 1"
        assert explain(5, 2, None, None, None) == "spec.replicas"
