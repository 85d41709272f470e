"""kopf handlers: the thin shell that turns StreamGroup events into Redis and API work.

* on create, update and resume: ensure the consumer group, apply the Deployment (sidecar
  injected), report conditions;
* every ``--resync-interval``: measure lag and pending, decide replicas (autoscaling
  on) or follow ``spec.replicas`` (autoscaling off, set by ``kubectl scale``, an HPA or KEDA
  through the scale subresource), remove consumers of no live replica, refresh status and metrics;
* on delete: with ``deletionPolicy: Delete``, destroy the group unless another StreamGroup
  uses it. The Deployment goes with its owner (garbage collection).

Decisions live in pure modules (:mod:`.building`, :mod:`.scaling`, :mod:`.conditions`,
:mod:`.recording`); the Redis and Kubernetes calls in :mod:`.grouping`, :mod:`.applying` and
:mod:`.posting`. Nothing happens at import: :func:`registry` registers the handlers with the
settings parsed from flags and environment (the resync interval is the timer's).

Production settings: the operator runs as a single replica (``standalone``: no peering
objects; the chart's Deployment uses the Recreate strategy so two never overlap). Watches ask
the API server to end them every few minutes and the client gives up shortly after, so a
silently dropped connection cannot stall reconciliation. Kubernetes Events are the operator's
own (:mod:`.posting`): a Warning per incident (Redis unreachable or refusing, the group lost, a
spec or template that cannot be used) whose count grows while it lasts, and a Normal
``SuccessfulRescale`` per scaling; kopf posts none, it would post one per failed resync.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
import redis.asyncio as aioredis
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from streamgroup_core.connecting import Endpoint
from streamgroup_core.serving import Server, make_app
from streamgroup_core.spec import (
    API_GROUP,
    API_VERSION,
    PLURAL,
    RedisSpec,
    SecretMissing,
    SpecError,
    StreamGroupSpec,
    parse_spec,
)

from . import applying, authenticating, building, grouping, recording, scaling
from .conditions import DEPLOYMENT_READY, GROUP_READY, READY, REDIS_REACHABLE, Condition, merge, now_text
from .config import OperatorSettings
from .loggers import LOGGER, for_streamgroup
from .metrics import OperatorMetrics, Snapshot
from .posting import Recorder
from .recording import GROUP_LOST, INVALID_SPEC, INVALID_TEMPLATE, REDIS_REASONS, SUCCESSFUL_RESCALE, Ref


@dataclass
class State:
    """What the operator remembers between handler calls (kopf's ``memo.state``)."""

    settings: OperatorSettings
    metrics: OperatorMetrics
    recorder: Recorder
    clients: dict[tuple[str, str], tuple[Endpoint, aioredis.Redis]] = field(default_factory=dict)
    histories: dict[tuple[str, str], tuple[tuple[float, int], ...]] = field(default_factory=dict)
    server: Server | None = None

    async def client_for(self, namespace: str, name: str, spec: StreamGroupSpec) -> aioredis.Redis:
        endpoint = await resolve_endpoint(namespace, spec.redis)
        cached = self.clients.get((namespace, name))
        if cached is not None and cached[0] == endpoint:
            return cached[1]
        if cached is not None:
            await cached[1].aclose()
        client = grouping.connect(endpoint)
        self.clients[(namespace, name)] = (endpoint, client)
        return client

    async def forget(self, namespace: str, name: str) -> None:
        cached = self.clients.pop((namespace, name), None)
        if cached is not None:
            await cached[1].aclose()
        self.histories.pop((namespace, name), None)
        self.metrics.groups.snapshots.pop((namespace, name), None)
        self.recorder.forget(namespace, name)

    @classmethod
    def new(cls, settings: OperatorSettings) -> State:
        return cls(settings=settings, metrics=OperatorMetrics(CollectorRegistry()), recorder=Recorder(settings.events))


async def resolve_endpoint(namespace: str, redis: RedisSpec) -> Endpoint:
    """How to reach the StreamGroup's Redis, with the Secrets it names read from its namespace."""
    secrets = {name: await applying.read_secret_data(namespace, name) for name in redis.secret_names()}
    return redis.endpoint(namespace, secrets)


def redis_condition(exc: BaseException) -> Condition:
    """RedisReachable=False with a reason and a message that never carries a secret."""
    if isinstance(exc, SecretMissing):
        return Condition(REDIS_REACHABLE, False, "SecretMissing", str(exc))
    if isinstance(exc, AuthenticationError):  # WRONGPASS, NOAUTH: the server's words name no secret
        return Condition(REDIS_REACHABLE, False, "AuthenticationFailed", f"Redis refused the credentials: {exc}")
    if isinstance(exc, NoPermissionError):  # NOPERM: the user may not run a command the operator needs
        return Condition(REDIS_REACHABLE, False, "PermissionDenied", f"Redis refused a command: {str(exc)[:300]}")
    if isinstance(exc, RedisConnectionError):
        return Condition(REDIS_REACHABLE, False, "Unreachable", str(exc)[:300])
    return Condition(REDIS_REACHABLE, False, "RedisError", f"{type(exc).__name__}: {str(exc)[:300]}")


def group_vanished(exc: BaseException) -> bool:
    """The group was deleted between two commands of one measurement (Redis answered NOGROUP)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


def template_refusal(exc: ApiException) -> str | None:
    """The API server's message when it refused the Deployment as invalid (the user's template), else ``None``."""
    if exc.status not in (400, 422):
        return None
    try:
        message = str(json.loads(exc.body or "{}").get("message") or "")
    except ValueError:
        message = ""
    return (message or str(exc.reason or "invalid"))[:500]


def _state(memo: kopf.Memo) -> State:
    return memo["state"]  # type: ignore[no-any-return]


def _ref(meta: kopf.Meta) -> Ref:
    return Ref(meta["namespace"], meta["name"], str(meta.get("uid", "")))


def _condition(status: kopf.Status, kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c.get("type") == kind), {})


def _autoscaling(spec: StreamGroupSpec) -> scaling.Autoscaling | None:
    return scaling.Autoscaling.from_spec(spec.autoscaling) if spec.autoscaling is not None else None


async def _parsed(state: State, ref: Ref, spec: kopf.Spec, patch: kopf.Patch, status: kopf.Status,
                  generation: int) -> StreamGroupSpec:
    """The typed spec; an unusable one is reported (Ready=False, an Event) and not retried until it changes."""
    try:
        return parse_spec(dict(spec))
    except SpecError as exc:
        invalid = Condition(READY, False, "InvalidSpec", str(exc)[:500])
        patch.status["conditions"] = merge(list(status.get("conditions", [])), [], generation, ready=invalid)
        await state.recorder.observe(ref, {INVALID_SPEC}, {INVALID_SPEC: invalid.message})
        raise kopf.PermanentError(str(exc)) from None


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.peering.standalone = True
    # No watching of CustomResourceDefinitions: the StreamGroup CRD is installed before the
    # operator, and the operator's RBAC then needs nothing cluster-wide in namespaced mode.
    settings.scanning.disabled = True
    settings.persistence.finalizer = "streamgroup.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="streamgroup.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="streamgroup.io", key="last-handled-configuration")
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    # The operator writes its own Events (posting.py): kopf's would be one per failed resync.
    settings.posting.enabled = False
    settings.batching.error_delays = (1, 2, 5, 10, 20, 30, 60)
    # A StreamGroup deleted while its resync timer is running keeps its finalizer until kopf sees
    # the timer stopped, and kopf looks again only after this many seconds (60 by default) unless
    # another event comes: deletions then hung for a minute now and then.
    settings.background.cancellation_polling = 1
    state = _state(memo)
    if state.server is None:
        state.server = Server(make_app(state.metrics.registry, lambda: {"watching": True}, lambda: {"alive": True}),
                              state.settings.server.host, state.settings.server.port)
        port = await state.server.start()
        LOGGER.info("serving /healthz and /metrics", extra={"sg": {"port": port}})


async def close(memo: kopf.Memo, **_: Any) -> None:
    state = _state(memo)
    for namespace, name in list(state.clients):
        await state.forget(namespace, name)
    if state.server is not None:
        await state.server.stop()
        state.server = None


async def reconcile(body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status,
                    patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    state = _state(memo)
    namespace, name = meta["namespace"], meta["name"]
    ref = _ref(meta)
    sg = await _parsed(state, ref, spec, patch, status, int(meta.get("generation", 0)))
    updates: list[Condition] = []
    failure: BaseException | None = None
    # Redis incidents are the resync's to report, which measures every group on a clock: this handler's
    # success (a group created) says nothing of the commands a resync found refused.
    checked = {INVALID_SPEC, INVALID_TEMPLATE}
    try:
        client = await state.client_for(namespace, name, sg)
        created = await grouping.ensure_group(client, list(sg.stream_keys), sg.group, sg.start_position)
        updates.append(Condition(REDIS_REACHABLE, True, "Connected", "Redis answered"))
        updates.append(Condition(GROUP_READY, True, "Created" if created else "Exists",
                                 f"group {sg.group!r} on {len(sg.stream_keys)} stream(s)"
                                 + (f"; created on {', '.join(created)}" if created else "")))
    except (RedisError, SecretMissing, SpecError, OSError) as exc:
        failure = exc
        updates.append(redis_condition(exc))
        updates.append(Condition(GROUP_READY, None, "RedisUnreachable", "cannot check the group"))
        state.metrics.redis_errors.labels(namespace, name).inc()

    existing = await applying.read_deployment(namespace, name)
    current = int(existing["spec"].get("replicas", 0)) if existing else None
    policy = _autoscaling(sg)
    if policy is not None:
        # The operator owns replicas: keep what the autoscaler chose, within the (maybe new) bounds.
        start = current if current is not None else policy.min_replicas
        replicas = max(policy.min_replicas, min(policy.max_replicas, start))
    else:
        replicas = sg.replicas
    deployment = building.build_deployment(meta, sg, replicas, state.settings.sidecar)
    generation = int(meta.get("generation", 0))
    try:
        await applying.apply_deployment(deployment)
    except ApiException as exc:
        refusal = template_refusal(exc)
        if refusal is None:
            raise
        # The user's pod template is what the API server refuses: retrying cannot help until the spec changes.
        updates.append(Condition(DEPLOYMENT_READY, False, "InvalidTemplate", refusal))
        patch.status["observedGeneration"] = meta.get("generation")
        patch.status["conditions"] = merge(list(status.get("conditions", [])), updates, generation)
        await state.recorder.observe(ref, checked, {INVALID_TEMPLATE: f"Deployment refused: {refusal}"})
        state.metrics.reconciles.labels("spec", "error").inc()
        raise kopf.PermanentError(f"Deployment refused: {refusal}") from None
    if current is not None and replicas != current:
        await _rescaled(state, ref, current, replicas, scaling.explain(replicas, current, None, None, policy))

    patch.status["observedGeneration"] = meta.get("generation")
    patch.status["selector"] = building.selector_string(name)
    patch.status["replicas"] = replicas
    patch.status["conditions"] = merge(list(status.get("conditions", [])), updates, generation)
    await state.recorder.observe(ref, checked, {})
    state.metrics.reconciles.labels("spec", "error" if failure else "ok").inc()
    if failure is not None:
        raise kopf.TemporaryError(f"Redis not ready: {redis_condition(failure).message}", delay=10)


async def _rescaled(state: State, ref: Ref, current: int, desired: int, why: str) -> None:
    """A scaling decision taken: counted, logged and shown as a Normal Event, like the HPA's."""
    state.metrics.scalings.labels(ref.namespace, ref.name, "up" if desired > current else "down").inc()
    for_streamgroup(ref.namespace, ref.name).info(
        "scaled", extra={"sg": {"from": current, "to": desired, "reason": why}})
    await state.recorder.announce(ref, SUCCESSFUL_RESCALE, recording.rescale_message(desired, why))


