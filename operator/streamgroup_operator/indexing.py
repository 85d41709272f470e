"""What the watches tell, kept in memory: every StreamGroup's latest body, and its Deployment's replicas
(and the version of the Secrets its pods were made with, :data:`.building.SECRETS_VERSION`).

The resync reads these instead of asking the API server for each StreamGroup on every resync.
kopf watches the StreamGroups anyway; the Deployments the operator made are watched too, only
those (the API server filters them by :data:`MANAGED_BY`). Both are fed by kopf's event handlers
(:mod:`.handlers`), so they are as fresh as the watches: a Deployment the cache does not hold yet
(the operator just started, or it was just made) is read from the API server instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .building import secrets_version_of

MANAGED_BY = "app.kubernetes.io/managed-by=streamgroup-operator"
"""The label selector of the Deployments the operator makes (see :func:`.building.labels`)."""

Key = tuple[str, str]


@dataclass(frozen=True)
class Replicas:
    """What a resync needs of a Deployment: the replicas it asks for and those ready, and its pods' Secrets version."""

    wanted: int
    ready: int
    secrets: str | None = None
    """The pod template's :data:`.building.SECRETS_VERSION`, ``None`` without one."""

    @classmethod
    def of(cls, deployment: Mapping[str, Any]) -> Replicas:
        spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
        return cls(int(spec.get("replicas") or 0), int(status.get("readyReplicas") or 0),
                   secrets_version_of(deployment))


class Index:
    """The StreamGroups (raw bodies, as the watch last delivered them) and their Deployments' replicas."""

    def __init__(self) -> None:
        self.streamgroups: dict[Key, dict[str, Any]] = {}
        self.deployments: dict[Key, Replicas] = {}

    def streamgroup_seen(self, kind: str | None, body: dict[str, Any]) -> None:
        key = _key(body)
        if kind == "DELETED":
            self.streamgroups.pop(key, None)
        else:
            self.streamgroups[key] = body

    def deployment_seen(self, kind: str | None, body: dict[str, Any]) -> None:
        key = _key(body)
        if kind == "DELETED":
            self.deployments.pop(key, None)
        else:
            self.deployments[key] = Replicas.of(body)

    def live_streamgroups(self) -> Iterator[dict[str, Any]]:
        """The StreamGroups not being deleted (a deleted one is the delete handler's)."""
        for body in list(self.streamgroups.values()):
            if not body.get("metadata", {}).get("deletionTimestamp"):
                yield body


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")
