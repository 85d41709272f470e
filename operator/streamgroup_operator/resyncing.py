"""The resync: every ``--resync-interval``, every StreamGroup's numbers, replicas and status, all at once.

One loop for the whole operator rather than a kopf timer per StreamGroup: a timer per object cost
a handler invocation, a status PATCH (even when nothing had changed) and a log line per
StreamGroup per resync, and one Redis round trip per command per StreamGroup. A round now:

1. takes the StreamGroups from the watch (:mod:`.indexing`), those the change handler has handled
   (``status.observedGeneration`` set: their group was made, or why not was said) and not being
   deleted, each spec parsed once per generation;
2. reads each Secret they name once, and works out each one's Redis :class:`Endpoint`;
3. measures every StreamGroup of one Endpoint in one pipeline (:func:`.grouping.measure_all`),
   through one client per Endpoint shared with the change handlers, all Endpoints concurrently;
4. for each StreamGroup: the Events its incidents call for, the scaling decision (and the scale
   write if it changed), the removal of consumers of no live pod (pods are listed only when some
   consumer has been idle long enough to be a candidate), and its status, **written only if it
   differs** from what the watch last showed (a merge patch of the fields that changed); and its
   Deployment applied again when a Secret its pods read has a new version (:func:`roll_on_new_secrets`:
   the Secrets of step 2, so noticing a rotation costs no request of its own).

Deployments come from the watch as well; nothing is read from the API server while nothing changes.
A StreamGroup the watch shows handled for the first time does not wait for the next round: it is
resynced within a second or so, with whatever else arrived meanwhile (see :func:`run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from streamgroup_core.connecting import Endpoint
from streamgroup_core.serving import Server
from streamgroup_core.spec import RedisSpec, SecretMissing, SpecError, StreamGroupSpec, parse_spec

from . import applying, building, grouping, recording, scaling
from .building import SecretVersion
from .conditions import DEPLOYMENT_READY, GROUP_READY, REDIS_REACHABLE, Condition, merge, now_text
from .config import OperatorSettings
from .indexing import Index, Key, Replicas
from .loggers import LOGGER, for_streamgroup
from .metrics import OperatorMetrics, Snapshot
from .posting import Recorder
from .recording import GROUP_LOST, REDIS_REASONS, SUCCESSFUL_RESCALE, Ref

CONCURRENT_WRITES = 32
"""StreamGroups whose writes (status, scale, Events, consumer removal) are under way at once."""
CLIENT_IDLE_ROUNDS = 3
"""A Redis client no StreamGroup used for this many resync intervals (and at least a minute) is closed."""


@dataclass
class State:
    """What the operator remembers between handler calls and resyncs (kopf's ``memo.state``)."""

    settings: OperatorSettings
    metrics: OperatorMetrics
    recorder: Recorder
    index: Index = field(default_factory=Index)
    clients: dict[Endpoint, aioredis.Redis] = field(default_factory=dict)
    """One client per Redis deployment (and credentials), shared by every StreamGroup using it."""
    used: dict[Endpoint, float] = field(default_factory=dict)
    histories: dict[Key, tuple[tuple[float, int], ...]] = field(default_factory=dict)
    parsed: dict[Key, tuple[tuple[str, int], StreamGroupSpec | SpecError]] = field(default_factory=dict)
    measured: set[Key] = field(default_factory=set)
    """StreamGroups resynced at least once since the operator started."""
    busy: set[Key] = field(default_factory=set)
    """StreamGroups a resync is working on now."""
    rolled: dict[Key, str | None] = field(default_factory=dict)
    """The Secrets version last applied to each Deployment's pod template (the watch may not show it yet)."""
    deploying: dict[Key, asyncio.Lock] = field(default_factory=dict)
    """Held while the Deployment of a StreamGroup is applied: a change handler and a resync never overlap there."""
    newcomers: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the watch shows a StreamGroup due for its first resync (see :func:`run`)."""
    writing: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONCURRENT_WRITES))
    """Bounds the StreamGroups being settled at once, over every round and first look."""
    server: Server | None = None
    resyncing: asyncio.Task[None] | None = None

    def streamgroup_seen(self, kind: str | None, body: dict[str, Any]) -> None:
        """What the watch showed, remembered; the resync woken for a StreamGroup it has never resynced."""
        self.index.streamgroup_seen(kind, body)
        key = body["metadata"]["namespace"], body["metadata"]["name"]
        if kind == "DELETED":
            self.forget(*key)
        elif due(body) and key not in self.measured:
            self.newcomers.set()

    def client(self, endpoint: Endpoint) -> aioredis.Redis:
        client = self.clients.get(endpoint)
        if client is None:
            client = self.clients[endpoint] = grouping.connect(endpoint)
        self.used[endpoint] = time.monotonic()
        return client

    async def client_for(self, namespace: str, spec: StreamGroupSpec) -> aioredis.Redis:
        return self.client(await resolve_endpoint(namespace, spec.redis))

    def spec_of(self, body: Mapping[str, Any]) -> StreamGroupSpec | SpecError:
        """The typed spec, parsed once per generation of the StreamGroup."""
        meta = body["metadata"]
        key, version = (meta["namespace"], meta["name"]), (str(meta.get("uid", "")), int(meta.get("generation", 0)))
        cached = self.parsed.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            spec: StreamGroupSpec | SpecError = parse_spec(dict(body.get("spec") or {}))
        except SpecError as exc:
            spec = exc
        self.parsed[key] = (version, spec)
        return spec

    async def close_idle_clients(self, idle: float) -> None:
        """Close the clients of Endpoints nobody used for ``idle`` seconds (a Secret rotated, StreamGroups gone)."""
        now = time.monotonic()
        for endpoint in [e for e, used in self.used.items() if now - used > idle]:
            self.used.pop(endpoint, None)
            client = self.clients.pop(endpoint, None)
            if client is not None:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    async def close(self) -> None:
        for endpoint in list(self.clients):
            self.used.pop(endpoint, None)
            with contextlib.suppress(RedisError, OSError):
                await self.clients.pop(endpoint).aclose()

    def deployment_lock(self, key: Key) -> asyncio.Lock:
        lock = self.deploying.get(key)
        if lock is None:
            lock = self.deploying[key] = asyncio.Lock()
        return lock

    def forget(self, namespace: str, name: str) -> None:
        self.measured.discard((namespace, name))
        self.rolled.pop((namespace, name), None)
        self.deploying.pop((namespace, name), None)
        self.histories.pop((namespace, name), None)
        self.parsed.pop((namespace, name), None)
        self.metrics.groups.snapshots.pop((namespace, name), None)
        self.recorder.forget(namespace, name)

    @classmethod
    def new(cls, settings: OperatorSettings) -> State:
        return cls(settings=settings, metrics=OperatorMetrics(CollectorRegistry()), recorder=Recorder(settings.events))


Secrets = Mapping[tuple[str, str], applying.Secret | None]
"""Secrets read, by (namespace, name); ``None`` for one that does not exist."""


async def resolve_endpoint(namespace: str, redis: RedisSpec, secrets: Secrets | None = None) -> Endpoint:
    """How to reach the StreamGroup's Redis, with the Secrets it names read from its namespace (or from ``secrets``)."""
    if secrets is None:
        secrets = await read_secrets({(namespace, name) for name in redis.secret_names()})
    found = {}
    for name in redis.secret_names():
        secret = secrets[(namespace, name)]
        found[name] = secret.data if secret is not None else None
    return redis.endpoint(namespace, found, operator=True)  # its own user when operatorCredentials names one


def pod_secret_versions(namespace: str, spec: StreamGroupSpec, secrets: Secrets) -> dict[str, SecretVersion | None]:
    """The versions of the Secrets the StreamGroup's pods read (:func:`.building.pod_secret_keys`), from ``secrets``."""
    versions: dict[str, SecretVersion | None] = {}
    for name in building.pod_secret_keys(spec):
        secret = secrets.get((namespace, name))
        versions[name] = secret.version if secret is not None else None
    return versions


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


def condition_of(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c.get("type") == kind), {})


