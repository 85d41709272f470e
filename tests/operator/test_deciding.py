"""The operator's pure decisions: replicas from lag and pending, and status conditions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streamgroup_operator.conditions import (
    DEPLOYMENT_READY,
    GROUP_READY,
    READY,
    REDIS_REACHABLE,
    Condition,
    merge,
)
from streamgroup_operator.scaling import Autoscaling, decide, recommend

POLICY = Autoscaling(min_replicas=1, max_replicas=10, target_lag=100, up_window=0, down_window=60)


class TestRecommendation:
    @pytest.mark.parametrize("lag, pending, policy, expected", [
        (0, 0, POLICY, 1),
        (100, 0, POLICY, 1),
        (101, 0, POLICY, 2),
        (950, 0, POLICY, 10),
        (50_000, 0, POLICY, 10),
        (0, 0, Autoscaling(min_replicas=0, max_replicas=5), 0),
        (1, 0, Autoscaling(min_replicas=0, max_replicas=5), 1),
        (0, 1, Autoscaling(min_replicas=0, max_replicas=5), 1),
        (100, 700, Autoscaling(min_replicas=1, max_replicas=10, target_lag=100, target_pending=200), 4),
        (900, 100, Autoscaling(min_replicas=1, max_replicas=10, target_lag=100, target_pending=200), 9),
        (0, 10_000, POLICY, 1),
    ])
    def test_replicas_follow_lag_and_pending_within_bounds(
        self, lag: int, pending: int, policy: Autoscaling, expected: int
    ) -> None:
        assert recommend(lag, pending, policy) == expected


class TestStabilization:
    def test_scale_up_is_immediate_with_no_up_window(self) -> None:
        assert decide(500, 0, 1, (), POLICY, now=1000.0).replicas == 5

    def test_scale_down_waits_for_the_down_window(self) -> None:
        history: tuple[tuple[float, int], ...] = ()
        replicas = 1
        timeline = [(0, 800), (10, 800), (20, 0), (50, 0), (69, 0), (71, 0), (100, 0)]
        seen = []
        for t, lag in timeline:
            decision = decide(lag, 0, replicas, history, POLICY, now=float(t))
            history, replicas = decision.history, decision.replicas
            seen.append(replicas)
        # The last 8-replica recommendation was at t=10: down only once it is 60s old.
        assert seen == [8, 8, 8, 8, 8, 1, 1]

    def test_an_up_window_takes_the_lowest_recommendation_of_the_window(self) -> None:
        policy = Autoscaling(min_replicas=1, max_replicas=10, target_lag=100, up_window=30, down_window=0)
        d1 = decide(900, 0, 1, (), policy, now=0.0)
        assert d1.replicas == 9, "a first recommendation is the whole window"
        d2 = decide(300, 0, 1, d1.history, policy, now=10.0)
        d3 = decide(900, 0, d2.replicas, d2.history, policy, now=20.0)
        assert (d2.replicas, d3.replicas) == (3, 3)
        d4 = decide(900, 0, d3.replicas, d3.history, policy, now=41.0)
        assert d4.replicas == 9

    def test_unknown_lag_keeps_replicas_and_history(self) -> None:
        history = ((0.0, 4),)
        decision = decide(None, 10, 4, history, POLICY, now=5.0)
        assert (decision.replicas, decision.recommendation, decision.history) == (4, None, history)
        assert decide(None, None, 40, (), POLICY, now=5.0).replicas == 10, "bounds still apply"

    def test_from_zero_the_first_entry_activates_one_replica(self) -> None:
        policy = Autoscaling(min_replicas=0, max_replicas=3, target_lag=1000, down_window=30)
        assert decide(0, 0, 0, (), policy, now=0.0).replicas == 0
        assert decide(1, 0, 0, (), policy, now=1.0).replicas == 1

    def test_history_older_than_both_windows_is_forgotten(self) -> None:
        decision = decide(100, 0, 1, ((0.0, 9), (50.0, 2)), POLICY, now=100.0)
        assert [t for t, _ in decision.history] == [50.0, 100.0]


class TestConditions:
    NOW = datetime(2030, 1, 1, tzinfo=UTC)
    LATER = datetime(2030, 1, 1, 0, 5, tzinfo=UTC)

    def test_ready_is_true_only_when_every_other_condition_is(self) -> None:
        conditions = merge([], [Condition(REDIS_REACHABLE, True, "Connected"), Condition(GROUP_READY, True, "Exists"),
                                Condition(DEPLOYMENT_READY, True, "ReplicasReady")], 3, self.NOW)
        assert [c["type"] for c in conditions] == [REDIS_REACHABLE, GROUP_READY, DEPLOYMENT_READY, READY]
        ready = conditions[-1]
        assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("True", "Delivering", 3)

    def test_ready_explains_the_first_failing_condition(self) -> None:
        conditions = merge([], [Condition(REDIS_REACHABLE, False, "Unreachable", "connection refused"),
                                Condition(GROUP_READY, None, "RedisUnreachable")], 1, self.NOW)
        ready = {c["type"]: c for c in conditions}[READY]
        assert (ready["status"], ready["reason"], ready["message"]) == ("False", "Unreachable", "connection refused")

    def test_transition_time_moves_only_when_the_status_changes(self) -> None:
        first = merge([], [Condition(REDIS_REACHABLE, True, "Connected")], 1, self.NOW)
        same = merge(first, [Condition(REDIS_REACHABLE, True, "Connected", "again")], 1, self.LATER)
        flipped = merge(same, [Condition(REDIS_REACHABLE, False, "Unreachable")], 1, self.LATER)
        stamp = {c["type"]: c["lastTransitionTime"] for c in same}
        assert stamp[REDIS_REACHABLE] == "2030-01-01T00:00:00Z"
        assert {c["type"]: c["lastTransitionTime"] for c in flipped}[REDIS_REACHABLE] == "2030-01-01T00:05:00Z"
