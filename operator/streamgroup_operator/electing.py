"""Leader election on a ``coordination.k8s.io`` Lease: of the operator's replicas one acts, the others stand by.

Why not kopf's peering: it has no per-object locks, and it pauses every peer of the same priority
when it sees another, so it decides who must not act, never who may. Why a Lease, the way
client-go's leaderelection uses one:

* the holder writes ``renewTime`` every ``retry_period``. A standby never judges the holder by the
  times written in the Lease (another machine's clock) but by its own: it takes the Lease over only
  once it has seen it unchanged for ``leaseDurationSeconds``, counted from the moment it first saw it
  as it is;
* every write carries the resourceVersion it was decided on, so of two replicas deciding at once one
  write wins and the other is refused (409 Conflict) and reads again;
* the leader stops acting once it has not renewed for ``renew_deadline``, counted from the moment it
  *sent* its last successful renewal, which the standby saw no earlier. The renew deadline being
  shorter than the lease, the leader has stopped before any standby may take over. It stops by
  ending the process at once (exit status 1, no graceful stop in which handlers could still write),
  as controller-runtime does; the Deployment restarts it, as a standby;
* a leader that stops on purpose (SIGTERM) releases the Lease once kopf has stopped and no API call
  of its own is under way: no holder and a one-second duration, as client-go's ``ReleaseOnCancel``,
  so the standby takes over at its next attempt rather than a lease duration later.

The decisions (:func:`observe`, :func:`decide`, :func:`released`) are pure: the Lease as read, the
clocks and our identity in, what to write out. :class:`Elector` is the thin shell around them: it
reads and writes the Lease through the kubernetes client as raw JSON, in threads of its own (a
renewal queued behind the operator's other API calls would be a leadership lost), and a watchdog
thread ends the process at the deadline even if the event loop were stuck.

A Lease is not a fencing token: a write the old leader sent just before it stopped may still reach
the API server after that. The margin between the renew deadline and the lease duration (5 s by
default) is what keeps the two apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import math
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from prometheus_client import Gauge

from streamgroup_core.logs import Incident

from .config import ConfigError, ElectionSettings
from .loggers import LOGGER

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
API_VERSION = "coordination.k8s.io/v1"
T = TypeVar("T")


# --- who and where --------------------------------------------------------------------------


def lease_namespace(settings: ElectionSettings, environ: Mapping[str, str],
                    read: Callable[[str], str | None]) -> str:
    """The Lease's namespace: the one given, else the pod's; :class:`ConfigError` when there is none."""
    found = settings.namespace or environ.get("POD_NAMESPACE", "").strip() or (read(SERVICE_ACCOUNT_NAMESPACE) or "")
    if not found.strip():
        raise ConfigError("leader election needs a namespace for its Lease and this is not a pod (no POD_NAMESPACE, "
                          f"no {SERVICE_ACCOUNT_NAMESPACE}): set --leader-elect-namespace / "
                          "SG_OPERATOR_LEADER_ELECT_NAMESPACE, or run a single operator with --leader-elect false")
    return found.strip()


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError:
        return None


def identity(environ: Mapping[str, str], hostname: str | None = None, suffix: str | None = None) -> str:
    """The pod's name (or the host's) and a random suffix: a restarted process is never taken for its former self."""
    name = environ.get("POD_NAME", "").strip() or hostname or socket.gethostname()
    return f"{name}_{suffix or secrets.token_hex(4)}"


# --- the pure decisions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Terms:
    """The durations of an election, in seconds."""

    lease_duration: float
    renew_deadline: float
    retry_period: float

    @classmethod
    def of(cls, settings: ElectionSettings) -> Terms:
        return cls(settings.lease_duration, settings.renew_deadline, settings.retry_period)

    @property
    def lease_seconds(self) -> int:
        """What the Lease says (whole seconds): never shorter than the lease duration."""
        return max(1, math.ceil(self.lease_duration))


@dataclass(frozen=True)
class Lease:
    """The election fields of a Lease as read, and the resourceVersion they were read at."""

    version: str
    holder: str
    """``""`` when nobody holds it (released)."""
    duration: int | None
    acquired: str | None
    renewed: str | None
    transitions: int

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Lease:
        spec = body.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        return cls(
            version=str((body.get("metadata") or {}).get("resourceVersion", "")),
            holder=str(spec.get("holderIdentity") or ""),
            duration=int(duration) if duration is not None else None,
            acquired=spec.get("acquireTime"),
            renewed=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )


@dataclass(frozen=True)
class Seen:
    """The Lease as we last read it (``None``: there is none), and since when, by our monotonic clock, it is so."""

    lease: Lease | None
    since: float


def observe(previous: Seen | None, lease: Lease | None, now: float) -> Seen:
    """What we know after a read: the time only restarts when the Lease changed (any field, or its version)."""
    if previous is not None and previous.lease == lease:
        return previous
    return Seen(lease, now)


class Act(enum.Enum):
    CREATE = "create"
    """No Lease: create it, held by us."""
    ACQUIRE = "acquire"
    """Released, or unchanged for its whole duration: take it over."""
    RENEW = "renew"
    """Ours: write a new renewTime."""
    WAIT = "wait"
    """Another's, and still valid: stand by."""