def autoscaling_of(spec: StreamGroupSpec) -> scaling.Autoscaling | None:
    return scaling.Autoscaling.from_spec(spec.autoscaling) if spec.autoscaling is not None else None


def status_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch taking ``current`` to ``desired``: the fields that differ, ``None`` for those to remove.

    Empty when nothing changed: then nothing is written (a no-op PATCH still costs the API server a
    write path, and the operator a request, per StreamGroup per resync).
    """
    return {key: value for key, value in desired.items()
            if (key in current if value is None else current.get(key) != value)}


def numbers(sg: StreamGroupSpec, stats: grouping.GroupStats) -> dict[str, Any]:
    """The status fields of a measurement; ``None`` where Redis cannot tell (unknown is not zero: removed)."""
    age = stats.oldest_pending_age_seconds
    return {
        "lag": stats.lag,
        "pending": stats.pending,
        "oldestPendingAgeSeconds": round(age, 3) if age is not None else None,
        "consumers": stats.consumers,
        "deadLetterLength": stats.dead_letters,
        "partitionedStreams": partition_status(sg, stats) or None,
    }


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


async def rescaled(state: State, ref: Ref, current: int, desired: int, why: str) -> None:
    """A scaling decision taken: counted, logged and shown as a Normal Event, like the HPA's."""
    state.metrics.scalings.labels(ref.namespace, ref.name, "up" if desired > current else "down").inc()
    for_streamgroup(ref.namespace, ref.name).info(
        "scaled", extra={"sg": {"from": current, "to": desired, "reason": why}})
    await state.recorder.announce(ref, SUCCESSFUL_RESCALE, recording.rescale_message(desired, why))


