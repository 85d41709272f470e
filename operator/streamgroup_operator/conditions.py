"""Status conditions, Kubernetes style: type, status, reason, message, lastTransitionTime.

Pure helpers. ``lastTransitionTime`` changes only when the status does, so that
``kubectl wait`` and alerts see real transitions rather than every resync.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

REDIS_REACHABLE = "RedisReachable"
GROUP_READY = "GroupReady"
DEPLOYMENT_READY = "DeploymentReady"
READY = "Ready"
ORDER = (REDIS_REACHABLE, GROUP_READY, DEPLOYMENT_READY, READY)


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None
    reason: str
    message: str = ""

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def now_text(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _apply(by_type: dict[str, dict[str, Any]], update: Condition, generation: int, stamp: str) -> None:
    old = by_type.get(update.type)
    unchanged = old is not None and old.get("status") == update.status_text
    by_type[update.type] = {
        "type": update.type,
        "status": update.status_text,
        "reason": update.reason,
        "message": update.message,
        "lastTransitionTime": old.get("lastTransitionTime", stamp) if unchanged and old else stamp,
        "observedGeneration": generation,
    }


def readiness(by_type: dict[str, dict[str, Any]]) -> Condition:
    """``Ready`` follows the first of the other conditions that is not True."""
    for kind in ORDER[:-1]:
        part = by_type.get(kind)
        if part is None:
            return Condition(READY, None, "Pending", f"{kind} not reported yet")
        if part["status"] != "True":
            return Condition(READY, False, part["reason"], part["message"])
    return Condition(READY, True, "Delivering", "consumer group and Deployment are ready")


def merge(
    previous: list[dict[str, Any]], updates: list[Condition], generation: int, now: datetime | None = None,
    ready: Condition | None = None,
) -> list[dict[str, Any]]:
    """New conditions list: ``updates`` applied over ``previous``, with ``Ready`` derived from the rest.

    ``ready`` replaces the derived one, for what no other condition covers (a spec that cannot be used).
    """
    stamp = now_text(now)
    by_type = {c["type"]: dict(c) for c in previous}
    for update in updates:
        _apply(by_type, update, generation, stamp)
    _apply(by_type, ready or readiness(by_type), generation, stamp)
    return [by_type[t] for t in ORDER if t in by_type] + [c for t, c in by_type.items() if t not in ORDER]
