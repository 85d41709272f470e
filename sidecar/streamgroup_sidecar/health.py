"""What the sidecar knows about what it depends on: Redis, its consumer group, the app, its event loop.

``/readyz`` and the ``streamgroup_sidecar_ready`` gauge report the first three; the gauge is set
whenever one of them changes, so a scrape tells the truth even when nobody asks ``/readyz``.
``/healthz`` reports the last: it fails once the event loop has not run for
:data:`LOOP_STALL_LIMIT` seconds (the health server answers from its own thread).

Every unit that talks to Redis reports here how its calls went. A lost connection is one
incident whichever unit notices it first, logged once when it starts and once when it ends;
other errors (a missing group, a script error) are logged by the caller's own incident. A
command or key Redis refuses to the sidecar's ACL user (NOPERM) makes it not ready until that
same call succeeds: ``/readyz`` names the command and keys, and the entries involved stay pending. In cluster
mode, slots changing owners (CLUSTERDOWN, TRYAGAIN, redirections redis-py gave up on, a cluster it
cannot discover) count as Redis being down too (:func:`.commands.is_outage`), and Redis is back only
once no call has failed for a whole back-off (:data:`CLUSTER_SETTLE`): with one primary down the
others keep answering, and the outage is still one incident. When a replica answers
at Redis' address (a failover moved the primary), every connection is dropped so that the next ones
resolve the name again and reach the new primary; in cluster mode the client does that itself (a
MOVED reply or a lost connection makes it read the slots' owners again), so nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from streamgroup_core.logs import Incident
from streamgroup_core.permissions import PermissionDenied, is_denied
from streamgroup_core.redaction import hide_url_passwords

from . import commands
from .config import RetrySettings
from .delivering import Deliverer
from .metrics import Metrics

logger = logging.getLogger("streamgroup.sidecar")

# Back-off for Redis operations (connection loss, restarts): quick first, then calm.
REDIS_RETRY = RetrySettings(initial=0.1, maximum=5.0, multiplier=2.0, jitter=0.2)
# Cluster mode: Redis counts as recovered once a call succeeds and none has failed for this long, the
# longest back-off between two retries: a unit still failing would have failed again meanwhile. (One
# primary down while the others answer would otherwise make Redis fail and recover at every retry.)
CLUSTER_SETTLE = REDIS_RETRY.maximum * (1 + REDIS_RETRY.jitter)
# /healthz fails (and the kubelet restarts the pod) once the event loop has not run for this long.
LOOP_STALL_LIMIT = 30.0


class Health:
    def __init__(self, metrics: Metrics, redis: aioredis.Redis, cluster: bool = False) -> None:
        """``cluster``: ``redis`` is a Redis Cluster client (it has no one pool of connections to drop)."""
        self._metrics = metrics
        self._redis = redis
        self._cluster = cluster
        self._settle = CLUSTER_SETTLE if cluster else 0.0
        self._outage_at = 0.0
        """When a call last failed because Redis (or part of the cluster) was down."""
        self._redis_ok = False
        self._groups_ok = False
        self._app_up = asyncio.Event()
        self._app_up.set()
        self._app_down = asyncio.Event()
        self._beat = time.monotonic()
        """When the event loop last ran the heartbeat."""
        self._dropped_at = 0.0
        self._drop_task: asyncio.Future[None] | None = None
        self._denied: dict[Incident, tuple[str, str]] = {}
        """Calls Redis refuses to this user, by the incident of the unit that makes them: (operation, what)."""
        self._redis_incident = Incident(logger, "reaching Redis")
        self._app_incident = Incident(logger, "reaching the app")
        self._show()

    # --- readiness ---------------------------------------------------------------------------

    @property
    def redis_ok(self) -> bool:
        return self._redis_ok

    @property
    def groups_ok(self) -> bool:
        return self._groups_ok

    @property
    def app_up(self) -> bool:
        return self._app_up.is_set()

    def readiness(self) -> dict[str, bool]:
        """The checks of ``/readyz`` (called from the health server's thread)."""
        return {"redis": self._redis_ok, "group": self._groups_ok, "app": self._app_up.is_set(),
                "permissions": not self._denied}

    def problems(self) -> list[str]:
        """What ``/readyz`` says besides its checks: each refused command, with its keys."""
        return [f"Redis refused {what} (NOPERM)" for _, what in list(self._denied.values())]

    def _show(self) -> None:
        ready = self._redis_ok and self._groups_ok and self._app_up.is_set() and not self._denied
        self._metrics.ready.set(1 if ready else 0)

    # --- Redis ---------------------------------------------------------------------------------

    def redis_failed(self, operation: str, incident: Incident, exc: BaseException) -> None:
        """A Redis call failed: count it, log it (once per incident), and mark Redis down if it is."""
        self._metrics.redis_errors.labels(operation).inc()
        if is_denied(exc):
            what = exc.summary if isinstance(exc, PermissionDenied) else operation
            if self._denied.get(incident) != (operation, what):
                self._denied[incident] = (operation, what)
                self._metrics.permission_denied.labels(operation).set(1)
                self._show()
            incident.failed(exc)
            return
        if commands.is_failover(exc):
            self._drop_connections()
        if commands.is_outage(exc):
            self._outage_at = time.monotonic()
            self._redis_incident.failed(exc)
            if self._redis_ok:
                self._redis_ok = False
                self._show()
        else:
            incident.failed(exc)

    def redis_recovered(self, incident: Incident) -> None:
        """A Redis call that writes (or blocks on the primary) succeeded: Redis is fine, and so is ``incident``.

        In cluster mode Redis is fine only once no call has failed for :data:`CLUSTER_SETTLE` seconds.
        """
        denied = self._denied.pop(incident, None)
        if denied is not None:
            if all(operation != denied[0] for operation, _ in self._denied.values()):
                self._metrics.permission_denied.labels(denied[0]).set(0)
            self._show()
        if self._settle and time.monotonic() - self._outage_at < self._settle:
            incident.recovered()
            return
        if not self._redis_ok:
            self._redis_ok = True
            self._show()
        self._redis_incident.recovered()
        incident.recovered()

    def _drop_connections(self) -> None:
        if self._cluster:
            return  # it finds the new owners itself: MOVED replies follow a failover
        now = time.monotonic()
        if now - self._dropped_at < 1.0:
            return  # once a second at most, whichever unit noticed
        self._dropped_at = now
        self._metrics.reconnects.inc()
        # Kept referenced until done (the loop holds only weak references to tasks).
        self._drop_task = asyncio.ensure_future(self._redis.connection_pool.disconnect(inuse_connections=True))

    def groups_ready(self) -> None:
        if not self._groups_ok:
            self._groups_ok = True
            self._show()

    def groups_lost(self) -> None:
        if self._groups_ok:
            self._groups_ok = False
            self._show()

    # --- the app -------------------------------------------------------------------------------

    def app_state(self, up: bool, why: str = "") -> None:
        """What the last attempt (or probe) said about the app; called once per request."""
        if up:
            if not self._app_up.is_set():
                self._app_up.set()
                self._app_down.clear()
                self._app_incident.recovered()
                self._show()
        else:
            self._app_incident.failed(why)
            if self._app_up.is_set():
                self._app_up.clear()
                self._app_down.set()
                self._show()

    async def wait_app_up(self) -> None:
        await self._app_up.wait()

    async def wait_app_down(self) -> None:
        await self._app_down.wait()

    async def probe_app(self, deliverer: Deliverer, url: str, interval: float) -> None:
        """With ``--app-health-url``: probe it every ``interval`` seconds; it alone decides whether the app is up."""
        while True:
            self.app_state(await deliverer.probe(url), f"{hide_url_passwords(url)} did not answer 2xx")
            await asyncio.sleep(interval)

    # --- the event loop ------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(1.0)

    def liveness(self) -> dict[str, bool]:
        """Alive while the event loop keeps turning (called from the health server's thread)."""
        return {"event_loop": time.monotonic() - self._beat < LOOP_STALL_LIMIT}