Outcome = grouping.GroupStats | BaseException
"""A StreamGroup's measurement, or why there is none (a Redis error, a missing Secret)."""


@dataclass(frozen=True)
class Member:
    """A StreamGroup in a round: its body as the watch showed it and its parsed spec."""

    body: dict[str, Any]
    spec: StreamGroupSpec

    @property
    def key(self) -> Key:
        return self.body["metadata"]["namespace"], self.body["metadata"]["name"]


def due(body: Mapping[str, Any]) -> bool:
    """Resynced once its change handler has handled it (until then its group may not have been made yet)."""
    return (body.get("status") or {}).get("observedGeneration") is not None


async def run(state: State) -> None:
    """Resync every StreamGroup every ``--resync-interval`` until cancelled; a round that fails is logged.

    Beside the rounds, StreamGroups the watch shows handled for the first time (just created, or
    seen after a restart) are resynced on their own, gathered for a moment (:func:`first_look`), so
    that a new StreamGroup shows its lag and gets its replicas within a second or so of being
    handled, not at the next round nor behind a long one. A StreamGroup is in one of them at a time.
    """
    await asyncio.gather(_rounds(state), _first_looks(state))


async def _rounds(state: State) -> None:
    interval = state.settings.watch.resync_interval
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
        started = loop.time()
        try:
            await resync_all(state)
            await state.close_idle_clients(max(60.0, CLIENT_IDLE_ROUNDS * interval))
        except Exception:
            LOGGER.exception("resync failed")


async def _first_looks(state: State) -> None:
    batches: set[asyncio.Task[None]] = set()
    try:
        while True:
            await state.newcomers.wait()
            await asyncio.sleep(first_look(state.settings.watch.resync_interval))  # a burst makes one batch
            state.newcomers.clear()
            # Not awaited: a slow write in one batch must not hold back the newcomers of the next.
            batch = asyncio.create_task(_first_look(state))
            batches.add(batch)
            batch.add_done_callback(batches.discard)
    finally:
        for batch in batches:
            batch.cancel()
        await asyncio.gather(*batches, return_exceptions=True)