async def resync(body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status,
                 patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    state = _state(memo)
    namespace, name = meta["namespace"], meta["name"]
    ref = _ref(meta)
    try:
        sg = parse_spec(dict(spec))
    except SpecError:
        return  # reported by the change handler, which refuses it until the spec changes
    updates: list[Condition] = []
    deployment = await applying.read_deployment(namespace, name)
    current = int(deployment["spec"].get("replicas", 0)) if deployment else 0
    desired = current
    stats: grouping.GroupStats | None = None
    checked = set(REDIS_REASONS)
    found: dict[str, str] = {}
    try:
        client = await state.client_for(namespace, name, sg)
        stats = await grouping.measure(client, list(sg.stream_keys), sg.group, list(sg.dead_letter_streams))
        updates.append(Condition(REDIS_REACHABLE, True, "Connected", "Redis answered"))
        checked.add(GROUP_LOST)
        if stats.group_ready:
            updates.append(Condition(GROUP_READY, True, "Exists", f"group {sg.group!r} present"))
        else:
            missing = [s.stream for s in stats.streams if not s.exists]
            gone = Condition(GROUP_READY, False, "GroupMissing", f"no group on {', '.join(missing)}")
            updates.append(gone)
            # Lost, not "not made yet": it was there (a change handler may still be creating it otherwise).
            if _condition(status, GROUP_READY).get("status") == "True" or state.recorder.is_open(ref, GROUP_LOST):
                found[GROUP_LOST] = f"consumer group {sg.group!r} lost: {gone.message}"
    except (RedisError, SecretMissing, SpecError, OSError) as exc:
        if group_vanished(exc):
            # Redis answered: the group went away between two commands (NOGROUP).
            updates.append(Condition(REDIS_REACHABLE, True, "Connected", "Redis answered"))
            updates.append(Condition(GROUP_READY, False, "GroupMissing", str(exc)[:300]))
            checked.add(GROUP_LOST)
            found[GROUP_LOST] = f"consumer group {sg.group!r} lost: {str(exc)[:300]}"
        else:
            condition = redis_condition(exc)
            updates.append(condition)
            reason, message = recording.redis_problem(condition)
            found[reason] = message
        state.metrics.redis_errors.labels(namespace, name).inc()
        state.metrics.reconciles.labels("resync", "error").inc()
    await state.recorder.observe(ref, checked, found)

    policy = _autoscaling(sg)
    if stats is not None and deployment is not None:
        if policy is not None:
            history = state.histories.get((namespace, name), ())
            decision = scaling.decide(stats.lag, stats.pending, current, history, policy, time.monotonic())
            state.histories[(namespace, name)] = decision.history
            desired = decision.replicas
            patch.status["desiredReplicas"] = desired
        else:
            desired = sg.replicas
        if desired != current:
            await applying.scale_deployment(namespace, name, desired)
            patch.status["lastScaleTime"] = now_text()
            await _rescaled(state, ref, current, desired,
                            scaling.explain(desired, current, stats.lag, stats.pending, policy))
        await _clean_consumers(state, client, namespace, name, sg, stats)

    if deployment is None:
        # A template the API server refused stays the reason until the spec changes (see reconcile).
        if _condition(status, DEPLOYMENT_READY).get("reason") != "InvalidTemplate":
            updates.append(Condition(DEPLOYMENT_READY, False, "Missing", "the Deployment does not exist yet"))
    else:
        ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
        patch.status["readyReplicas"] = ready
        if desired == 0:
            updates.append(Condition(DEPLOYMENT_READY, True, "ScaledToZero", "no replicas needed"))
        elif ready >= desired:
            updates.append(Condition(DEPLOYMENT_READY, True, "ReplicasReady", f"{ready}/{desired} replicas ready"))
        else:
            updates.append(Condition(DEPLOYMENT_READY, False, "ReplicasNotReady", f"{ready}/{desired} replicas ready"))

    patch.status["replicas"] = desired
    patch.status["selector"] = building.selector_string(name)
    if stats is not None:
        lag = stats.lag
        patch.status["lag"] = lag  # None removes it: unknown is not zero
        patch.status["pending"] = stats.pending
        age = stats.oldest_pending_age_seconds
        patch.status["oldestPendingAgeSeconds"] = round(age, 3) if age is not None else None
        patch.status["consumers"] = stats.consumers
        patch.status["deadLetterLength"] = stats.dead_letters
        patch.status["partitionedStreams"] = partition_status(sg, stats) or None
        state.metrics.groups.snapshots[(namespace, name)] = Snapshot(
            namespace, name, sg.group, stats, patch.status.get("desiredReplicas"), desired, sg.partitioned_streams)
        state.metrics.reconciles.labels("resync", "ok").inc()
    patch.status["conditions"] = merge(list(status.get("conditions", [])), updates,
                                       int(status.get("observedGeneration") or meta.get("generation", 0)))


def partition_status(sg: StreamGroupSpec, stats: grouping.GroupStats) -> list[dict[str, Any]]:
    """Each partitioned stream's lag and pending, summed over its partitions, for ``status.partitionedStreams``."""
    rows = []
    for stream in sg.partitioned_streams:
        lag, pending = stats.subtotal(stream.keys)
        row: dict[str, Any] = {"name": stream.name, "partitions": stream.partitions, "pending": pending}
        if lag is not None:
            row["lag"] = lag
        rows.append(row)
    return rows


async def _clean_consumers(state: State, client: aioredis.Redis, namespace: str, name: str, spec: StreamGroupSpec,
                           stats: grouping.GroupStats) -> None:
    live = await applying.live_pod_names(namespace, name)
    cleanup = await grouping.clean_consumers(
        client, stats, spec.group, live, int(state.settings.watch.consumer_idle_limit * 1000),
        int(spec.claim.min_idle_seconds * 1000))
    if cleanup.removed:
        state.metrics.consumers_removed.labels(namespace, name).inc(len(cleanup.removed))
        for_streamgroup(namespace, name).info("removed consumers of no live replica", extra={"sg": {
            "consumers": cleanup.removed, "entries_handed_over": cleanup.handed_over}})


def _shares_group(mine: StreamGroupSpec, other: dict[str, Any]) -> bool:
    try:
        theirs = parse_spec(other.get("spec") or {})
    except SpecError:
        return False  # it never ran: it uses no group
    return (
        mine.redis.address == theirs.redis.address
        and mine.group == theirs.group
        and bool(set(mine.stream_keys) & set(theirs.stream_keys))
    )


async def delete(meta: kopf.Meta, spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> None:
    state = _state(memo)
    namespace, name = meta["namespace"], meta["name"]
    try:
        sg = parse_spec(dict(spec))
    except SpecError:
        await state.forget(namespace, name)
        return  # never reconciled: there is no group of its own to delete
    try:
        if sg.deletion_policy == "Delete":
            others = [other for other in await applying.list_streamgroups(state.settings.watch.namespaces)
                      if other["metadata"]["uid"] != meta["uid"] and _shares_group(sg, other)]
            if others:
                users = ", ".join(f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in others)
                for_streamgroup(namespace, name).info("deletionPolicy Delete: group kept, other StreamGroups use it",
                                                      extra={"sg": {"used_by": users}})
            else:
                client = await state.client_for(namespace, name, sg)
                destroyed = await grouping.destroy_group(client, list(sg.stream_keys), sg.group)
                for_streamgroup(namespace, name).info("deletionPolicy Delete: consumer group destroyed", extra={
                    "sg": {"group": sg.group, "streams": destroyed}})
    except (RedisError, SecretMissing, OSError) as exc:
        raise kopf.TemporaryError(f"cannot delete the group yet: {redis_condition(exc).message}", delay=10) from exc
    await state.forget(namespace, name)


def registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """The handlers, registered with these settings (the resync timer's interval is one of them)."""
    handlers = kopf.OperatorRegistry()
    kopf.on.login(registry=handlers)(login)
    kopf.on.startup(registry=handlers)(configure)
    kopf.on.cleanup(registry=handlers)(close)
    # Unexpected errors (an API hiccup) are retried after `backoff` seconds, not kopf's default minute.
    for on in (kopf.on.create, kopf.on.update, kopf.on.resume):
        on(API_GROUP, API_VERSION, PLURAL, backoff=5, registry=handlers)(reconcile)
    interval = settings.watch.resync_interval
    kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=interval, initial_delay=min(2.0, interval),
               registry=handlers)(resync)
    kopf.on.delete(API_GROUP, API_VERSION, PLURAL, backoff=5, registry=handlers)(delete)
    return handlers


def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials: the kubeconfig or service account the operator was started with."""
    return authenticating.credentials()
