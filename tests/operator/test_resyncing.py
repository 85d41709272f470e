"""What a resync writes, and what it leaves alone: the pure parts of the operator's resync loop.

The loop itself runs against a real API server in tests/kube (``test_quiet.py``: no writes while
nothing changes); here, the decisions it rests on.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from streamgroup_operator.conditions import DEPLOYMENT_READY, GROUP_READY, REDIS_REACHABLE, Condition, merge
from streamgroup_operator.indexing import Index, Replicas
from streamgroup_operator.loggers import QuietWatchHandlers
from streamgroup_operator.resyncing import due, status_changes

UPDATES = [
    Condition(REDIS_REACHABLE, True, "Connected", "Redis answered"),
    Condition(GROUP_READY, True, "Exists", "group 'billing' present"),
    Condition(DEPLOYMENT_READY, False, "ReplicasNotReady", "0/1 replicas ready"),
]


def status(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {"observedGeneration": 1, "replicas": 1, "lag": 5, "pending": 0, "consumers": 0,
                               "selector": "streamgroup.io/name=billing"}
    base.update(fields)
    return base


class TestStatusWrites:
    def test_a_status_that_already_says_it_all_is_not_written(self) -> None:
        current = status()
        assert status_changes(current, {"replicas": 1, "lag": 5, "pending": 0}) == {}

    def test_only_the_fields_that_changed_are_written(self) -> None:
        assert status_changes(status(), {"replicas": 1, "lag": 7, "pending": 2}) == {"lag": 7, "pending": 2}

    def test_a_field_that_became_unknown_is_removed_and_one_never_set_is_left_alone(self) -> None:
        current = status(oldestPendingAgeSeconds=3.5)
        desired = {"lag": None, "oldestPendingAgeSeconds": None, "partitionedStreams": None}
        assert status_changes(current, desired) == {"lag": None, "oldestPendingAgeSeconds": None}

    def test_conditions_merged_again_from_the_same_findings_later_are_not_a_change(self) -> None:
        """lastTransitionTime moves only with a condition's status: a later resync finding the same writes nothing."""
        then = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
        first = merge([], UPDATES, 1, now=then)
        again = merge(first, UPDATES, 1, now=then + timedelta(minutes=5))
        assert status_changes({"conditions": first}, {"conditions": again}) == {}
        moved = merge(first, [Condition(DEPLOYMENT_READY, True, "ReplicasReady", "1/1 replicas ready")], 1,
                      now=then + timedelta(minutes=5))
        assert set(status_changes({"conditions": first}, {"conditions": moved})) == {"conditions"}


class TestWhoIsResynced:
    def test_a_streamgroup_is_resynced_once_its_change_handler_has_reported_on_it(self) -> None:
        assert not due({"metadata": {"name": "billing"}})
        assert not due({"metadata": {"name": "billing"}, "status": {"conditions": []}})
        assert due({"metadata": {"name": "billing"}, "status": {"observedGeneration": 1}})

    def test_the_index_holds_the_latest_body_and_drops_deleted_and_deleting_ones(self) -> None:
        index = Index()
        body = {"metadata": {"namespace": "team-a", "name": "billing"}, "status": {"lag": 1}}
        index.streamgroup_seen(None, body)
        newer = {"metadata": {"namespace": "team-a", "name": "billing"}, "status": {"lag": 2}}
        index.streamgroup_seen("MODIFIED", newer)
        leaving = {"metadata": {"namespace": "team-a", "name": "old", "deletionTimestamp": "2026-11-30T09:00:00Z"}}
        index.streamgroup_seen("ADDED", leaving)
        assert list(index.live_streamgroups()) == [newer]
        index.streamgroup_seen("DELETED", newer)
        assert list(index.live_streamgroups()) == []

    def test_a_deployment_is_remembered_by_the_replicas_it_asks_for_and_has_ready(self) -> None:
        index = Index()
        deployment = {"metadata": {"namespace": "team-a", "name": "billing"}, "spec": {"replicas": 3},
                      "status": {"readyReplicas": 2}}
        index.deployment_seen("ADDED", deployment)
        assert index.deployments[("team-a", "billing")] == Replicas(3, 2)
        index.deployment_seen("MODIFIED", {"metadata": deployment["metadata"], "spec": {"replicas": 0}})
        assert index.deployments[("team-a", "billing")] == Replicas(0, 0)
        index.deployment_seen("DELETED", deployment)
        assert ("team-a", "billing") not in index.deployments


class TestQuietLogs:
    def record(self, message: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None)

    def test_the_successes_of_the_handlers_that_only_remember_are_dropped(self) -> None:
        quiet = QuietWatchHandlers()
        assert not quiet.filter(self.record("Handler 'streamgroup_seen' succeeded."))
        assert not quiet.filter(self.record("Handler 'deployment_seen' succeeded."))

    def test_every_other_line_stays(self) -> None:
        quiet = QuietWatchHandlers()
        assert quiet.filter(self.record("Handler 'reconcile' succeeded."))
        assert quiet.filter(self.record("Handler 'streamgroup_seen' failed with an exception.", logging.ERROR))