async def _first_look(state: State) -> None:
    try:
        await resync_all(state, only_new=True)
    except Exception:
        LOGGER.exception("resync failed")


def first_look(interval: float) -> float:
    """How long newly handled StreamGroups are gathered before they are resynced together."""
    return min(1.0, interval / 4)


async def resync_all(state: State, only_new: bool = False) -> None:
    members: list[Member] = []
    for body in state.index.live_streamgroups():
        spec = state.spec_of(body)
        if due(body) and not isinstance(spec, SpecError):  # an unusable spec is the change handler's to report
            member = Member(body, spec)
            if member.key not in state.busy and not (only_new and member.key in state.measured):
                members.append(member)
    if not members:
        return
    keys = {m.key for m in members}
    state.measured |= keys
    state.busy |= keys
    try:
        await _resync(state, members)
    finally:
        state.busy -= keys


async def _resync(state: State, members: list[Member]) -> None:
    secrets = await read_secrets({(m.key[0], name) for m in members for name in m.spec.redis.secret_names()})
    outcomes: dict[Key, Outcome] = {}
    on: dict[Endpoint, list[Member]] = {}
    for member in members:
        try:
            endpoint = await resolve_endpoint(member.key[0], member.spec.redis, secrets)
        except (SecretMissing, SpecError) as exc:
            outcomes[member.key] = exc
            continue
        on.setdefault(endpoint, []).append(member)
    clients: dict[Key, aioredis.Redis] = {}
    for endpoint, sharing in on.items():
        client = state.client(endpoint)
        clients.update((m.key, client) for m in sharing)
    measured = await asyncio.gather(*(measure(clients[sharing[0].key], sharing) for sharing in on.values()))
    for results in measured:
        outcomes.update(results)

    async def settle(member: Member) -> None:
        outcome = outcomes.get(member.key)
        if outcome is None:
            return  # not measured (an error of the client itself, logged)
        async with state.writing:
            try:
                await resync_one(state, member, outcome, clients.get(member.key), secrets)
            except Exception as exc:  # an API call that failed: tried again next round
                state.metrics.reconciles.labels("resync", "error").inc()
                for_streamgroup(*member.key).warning("resync failed", extra={"sg": {
                    "error": f"{type(exc).__name__}: {str(exc)[:300]}"}})

    await asyncio.gather(*(settle(member) for member in members))


async def read_secrets(names: set[tuple[str, str]]) -> dict[tuple[str, str], applying.Secret | None]:
    """Each Secret (namespace, name) once for the round, however many StreamGroups name it."""
    reading = asyncio.Semaphore(CONCURRENT_WRITES)

    async def read(namespace: str, name: str) -> applying.Secret | None:
        async with reading:
            return await applying.read_secret(namespace, name)

    ordered = sorted(names)
    values = await asyncio.gather(*(read(namespace, name) for namespace, name in ordered))
    return dict(zip(ordered, values, strict=True))


async def measure(client: aioredis.Redis, members: list[Member]) -> dict[Key, Outcome]:
    """The numbers of every StreamGroup on one Endpoint, in one pipeline; a failed connection fails them all."""
    targets = [grouping.Target(m.spec.stream_keys, m.spec.group, m.spec.dead_letter_streams) for m in members]
    try:
        results: list[Outcome] = list(await grouping.measure_all(client, targets))
    except (RedisError, OSError) as exc:
        results = [exc] * len(members)
    except Exception:  # not Redis's answer: the client could not be used (logged, the round goes on)
        LOGGER.exception("cannot measure", extra={"sg": {"streamgroups": len(members)}})
        return {}
    return {m.key: result for m, result in zip(members, results, strict=True)}


async def deployment_of(state: State, namespace: str, name: str) -> Replicas | None:
    """The Deployment's replicas from the watch; read from the API server when the watch has not shown it."""
    cached = state.index.deployments.get((namespace, name))
    if cached is not None:
        return cached
    body = await applying.read_deployment(namespace, name)
    return Replicas.of(body) if body is not None else None