@dataclass(frozen=True)
class Decision:
    act: Act
    holder: str
    """Who holds the Lease once the decision is carried out."""
    spec: dict[str, Any] | None = None
    """The Lease's spec to write; ``None`` for :attr:`Act.WAIT`."""
    expires: float | None = None
    """For :attr:`Act.WAIT`: when, by our monotonic clock, the holder's lease runs out unless renewed."""


def micro_time(wall: dt.datetime) -> str:
    """A Kubernetes MicroTime: UTC with microseconds."""
    return wall.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _spec(holder: str, seconds: int, acquired: str | None, renewed: str, transitions: int) -> dict[str, Any]:
    return {"holderIdentity": holder, "leaseDurationSeconds": seconds, "acquireTime": acquired,
            "renewTime": renewed, "leaseTransitions": transitions}


def decide(seen: Seen, me: str, now: float, wall: dt.datetime, terms: Terms) -> Decision:
    """Given the Lease as seen, our identity and the clocks (monotonic ``now``, ``wall`` for what is written)."""
    stamp = micro_time(wall)
    lease = seen.lease
    if lease is None:
        return Decision(Act.CREATE, me, _spec(me, terms.lease_seconds, stamp, stamp, 0))
    if lease.holder == me:
        return Decision(Act.RENEW, me, _spec(me, terms.lease_seconds, lease.acquired or stamp, stamp,
                                             lease.transitions))
    expires = seen.since + (lease.duration if lease.duration is not None else terms.lease_duration)
    if lease.holder and now < expires:
        return Decision(Act.WAIT, lease.holder, expires=expires)
    return Decision(Act.ACQUIRE, me, _spec(me, terms.lease_seconds, stamp, stamp, lease.transitions + 1))


def released(lease: Lease, wall: dt.datetime) -> dict[str, Any]:
    """The spec that gives a Lease up: no holder and a one-second duration, so the next attempt of anyone takes it."""
    stamp = micro_time(wall)
    return _spec("", 1, stamp, stamp, lease.transitions)


def deadline(sent: float, terms: Terms) -> float:
    """When a leader must have stopped acting, given when it sent its last successful write of the Lease."""
    return sent + terms.renew_deadline


# --- the shell ------------------------------------------------------------------------------


