"""Kubernetes Events about StreamGroups, written by the operator itself (the decisions are :mod:`.recording`'s).

kopf is not asked to post anything: in kopf 1.45 log messages become Events only with
``settings.posting.loggers`` (off by default, which is why a StreamGroup whose Redis was down
showed ``Events: <none>``), and each of its posts is a new Event, one per failed resync. The
:class:`Recorder` keeps one Event per incident with a count instead (see :mod:`.recording`),
through the core/v1 events API (the calls are :mod:`.applying`'s): create, and patch of the count.
A write that fails is logged and retried at the next observation after the repeat interval; it
never fails a handler.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Collection, Mapping

from kubernetes.client.exceptions import ApiException

from . import recording
from .applying import create_event, patch_event
from .conditions import now_text
from .config import EventSettings
from .loggers import for_streamgroup
from .recording import Incident, Ref


class Recorder:
    """The open incidents of every StreamGroup, and the Events that show them."""

    def __init__(self, settings: EventSettings, instance: str | None = None) -> None:
        self.repeat = settings.repeat_interval
        self.instance = instance or socket.gethostname()
        self.ledgers: dict[tuple[str, str], dict[str, Incident]] = {}

    def is_open(self, ref: Ref, reason: str) -> bool:
        return reason in self.ledgers.get((ref.namespace, ref.name), {})

    async def observe(self, ref: Ref, checked: Collection[str], found: Mapping[str, str]) -> None:
        """Record what an observation of ``checked`` reasons found; write the Events that calls for."""
        key = (ref.namespace, ref.name)
        before = self.ledgers.get(key, {})
        if not found and not before:
            return  # the common case, nothing wrong and nothing was: no work at all
        now = time.monotonic()
        ledger, writes = recording.observe(before, checked, found, now, now_text(), self.repeat,
                                           lambda: f"{ref.name}.{time.time_ns():x}")
        self._set(key, ledger)
        log = for_streamgroup(ref.namespace, ref.name)
        for reason in ledger.keys() - before.keys():
            log.warning(ledger[reason].message, extra={"sg": {"event": reason}})
        for reason in before.keys() - ledger.keys():
            log.info("incident over", extra={"sg": {"event": reason, "count": before[reason].count}})
        for write in writes:
            if await self._write(ref, write):
                self._set(key, recording.confirm(self.ledgers.get(key, {}), write.incident))

    async def announce(self, ref: Ref, reason: str, message: str) -> None:
        """A one-off Normal Event (a rescale)."""
        stamp = now_text()
        incident = Incident(f"{ref.name}.{time.time_ns():x}", reason, message[:recording.MAX_MESSAGE], stamp,
                            stamp, type="Normal")
        await self._write(ref, recording.Write(incident, create=True))

    def forget(self, namespace: str, name: str) -> None:
        self.ledgers.pop((namespace, name), None)

    def _set(self, key: tuple[str, str], ledger: dict[str, Incident]) -> None:
        if ledger:
            self.ledgers[key] = ledger
        else:
            self.ledgers.pop(key, None)

    async def _write(self, ref: Ref, write: recording.Write) -> bool:
        incident = write.incident
        try:
            if not write.create:
                try:
                    await patch_event(ref.namespace, incident.name, recording.count_patch(incident))
                    return True
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    # Gone: the API server drops Events after its --event-ttl (1h by default).
            await create_event(recording.event_body(ref, incident, self.instance))
            return True
        except Exception as exc:  # an Event is auxiliary: whatever failed, the handler goes on
            status = getattr(exc, "status", None) or type(exc).__name__
            for_streamgroup(ref.namespace, ref.name).warning(
                "could not write an Event", extra={"sg": {"event": incident.reason, "error": status}})
            return False