async def resync_one(state: State, member: Member, outcome: Outcome, client: aioredis.Redis | None,
                     secrets: Secrets | None = None) -> None:
    """One StreamGroup's Events, scaling, consumer removal, pods rolled for new Secrets, and status.

    From its measurement, and the Secrets the round read (none: not looked at).
    """
    body, sg = member.body, member.spec
    meta = body["metadata"]
    status: Mapping[str, Any] = body.get("status") or {}
    namespace, name = member.key
    ref = Ref(namespace, name, str(meta.get("uid", "")))
    updates: list[Condition] = []
    stats: grouping.GroupStats | None = None
    checked = set(REDIS_REASONS)
    found: dict[str, str] = {}
    if isinstance(outcome, grouping.GroupStats):
        stats = outcome
        updates.append(Condition(REDIS_REACHABLE, True, "Connected", "Redis answered"))
        checked.add(GROUP_LOST)
        if stats.group_ready:
            updates.append(Condition(GROUP_READY, True, "Exists", f"group {sg.group!r} present"))
        else:
            missing = [s.stream for s in stats.streams if not s.exists]
            gone = Condition(GROUP_READY, False, "GroupMissing", f"no group on {', '.join(missing)}")
            updates.append(gone)
            # Lost, not "not made yet": it was there (a change handler may still be creating it otherwise).
            if condition_of(status, GROUP_READY).get("status") == "True" or state.recorder.is_open(ref, GROUP_LOST):
                found[GROUP_LOST] = f"consumer group {sg.group!r} lost: {gone.message}"
    else:
        if group_vanished(outcome):
            # Redis answered: the group went away between two commands (NOGROUP).
            updates.append(Condition(REDIS_REACHABLE, True, "Connected", "Redis answered"))
            updates.append(Condition(GROUP_READY, False, "GroupMissing", str(outcome)[:300]))
            checked.add(GROUP_LOST)
            found[GROUP_LOST] = f"consumer group {sg.group!r} lost: {str(outcome)[:300]}"
        else:
            condition = redis_condition(outcome)
            updates.append(condition)
            reason, message = recording.redis_problem(condition)
            found[reason] = message
        state.metrics.redis_errors.labels(namespace, name).inc()
        state.metrics.reconciles.labels("resync", "error").inc()
    await state.recorder.observe(ref, checked, found)

    deployment = await deployment_of(state, namespace, name)
    current = deployment.wanted if deployment is not None else 0
    desired = current
    new: dict[str, Any] = {}
    writes: list[Coroutine[Any, Any, Any]] = []  # the Event of a rescale goes with the status
    policy = autoscaling_of(sg)
    if stats is not None and deployment is not None:
        if policy is not None:
            history = state.histories.get(member.key, ())
            decision = scaling.decide(stats.lag, stats.pending, current, history, policy, time.monotonic())
            state.histories[member.key] = decision.history
            desired = decision.replicas
            new["desiredReplicas"] = desired
        else:
            desired = sg.replicas
        if desired != current:
            await applying.scale_deployment(namespace, name, desired)
            new["lastScaleTime"] = now_text()
            writes.append(rescaled(state, ref, current, desired,
                                   scaling.explain(desired, current, stats.lag, stats.pending, policy)))
        if client is not None:
            await clean_consumers(state, client, namespace, name, sg, stats)
    if deployment is not None and secrets is not None:
        await roll_on_new_secrets(state, member, deployment, desired, secrets)

    if deployment is None:
        # A template the API server refused stays the reason until the spec changes (see the change handler).
        if condition_of(status, DEPLOYMENT_READY).get("reason") != "InvalidTemplate":
            updates.append(Condition(DEPLOYMENT_READY, False, "Missing", "the Deployment does not exist yet"))
    else:
        new["readyReplicas"] = deployment.ready
        if desired == 0:
            updates.append(Condition(DEPLOYMENT_READY, True, "ScaledToZero", "no replicas needed"))
        elif deployment.ready >= desired:
            updates.append(Condition(DEPLOYMENT_READY, True, "ReplicasReady",
                                     f"{deployment.ready}/{desired} replicas ready"))
        else:
            updates.append(Condition(DEPLOYMENT_READY, False, "ReplicasNotReady",
                                     f"{deployment.ready}/{desired} replicas ready"))

    new["replicas"] = desired
    new["selector"] = building.selector_string(name)
    if stats is not None:
        new.update(numbers(sg, stats))
        state.metrics.groups.snapshots[member.key] = Snapshot(
            namespace, name, sg.group, stats, new.get("desiredReplicas"), desired,
            sg.partitioned_streams)
        state.metrics.reconciles.labels("resync", "ok").inc()
    new["conditions"] = merge(list(status.get("conditions", [])), updates,
                              int(status.get("observedGeneration") or meta.get("generation", 0)))
    changes = status_changes(status, new)
    if changes:
        writes.append(applying.patch_status(namespace, name, changes))
    await asyncio.gather(*writes)


