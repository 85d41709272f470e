"""Which Kubernetes Events to write about a StreamGroup, and what they say: pure bookkeeping.

An **incident** is one problem (an Event reason: ``RedisUnreachable``, ``GroupLost``, ...) on one
StreamGroup, from the first observation that finds it to the first one that checks for it and
does not. It is **one Event**, as the kubelet and the HPA do it through client-go's event
correlator: created when the incident starts; then every observation that finds the problem again
adds one to the count in memory, and the count, ``lastTimestamp`` and the latest message are
written (one PATCH) at most once per ``repeat`` seconds, plus once when the incident ends so the
Event's final count is right. A resync during a lasting incident therefore costs nothing but
memory, and at most one PATCH a minute per StreamGroup by default. A problem that comes back after
a recovery is a new incident, so a new Event: ``kubectl describe`` shows each outage with its
own count and times.

The ledger lives in memory only: an operator restarted during an incident starts a new Event for
it (the kubelet does the same). This keeps the operator's permissions on events to create and
patch; finding the old Event again would need list.

Scaling decisions are one-off Normal Events (``SuccessfulRescale``, as the HPA's), one per change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from streamgroup_core.spec import API_GROUP, API_VERSION

from .conditions import Condition

COMPONENT = "streamgroup-operator"
MAX_MESSAGE = 1024

# Event reasons. The Redis ones exclude one another: a different failure is a different incident.
REDIS_UNREACHABLE = "RedisUnreachable"
REDIS_AUTHENTICATION_FAILED = "RedisAuthenticationFailed"
REDIS_PERMISSION_DENIED = "RedisPermissionDenied"
REDIS_ERROR = "RedisError"
SECRET_MISSING = "SecretMissing"
GROUP_LOST = "GroupLost"
INVALID_SPEC = "InvalidSpec"
INVALID_TEMPLATE = "InvalidTemplate"
SUCCESSFUL_RESCALE = "SuccessfulRescale"

REDIS_REASONS = frozenset({REDIS_UNREACHABLE, REDIS_AUTHENTICATION_FAILED, REDIS_PERMISSION_DENIED, REDIS_ERROR,
                           SECRET_MISSING})
"""What one attempt to talk to the StreamGroup's Redis checks: a success ends all of them."""

_REDIS_EVENTS = {  # condition reason -> Event reason, and what the condition's message needs in front
    "Unreachable": (REDIS_UNREACHABLE, "Redis unreachable: "),
    "AuthenticationFailed": (REDIS_AUTHENTICATION_FAILED, ""),
    "PermissionDenied": (REDIS_PERMISSION_DENIED, ""),
    "SecretMissing": (SECRET_MISSING, ""),
}


@dataclass(frozen=True)
class Ref:
    """The StreamGroup an Event is about (its ``involvedObject``)."""

    namespace: str
    name: str
    uid: str

    def involved_object(self) -> dict[str, str]:
        return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "StreamGroup", "namespace": self.namespace,
                "name": self.name, "uid": self.uid}


@dataclass(frozen=True)
class Incident:
    """One Event as the operator remembers it."""

    name: str
    """The Event object's name (``<streamgroup>.<hex nanoseconds>``, as client-go names them)."""
    reason: str
    message: str
    first: str
    """``firstTimestamp``: when the incident started."""
    last: str
    """``lastTimestamp``: the latest observation of it."""
    count: int = 1
    """Observations of the problem so far."""
    type: str = "Warning"
    written: int = 0
    """The count the API server has; 0 while the Event is not created."""
    attempted: float = -math.inf
    """Monotonic time of the last write attempt (rate limit)."""


@dataclass(frozen=True)
class Write:
    incident: Incident
    create: bool
    """Create the Event (it does not exist yet) rather than patch its count."""


def redis_problem(condition: Condition) -> tuple[str, str]:
    """The Event reason and message of a ``RedisReachable=False`` condition (whose message holds no secret)."""
    reason, prefix = _REDIS_EVENTS.get(condition.reason, (REDIS_ERROR, "Redis failed: "))
    return reason, prefix + condition.message


def observe(
    ledger: Mapping[str, Incident],
    checked: Collection[str],
    found: Mapping[str, str],
    now: float,
    stamp: str,
    repeat: float,
    name: Callable[[], str],
) -> tuple[dict[str, Incident], list[Write]]:
    """The incidents open after an observation, and the Event writes it calls for.

    ``checked``: the reasons this observation could tell about (a resync that could not reach Redis
    cannot tell whether the group is there); ``found``: those of them it found, with their message.
    Incidents of reasons it did not check stay as they are.
    """
    incidents = dict(ledger)
    writes: list[Write] = []
    for reason in checked:
        current = incidents.get(reason)
        if reason in found:
            message = found[reason][:MAX_MESSAGE]
            if current is None:
                current = Incident(name(), reason, message, stamp, stamp)
            else:
                current = replace(current, message=message, last=stamp, count=current.count + 1)
            if current.count > current.written and now - current.attempted >= repeat:
                current = replace(current, attempted=now)
                writes.append(Write(current, create=current.written == 0))
            incidents[reason] = current
        elif current is not None:
            del incidents[reason]
            if 0 < current.written < current.count:
                writes.append(Write(current, create=False))  # the final count
    return incidents, writes


def confirm(ledger: Mapping[str, Incident], written: Incident) -> dict[str, Incident]:
    """The ledger once the API server has ``written``'s count (nothing changes if that incident is over)."""
    current = ledger.get(written.reason)
    if current is None or current.name != written.name:
        return dict(ledger)
    return {**ledger, written.reason: replace(current, written=max(current.written, written.count))}


def event_body(ref: Ref, incident: Incident, instance: str) -> dict[str, Any]:
    """A core/v1 Event in the form ``kubectl describe`` shows with its count (``x5 over 3m``)."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": incident.name, "namespace": ref.namespace},
        "involvedObject": ref.involved_object(),
        "type": incident.type,
        "reason": incident.reason,
        "message": incident.message,
        "count": incident.count,
        "firstTimestamp": incident.first,
        "lastTimestamp": incident.last,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance[:128],
    }


def count_patch(incident: Incident) -> dict[str, Any]:
    return {"count": incident.count, "lastTimestamp": incident.last, "message": incident.message}


def rescale_message(new: int, why: str) -> str:
    """The HPA's wording: ``New size: 3; reason: lag 1200 above target``."""
    return f"New size: {new}; reason: {why}"