def exit_at_once() -> None:
    """End the process now: no graceful stop of kopf, whose handlers could still write as another leader starts."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(1)


class Conflict(Exception):
    """The Lease changed between our read and our write, twice in a row."""


class Elector:
    """Acquires, keeps and releases the Lease; :meth:`ready` is what ``/readyz`` says of it.

    ``lost`` is called (from the watchdog thread or the event loop) once leadership is lost, after the
    ``lost leadership`` line: by default it ends the process with exit status 1.
    """

    def __init__(self, settings: ElectionSettings, namespace: str, me: str, leader: Gauge,
                 lost: Callable[[], None] = exit_at_once) -> None:
        self.terms = Terms.of(settings)
        self.namespace = namespace
        self.name = settings.lease_name
        self.me = me
        self.leading = False
        self.answered = False
        """The last attempt got an answer from the API server about the Lease."""
        self._gauge = leader
        self._lost = lost
        self._seen: Seen | None = None
        self._body: dict[str, Any] | None = None
        """The Lease as last read or written, its metadata kept for the next write."""
        self._deadline = 0.0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._gone = False
        self._waiting_for: str | None = None
        self._trouble = Incident(LOGGER, "reaching the Lease")
        self._threads = ThreadPoolExecutor(2, thread_name_prefix="lease")
        self._client: Any = None
        # A request may take the whole renew deadline: on a loaded API server a slow renewal that succeeds is
        # worth more than a second try. The watchdog, not this timeout, keeps the deadline.
        self._timeout = self.terms.renew_deadline
        leader.set(0)

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    def ready(self) -> dict[str, bool]:
        return {"lease": self.answered}

    # -- the three phases

    async def acquire(self, stopping: asyncio.Event) -> bool:
        """Stand by until we hold the Lease (``True``), or until ``stopping`` is set first (``False``)."""
        while not stopping.is_set():
            decision = await self._attempt()
            if decision is not None and decision.act is not Act.WAIT:
                self._lead(decision)
                return True
            if decision is not None and decision.holder != self._waiting_for:
                self._waiting_for = decision.holder
                LOGGER.info("standby", extra={"sg": {"holder": decision.holder, "identity": self.me,
                                                     "lease": self.lease}})
            # Jittered, so that standbys started together do not keep asking in step.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.terms.retry_period * random.uniform(1.0, 1.2))
        return False

    async def keep(self) -> None:
        """Renew every retry period until cancelled; a Lease found held by another is leadership lost at once."""
        while True:
            await asyncio.sleep(self.terms.retry_period)
            decision = await self._attempt()
            if decision is not None and decision.act is Act.WAIT:
                self._lose(f"the Lease is held by {decision.holder}", decision.holder)
                return

    async def release(self, settled: bool = True) -> None:
        """Give the Lease up once nothing of ours acts any more; stops the watchdog.

        ``settled`` false: some API call of ours may still be under way, so the Lease is left to expire.
        """
        self._stopped.set()
        if not self.leading or self._body is None:
            return
        self.leading = False
        self._gauge.set(0)
        if not settled:
            LOGGER.warning("API calls still under way: the Lease is left to expire", extra={"sg": {
                "lease": self.lease}})
            return
        try:
            for fresh in (False, True):
                if fresh:
                    self._remember(await self._call(self._read))
                    if self._body is None or Lease.of(self._body).holder != self.me:
                        return  # no longer ours to release
                try:
                    await self._call(self._write, released(Lease.of(self._body), now_utc()))
                except ApiException as exc:
                    if exc.status != 409 or fresh:
                        raise
                    continue
                LOGGER.info("released the Lease", extra={"sg": {"identity": self.me, "lease": self.lease}})
                return
        except Exception as exc:  # the API server's refusal or silence alike: the Lease then expires on its own
            LOGGER.warning("could not release the Lease; it expires on its own", extra={"sg": {
                "lease": self.lease, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}})
        finally:
            self._threads.shutdown(wait=False)

    # -- one attempt

    async def _attempt(self) -> Decision | None:
        """Read, decide, write; the decision carried out, or ``None`` when the API server did not answer."""
        try:
            decision = await self._try()
        except Exception as exc:  # any failure to reach the Lease (refused, timed out, conflicting) is one attempt
            self.answered = False
            self._trouble.failed(exc)
            return None
        self.answered = True
        self._trouble.recovered()
        return decision

    async def _try(self) -> Decision:
        # The leader knows the Lease: it wrote it last. A 409 says otherwise, and it reads.
        fresh = not (self.leading and self._body is not None)
        for attempt in range(2):
            if fresh:
                self._remember(await self._call(self._read))
            assert self._seen is not None
            sent = time.monotonic()
            decision = decide(self._seen, self.me, sent, now_utc(), self.terms)
            if decision.spec is None:
                return decision
            try:
                body = await self._call(self._write, decision.spec)
            except ApiException as exc:
                # 409: it changed since we read it (or was created meanwhile); 404: it was deleted. Read again.
                if exc.status not in (404, 409) or attempt:
                    raise
                fresh = True
                continue
            self._remember(body)
            if self.leading:
                self._extend(deadline(sent, self.terms))
            else:
                self._deadline = deadline(sent, self.terms)
            return decision
        raise Conflict(f"the Lease {self.lease} changed under every write")

    def _remember(self, body: dict[str, Any] | None) -> None:
        self._body = body
        self._seen = observe(self._seen, Lease.of(body) if body is not None else None, time.monotonic())

    # -- leading and losing

    def _lead(self, decision: Decision) -> None:
        self.leading = True
        self._gauge.set(1)
        transitions = decision.spec.get("leaseTransitions") if decision.spec else None
        LOGGER.info("became leader", extra={"sg": {"holder": self.me, "lease": self.lease,
                                                   "transitions": transitions}})
        threading.Thread(target=self._watch, name="lease-watchdog", daemon=True).start()

    def _extend(self, until: float) -> None:
        with self._lock:
            self._deadline = max(self._deadline, until)

    def _watch(self) -> None:
        """Ends leadership at the deadline, whatever the event loop is doing."""
        while True:
            with self._lock:
                remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                self._lose(f"not renewed within the renew deadline ({self.terms.renew_deadline:g}s)", None)
                return
            if self._stopped.wait(remaining):
                return

    def _lose(self, why: str, holder: str | None) -> None:
        with self._lock:
            if self._gone or self._stopped.is_set():
                return
            self._gone = True
        self.leading = False
        self._gauge.set(0)
        LOGGER.error("lost leadership", extra={"sg": {"identity": self.me, "holder": holder or "(unknown)",
                                                      "lease": self.lease, "reason": why}})
        self._lost()

    # -- the API calls, raw JSON in threads of their own

    async def _call(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, call, *args)

    def _api(self) -> Any:
        if self._client is None:
            config: Any = k8s.Configuration.get_default_copy()
            config.retries = 0  # one request per attempt: the election loop is the retry
            config.connection_pool_maxsize = 2
            self._client = k8s.CoordinationV1Api(k8s.ApiClient(config))
        return self._client

    def _read(self) -> dict[str, Any] | None:
        try:
            reply = self._api().read_namespaced_lease(self.name, self.namespace, _preload_content=False,
                                                      _request_timeout=self._timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _json(reply)

    def _write(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Create the Lease, or replace it at the resourceVersion last seen (the API server refuses it if it moved)."""
        if self._body is None:
            body = {"apiVersion": API_VERSION, "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
            return _json(self._api().create_namespaced_lease(self.namespace, body, _preload_content=False,
                                                             _request_timeout=self._timeout))
        body = {**self._body, "spec": spec}
        return _json(self._api().replace_namespaced_lease(self.name, self.namespace, body, _preload_content=False,
                                                          _request_timeout=self._timeout))


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json(reply: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(reply.data)
    return parsed