def template_handled(body: Mapping[str, Any]) -> bool:
    """The change handler applied the Deployment of this generation of the StreamGroup, and it was accepted."""
    status = body.get("status") or {}
    return (status.get("observedGeneration") == (body.get("metadata") or {}).get("generation")
            and condition_of(status, DEPLOYMENT_READY).get("reason") != "InvalidTemplate")


async def roll_on_new_secrets(state: State, member: Member, deployment: Replicas, replicas: int,
                              secrets: Secrets) -> None:
    """Apply the Deployment again when a Secret its pods read has a new version: one write, and the pods roll.

    The pods read the password when they start (an env ``secretKeyRef``), so a changed Secret reaches
    them only through new pods; the Deployment controller makes them when the pod template changes,
    here its :data:`.building.SECRETS_VERSION` annotation. Nothing is written while the versions are
    those the Deployment shows (or those just applied, which the watch may not show yet). A spec the
    change handler has not applied yet, or whose template the API server refused, is left to it.
    """
    namespace, name = member.key
    versions = pod_secret_versions(namespace, member.spec, secrets)
    version = building.secrets_version(namespace, member.spec, versions, deployment.secrets)
    if version == deployment.secrets or (member.key in state.rolled and state.rolled[member.key] == version):
        return
    async with state.deployment_lock(member.key):
        # The latest body, under the lock: a change handler for a newer generation is shown by the watch
        # before it runs, so this never applies an older template over the one it applied.
        latest = state.index.streamgroups.get(member.key)
        if (latest is None or not template_handled(latest)
                or (latest.get("metadata") or {}).get("generation") != member.body["metadata"].get("generation")):
            return
        body = building.build_deployment(member.body["metadata"], member.spec, replicas, state.settings.sidecar,
                                         secrets=version)
        await applying.apply_deployment(body)
        state.rolled[member.key] = version
    for_streamgroup(namespace, name).info("a Secret of its pods changed: Deployment applied, its pods roll",
                                          extra={"sg": {"secrets": sorted(versions)}})


async def clean_consumers(state: State, client: aioredis.Redis, namespace: str, name: str, spec: StreamGroupSpec,
                          stats: grouping.GroupStats) -> None:
    """Remove consumers of no live pod; the pods are listed only when some consumer is idle long enough to be one."""
    idle_limit_ms = int(state.settings.watch.consumer_idle_limit * 1000)
    if not grouping.idle_consumers(stats, idle_limit_ms):
        return
    live = await applying.live_pod_names(namespace, name)
    cleanup = await grouping.clean_consumers(client, stats, spec.group, live, idle_limit_ms,
                                             int(spec.claim.min_idle_seconds * 1000))
    if cleanup.removed:
        state.metrics.consumers_removed.labels(namespace, name).inc(len(cleanup.removed))
        for_streamgroup(namespace, name).info("removed consumers of no live replica", extra={"sg": {
            "consumers": cleanup.removed, "entries_handed_over": cleanup.handed_over}})
