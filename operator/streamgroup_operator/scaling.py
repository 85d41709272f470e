"""How many replicas a StreamGroup should run: a pure function of what was measured.

The rule follows the HorizontalPodAutoscaler's, applied to Redis numbers:

* the raw recommendation is ``ceil(lag / targetLagPerReplica)``, or the larger of that and
  ``ceil(pending / targetPendingPerReplica)`` when a pending target is set, clamped to
  ``[minReplicas, maxReplicas]``;
* **activation**: with ``minReplicas: 0``, a group with nothing to do scales to zero, and any
  lag or pending entry brings it back to at least one replica;
* **stabilization**: recommendations are remembered; scaling up goes to the *lowest*
  recommendation of the last ``scaleUpStabilizationSeconds``, scaling down to the *highest*
  of the last ``scaleDownStabilizationSeconds``, so a brief spike or dip does not flap replicas;
* **never on garbage**: when lag is unknown (Redis reports it as nil after XDEL, XSETID or
  trimming, and the bounded count could not tell either) replicas stay as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from streamgroup_core.spec import AutoscalingSpec


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int = 1
    max_replicas: int = 1
    target_lag: int = 100
    target_pending: int | None = None
    up_window: float = 0.0
    down_window: float = 300.0

    @classmethod
    def from_spec(cls, spec: AutoscalingSpec) -> Autoscaling:
        return cls(
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            target_lag=spec.target_lag_per_replica,
            target_pending=spec.target_pending_per_replica,
            up_window=float(spec.scale_up_stabilization_seconds),
            down_window=float(spec.scale_down_stabilization_seconds),
        )


@dataclass(frozen=True)
class Decision:
    replicas: int
    recommendation: int | None
    """The raw recommendation of this round (``None`` when the inputs were unknown)."""
    history: tuple[tuple[float, int], ...] = field(default=())
    """(time, recommendation) pairs to remember for the next round."""
    reason: str = ""


def recommend(lag: int, pending: int, policy: Autoscaling) -> int:
    """The replicas these numbers call for, before stabilization."""
    wanted = math.ceil(lag / policy.target_lag)
    if policy.target_pending is not None:
        wanted = max(wanted, math.ceil(pending / policy.target_pending))
    if lag > 0 or pending > 0:
        wanted = max(wanted, 1)  # activation from zero
    return max(policy.min_replicas, min(policy.max_replicas, wanted))


def decide(
    lag: int | None,
    pending: int | None,
    current: int,
    history: tuple[tuple[float, int], ...],
    policy: Autoscaling,
    now: float,
) -> Decision:
    """Replicas to run now, given the measurements, the current count and past recommendations."""
    if lag is None or pending is None:
        kept = max(policy.min_replicas, min(policy.max_replicas, current))
        return Decision(kept, None, history, "lag unknown: replicas kept")
    raw = recommend(lag, pending, policy)
    horizon = max(policy.up_window, policy.down_window)
    remembered = (*((t, r) for t, r in history if now - t <= horizon), (now, raw))
    up = min(r for t, r in remembered if now - t <= policy.up_window)
    down = max(r for t, r in remembered if now - t <= policy.down_window)
    desired = max(policy.min_replicas, min(policy.max_replicas, current))
    if desired < up:
        desired = up
    if desired > down:
        desired = down
    if desired > current:
        reason = f"lag {lag}, pending {pending}: scale up"
    elif desired < current:
        reason = f"lag {lag}, pending {pending}: scale down"
    else:
        reason = f"lag {lag}, pending {pending}: steady"
    return Decision(desired, raw, remembered, reason)


def explain(new: int, current: int, lag: int | None, pending: int | None, policy: Autoscaling | None) -> str:
    """Why replicas go from ``current`` to ``new``: the reason of the ``SuccessfulRescale`` Event (HPA wording)."""
    if policy is None:
        return "spec.replicas"
    if current > policy.max_replicas and new == policy.max_replicas:
        return f"above maxReplicas {policy.max_replicas}"
    if current < policy.min_replicas and new == policy.min_replicas:
        return f"below minReplicas {policy.min_replicas}"
    if lag is None or pending is None:
        return "within the autoscaling bounds"
    by_lag = math.ceil(lag / policy.target_lag)
    by_pending = math.ceil(pending / policy.target_pending) if policy.target_pending is not None else 0
    lag_text = f"lag {lag}"
    pending_text = f"pending {pending}"
    lag_target = f"target ({policy.target_lag} per replica)"
    pending_target = f"target ({policy.target_pending} per replica)"
    if new > current:
        if current == 0:
            return f"activation: lag {lag}, pending {pending}"
        why = (f"{pending_text} above {pending_target}" if by_pending > by_lag
               else f"{lag_text} above {lag_target}")
        return why + (f", capped at maxReplicas {policy.max_replicas}"
                      if max(by_lag, by_pending) > new == policy.max_replicas else "")
    if new == 0:
        return "no lag and nothing pending"
    if policy.target_pending is not None:
        return f"{lag_text} and {pending_text} below target"
    return f"{lag_text} below {lag_target}"
