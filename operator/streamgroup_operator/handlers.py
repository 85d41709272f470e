"""kopf handlers: the thin shell that turns StreamGroup events into Redis and API work.

* on create, update and resume: ensure the consumer group, apply the Deployment (sidecar
  injected), report conditions and the group's lag and pending as they are now;
* on every watch event of a StreamGroup, and of a Deployment the operator made: keep its latest
  state in memory (:mod:`.indexing`) for the resync;
* every ``--resync-interval``, one loop for all StreamGroups (:mod:`.resyncing`, started at
  start-up): measure lag and pending, decide replicas (autoscaling on) or follow ``spec.replicas``
  (autoscaling off, set by ``kubectl scale``, an HPA or KEDA through the scale subresource),
  remove consumers of no live replica, refresh metrics, and the status where it changed;
* on delete: with ``deletionPolicy: Delete``, destroy the group unless another StreamGroup
  uses it, once the Deployment is scaled to zero and its pods are gone (running sidecars would
  make the group again). The Deployment goes with its owner (garbage collection).

Decisions live in pure modules (:mod:`.building`, :mod:`.scaling`, :mod:`.conditions`,
:mod:`.recording`); the Redis and Kubernetes calls in :mod:`.grouping`, :mod:`.applying` and
:mod:`.posting`. Nothing happens at import: :func:`registry` registers the handlers with the
settings parsed from flags and environment.

Production settings: of the operator's replicas only the holder of a Lease runs kopf at all
(:mod:`.electing`; kopf itself is ``standalone``, without peering objects, which pause peers but
never elect one), so the chart runs two and rolls them over one at a time. Watches ask
the API server to end them every few minutes and the client gives up shortly after, so a
silently dropped connection cannot stall reconciliation. Kubernetes Events are the operator's
own (:mod:`.posting`): a Warning per incident (Redis unreachable or refusing, the group lost, a
spec or template that cannot be used) whose count grows while it lasts, and a Normal
``SuccessfulRescale`` per scaling; kopf posts none, it would post one per failed resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any, cast

import kopf
import redis.asyncio as aioredis
from kubernetes.client.exceptions import ApiException
from redis.exceptions import RedisError

from streamgroup_core.serving import Server, make_app
from streamgroup_core.spec import (
    API_GROUP,
    API_VERSION,
    PLURAL,
    SecretMissing,
    SpecError,
    StreamGroupSpec,
    parse_spec,
)

from . import applying, authenticating, building, grouping, resyncing, scaling
from .conditions import DEPLOYMENT_READY, GROUP_READY, READY, REDIS_REACHABLE, Condition, merge
from .config import OperatorSettings
from .indexing import MANAGED_BY
from .loggers import LOGGER, for_streamgroup
from .recording import INVALID_SPEC, INVALID_TEMPLATE, Ref
from .resyncing import State, partition_status, redis_condition

__all__ = ["State", "partition_status", "registry"]


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
    # Only the Deployments the operator made are watched (for their replicas), filtered by the API server.
    settings.watching.label_selectors["apps", "deployments"] = MANAGED_BY
    # The operator writes its own Events (posting.py): kopf's would be one per failed resync.
    settings.posting.enabled = False
    settings.batching.error_delays = (1, 2, 5, 10, 20, 30, 60)
    state = _state(memo)
    if state.resyncing is None:
        state.resyncing = asyncio.create_task(resyncing.run(state), name="resync")


async def close(memo: kopf.Memo, **_: Any) -> None:
    state = _state(memo)
    if state.resyncing is not None:
        state.resyncing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state.resyncing
        state.resyncing = None
    await state.close()


async def serve(state: State, readiness: Callable[[], dict[str, bool]]) -> None:
    """``/healthz``, ``/readyz`` and ``/metrics``, from before the election on (a standby answers its probes)."""
    state.server = Server(make_app(state.metrics.registry, readiness, lambda: {"alive": True}),
                          state.settings.server.host, state.settings.server.port)
    port = await state.server.start()
    LOGGER.info("serving /healthz and /metrics", extra={"sg": {"port": port}})


# Coroutines, though they never wait: kopf runs plain functions in a thread, one hop per watch event.
async def streamgroup_seen(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _state(memo).streamgroup_seen(event.get("type"), cast(dict[str, Any], event["object"]))


async def deployment_seen(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _state(memo).index.deployment_seen(event.get("type"), cast(dict[str, Any], event["object"]))


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
    measured: dict[str, Any] = {}
    # Read once, for Redis and for the version of the Secrets the pods are made with.
    secrets = await resyncing.read_secrets({(namespace, secret) for secret in sg.redis.secret_names()})
    try:
        client = state.client(await resyncing.resolve_endpoint(namespace, sg.redis, secrets))
        created = await grouping.ensure_group(client, list(sg.stream_keys), sg.group, sg.start_position)
        updates.append(Condition(REDIS_REACHABLE, True, "Connected", "Redis answered"))
        updates.append(Condition(GROUP_READY, True, "Created" if created else "Exists",
                                 f"group {sg.group!r} on {len(sg.stream_keys)} stream(s)"
                                 + (f"; created on {', '.join(created)}" if created else "")))
        measured = await _numbers(client, sg)
    except (RedisError, SecretMissing, SpecError, OSError) as exc:
        failure = exc
        updates.append(redis_condition(exc))
        updates.append(Condition(GROUP_READY, None, "RedisUnreachable", "cannot check the group"))
        state.metrics.redis_errors.labels(namespace, name).inc()

    existing = await applying.read_deployment(namespace, name)
    current = int(existing["spec"].get("replicas", 0)) if existing else None
    policy = resyncing.autoscaling_of(sg)
    if policy is not None:
        # The operator owns replicas: keep what the autoscaler chose, within the (maybe new) bounds.
        start = current if current is not None else policy.min_replicas
        replicas = max(policy.min_replicas, min(policy.max_replicas, start))
    else:
        replicas = sg.replicas
    version = building.secrets_version(namespace, sg, resyncing.pod_secret_versions(namespace, sg, secrets),
                                       building.secrets_version_of(existing) if existing else None)
    deployment = building.build_deployment(meta, sg, replicas, state.settings.sidecar, secrets=version)
    generation = int(meta.get("generation", 0))
    try:
        async with state.deployment_lock((namespace, name)):
            await applying.apply_deployment(deployment)
            state.rolled[(namespace, name)] = version
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
        await resyncing.rescaled(state, ref, current, replicas, scaling.explain(replicas, current, None, None, policy))

    patch.status["observedGeneration"] = meta.get("generation")
    patch.status["selector"] = building.selector_string(name)
    patch.status["replicas"] = replicas
    for key, value in measured.items():
        if value is not None:
            patch.status[key] = value
    patch.status["conditions"] = merge(list(status.get("conditions", [])), updates, generation)
    await state.recorder.observe(ref, checked, {})
    state.metrics.reconciles.labels("spec", "error" if failure else "ok").inc()
    if failure is not None:
        raise kopf.TemporaryError(f"Redis not ready: {redis_condition(failure).message}", delay=10)


async def _numbers(client: aioredis.Redis, sg: StreamGroupSpec) -> dict[str, Any]:
    """Lag, pending and the rest at once, so that a new StreamGroup shows them as soon as it is handled.

    The resync measures again and reports what Redis refuses; here a refusal only leaves them out.
    """
    [result] = await grouping.measure_all(client, [grouping.Target(sg.stream_keys, sg.group, sg.dead_letter_streams)])
    return resyncing.numbers(sg, result) if isinstance(result, grouping.GroupStats) else {}


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
        state.forget(namespace, name)
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
                # Running sidecars make a destroyed group again (--on-group-loss recreate), so the pods stop
                # first: scaled to zero (each hands over and leaves), then destroyed once none is left.
                if await applying.read_deployment(namespace, name) is not None:
                    await applying.scale_deployment(namespace, name, 0)
                if left := await applying.pod_count(namespace, name):
                    raise kopf.TemporaryError(f"waiting for {left} pod(s) to stop before destroying the group",
                                              delay=2)
                client = await state.client_for(namespace, sg)
                destroyed = await grouping.destroy_group(client, list(sg.stream_keys), sg.group)
                for_streamgroup(namespace, name).info("deletionPolicy Delete: consumer group destroyed", extra={
                    "sg": {"group": sg.group, "streams": destroyed}})
    except (RedisError, SecretMissing, OSError) as exc:
        raise kopf.TemporaryError(f"cannot delete the group yet: {redis_condition(exc).message}", delay=10) from exc
    state.forget(namespace, name)


def registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """The handlers, registered with these settings."""
    handlers = kopf.OperatorRegistry()
    kopf.on.login(registry=handlers)(login)
    kopf.on.startup(registry=handlers)(configure)
    kopf.on.cleanup(registry=handlers)(close)
    # Unexpected errors (an API hiccup) are retried after `backoff` seconds, not kopf's default minute.
    for on in (kopf.on.create, kopf.on.update, kopf.on.resume):
        on(API_GROUP, API_VERSION, PLURAL, backoff=5, registry=handlers)(reconcile)
    kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=handlers)(streamgroup_seen)
    kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": "streamgroup-operator"},
                  registry=handlers)(deployment_seen)
    kopf.on.delete(API_GROUP, API_VERSION, PLURAL, backoff=5, registry=handlers)(delete)
    return handlers


def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials: the kubeconfig or service account the operator was started with."""
    return authenticating.credentials()
