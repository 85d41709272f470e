"""The sidecar's Redis command layer: every command it sends about its group, and nothing else.

Reading (XREADGROUP, XAUTOCLAIM, delivery counts), acknowledging, dead-lettering, renewing
leases and finding peers: thin wrappers that turn Redis replies into
:class:`~streamgroup_sidecar.entries.Entry` objects and back, with no retries and no state
(the units that call them decide what a failure means). Group management shared with the
operator and the CLI is in :mod:`streamgroup_core.groups`. XREADGROUP replies are parsed here
rather than by redis-py's callback, which folds fields into a dict and would lose a field
name repeated in one entry.

In cluster mode the client is a ``redis.asyncio.RedisCluster``: every command here names its key
(or, for XREADGROUP, keys of one slot), so it goes to the primary owning that slot; MOVED and ASK
replies are followed by redis-py. :data:`REDIS_FAILURES` and :func:`is_outage` say which
exceptions mean "Redis failed" in every mode.
"""

from __future__ import annotations

import re
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamgroup_core.connecting import Endpoint, Pem, Sentinels, Tls, async_client
from streamgroup_core.deadletters import dead_letter_fields
from streamgroup_core.groups import text as _text
from streamgroup_core.permissions import naming

from .config import RedisSettings
from .entries import Entry, Fields

# Dead-lettering must be atomic and must not duplicate: XACK first, and only an entry
# that was still pending is copied to the dead-letter stream. A MULTI/EXEC could not
# make the XADD conditional, so a retry after a lost EXEC reply would write it twice.
_DEAD_LETTER_SCRIPT = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 1 then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
return acked
"""


# A lease: for each ID still pending *for this consumer*, reset its idle time (XCLAIM to
# itself, JUSTID so the delivery count is not bumped) and store the attempts made so far
# (RETRYCOUNT), so a later owner knows them. IDs that another consumer took are returned.
_LEASE_SCRIPT = """
local lost = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #row == 1 and row[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return lost
"""

def _raw(response: Any, **_: Any) -> Any:
    return response


def endpoint(settings: RedisSettings) -> Endpoint:
    """The sidecar's Redis: TLS files are read where they are mounted, again for each new connection."""
    def pem(path: str | None) -> Pem | None:
        return Pem(path=path) if path else None

    tls = Tls(ca=pem(settings.tls_ca_file), cert=pem(settings.tls_cert_file), key=pem(settings.tls_key_file),
              server_name=settings.tls_server_name)
    sentinels = None
    if settings.sentinel_master is not None:
        sentinels = Sentinels(settings.sentinel_master, username=settings.sentinel_username,
                              password=settings.sentinel_password)
    return Endpoint(settings.url, username=settings.username, password=settings.password, tls=tls,
                    mode=settings.mode, sentinels=sentinels)


def client_name(group: str, consumer: str) -> str:
    """The name every connection of a sidecar gives itself (CLIENT SETNAME), so that ``CLIENT LIST``
    on any node tells whose connections these are; characters Redis refuses in a name become ``_``."""
    return re.sub(r"[^!-~]", "_", f"streamgroup-sidecar:{group}:{consumer}")


def connect(settings: RedisSettings, socket_timeout: float, name: str | None = None) -> aioredis.Redis:
    """A client for ``settings``; secrets stay inside the client, never in its repr or logs."""
    client: aioredis.Redis = async_client(endpoint(settings), socket_timeout=socket_timeout, socket_keepalive=True,
                                          health_check_interval=15, client_name=name)
    client.set_response_callback("XREADGROUP", _raw)
    client.set_response_callback("XAUTOCLAIM", _raw)
    return client


def is_nogroup(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


REDIS_FAILURES: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
"""What a Redis call raises when it fails, in every mode: the units retry on these and nothing else.

redis-py's cluster client raises :class:`~redis.exceptions.RedisClusterException`, which is *not* a
``RedisError``, when it cannot reach or log in to any node while it discovers the cluster, and when a
slot has no owner in its map (``SlotNotCoveredError``) during a failover.
"""


def is_outage(exc: BaseException) -> bool:
    """Redis as a whole cannot serve us right now (rather than one command being wrong).

    A lost or timed-out connection, a failover (:func:`is_failover`), and in cluster mode what
    happens while slots change owners: CLUSTERDOWN, TRYAGAIN, a MOVED or ASK redis-py gave up
    following ("TTL exhausted"), a cluster it cannot discover or a slot it has no node for.
    """
    return (isinstance(exc, (RedisConnectionError, RedisTimeoutError, ClusterError, TryAgainError, AskError,
                             RedisClusterException))
            or is_failover(exc))


def is_failover(exc: BaseException) -> bool:
    """The server became a replica (a failover): writes are refused, blocked reads are cut short."""
    # redis-py maps the READONLY error code to ReadOnlyError and strips the code from the message;
    # a script that writes on a replica reports it inside a generic error; a blocking XREADGROUP
    # is ended with UNBLOCKED when the server turns into a replica.
    if isinstance(exc, ReadOnlyError):
        return True
    return isinstance(exc, ResponseError) and ("READONLY" in str(exc) or str(exc).startswith("UNBLOCKED"))


def _entries(stream: str, raw_entries: Any) -> list[Entry]:
    entries: list[Entry] = []
    for raw_id, flat in raw_entries:
        fields: Fields | None
        if flat is None:
            fields = None
        else:
            it = iter(flat)
            fields = list(zip(it, it, strict=True))
        entries.append(Entry(stream, raw_id.decode(), fields))
    return entries


def parse_read(reply: Any, names: dict[bytes, str]) -> list[Entry]:
    """Entries from a raw XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    items = reply.items() if isinstance(reply, dict) else reply
    return [entry for raw_stream, raw_entries in items for entry in _entries(names[raw_stream], raw_entries)]


async def read(
    client: aioredis.Redis,
    group: str,
    consumer: str,
    positions: dict[str, str],
    count: int,
    block_ms: int | None,
    names: dict[bytes, str],
) -> list[Entry]:
    """One XREADGROUP across streams. ``">"`` positions read new entries; IDs read our own pending list."""
    with naming("XREADGROUP", *positions):
        reply = await client.execute_command(  # type: ignore[no-untyped-call]
            *_xreadgroup(group, consumer, positions, count, block_ms))
    return parse_read(reply, names)


def _xreadgroup(group: str, consumer: str, positions: dict[str, str], count: int, block_ms: int | None) -> list[Any]:
    args: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    args.append("STREAMS")
    args.extend(positions.keys())
    args.extend(positions.values())
    return args


async def read_slot(
    client: RedisCluster,
    group: str,
    consumer: str,
    positions: dict[str, str],
    count: int,
    block_ms: int | None,
    names: dict[bytes, str],
) -> list[Entry]:
    """Cluster mode: one XREADGROUP across streams that share a slot, sent to the primary that owns it.

    Routed explicitly: otherwise redis-py would ask a node ``COMMAND GETKEYS`` before every call
    (XREADGROUP's keys are "movable", it cannot find them itself). A MOVED or ASK reply is still
    followed by redis-py (after a MOVED it asks ``COMMAND GETKEYS`` once, to find the new owner).
    """
    await client.initialize()  # at once unless a failure made it drop its map of the slots
    node = client.get_node_from_key(next(iter(positions)))
    with naming("XREADGROUP", *positions):
        reply = await client.execute_command(*_xreadgroup(group, consumer, positions, count, block_ms),
                                             target_nodes=node)
    return parse_read(reply, names)


async def pending_counts(
    client: aioredis.Redis, stream: str, group: str, consumer: str, first: str, last: str, count: int
) -> dict[str, int]:
    """Delivery counts of our own pending entries between two IDs (after a history read bumped them)."""
    with naming("XPENDING", stream):
        rows = await client.xpending_range(stream, group, min=first, max=last, count=count, consumername=consumer)
    return {_text(row["message_id"]): int(row["times_delivered"]) for row in rows}


async def load_delivery_counts(
    client: aioredis.Redis, stream: str, group: str, consumer: str, entries: list[Entry]
) -> None:
    """Set the attempts of ``entries`` (ours, pending, in ID order) from Redis' delivery counters.

    History reads and claims bump those counters, so after a restart or a reclaim they know more
    than the entries do.
    """
    counts = await pending_counts(client, stream, group, consumer, entries[0].id, entries[-1].id, len(entries))
    for entry in entries:
        entry.deliveries = counts.get(entry.id, entry.deliveries)


async def autoclaim(
    client: aioredis.Redis, stream: str, group: str, consumer: str, min_idle_ms: int, cursor: str, count: int
) -> tuple[str, list[Entry], list[str]]:
    """One XAUTOCLAIM page to ``consumer``: the next cursor, the entries taken, and the IDs found deleted.

    Redis removes deleted (trimmed) IDs from the pending list in the same call, so they
    must be recorded by the caller: they can no longer be delivered.
    """
    with naming("XAUTOCLAIM", stream):
        reply = await client.execute_command(  # type: ignore[no-untyped-call]
            "XAUTOCLAIM", stream, group, consumer, min_idle_ms, cursor, "COUNT", count)
    deleted = [_text(i) for i in reply[2]] if len(reply) > 2 else []
    return _text(reply[0]), _entries(stream, reply[1]), deleted


async def refresh_leases(
    client: aioredis.Redis, stream: str, group: str, consumer: str, held: list[tuple[str, int]]
) -> list[str]:
    """Renew ownership of ``held`` (ID, attempts) entries; returns the IDs another consumer took."""
    args: list[Any] = [group, consumer]
    for entry_id, deliveries in held:
        args += [entry_id, deliveries]
    with naming("EVAL (lease script: XPENDING, XCLAIM)", stream):
        lost = await client.eval(_LEASE_SCRIPT, 1, stream, *args)  # type: ignore[misc]
    return [_text(i) for i in lost]


async def live_peers(client: aioredis.Redis, stream: str, group: str, consumer: str, max_idle_ms: int) -> list[str]:
    """Other consumers of the group seen within ``max_idle_ms``, most recently seen first."""
    with naming("XINFO CONSUMERS", stream):
        rows = await client.xinfo_consumers(stream, group)
    peers = [(int(row["idle"]), _text(row["name"])) for row in rows]
    return [name for idle, name in sorted(peers) if name != consumer and idle <= max_idle_ms]


TRIMMED_DETAIL = "deleted from the stream before it was delivered"
"""The detail of every ``trimmed`` dead letter, however the sidecar found the entry gone."""


async def record_trimmed(
    client: aioredis.Redis, stream: str, dead_stream: str, group: str, consumer: str, ids: list[str]
) -> None:
    """Dead-letter entries XAUTOCLAIM found deleted: only their IDs are left to record."""
    with naming("XADD (in MULTI)", dead_stream):
        await _record_trimmed(client, stream, dead_stream, group, consumer, ids)


async def _record_trimmed(
    client: aioredis.Redis, stream: str, dead_stream: str, group: str, consumer: str, ids: list[str]
) -> None:
    async with client.pipeline(transaction=True) as pipe:
        for entry_id in ids:
            # The delivery count is unknown: XAUTOCLAIM does not say.
            fields = dead_letter_fields(stream, entry_id, None, group=group, consumer=consumer, deliveries=0,
                                        reason="trimmed", detail=TRIMMED_DETAIL,
                                        time_ms=int(time.time() * 1000))
            pipe.xadd(dead_stream, dict(zip(fields[::2], fields[1::2], strict=True)))
        await pipe.execute()


async def ack(client: aioredis.Redis, group: str, ids_by_stream: dict[str, list[str]]) -> None:
    """Acknowledge everything given, in one round trip (in cluster mode, one per node, sent in parallel).

    Any failure raises, and the caller sends the whole batch again: acking an entry twice is harmless.
    """
    with naming("XACK", *ids_by_stream):
        async with client.pipeline(transaction=False) as pipe:
            for stream, ids in ids_by_stream.items():
                pipe.xack(stream, group, *ids)
            await pipe.execute()


async def dead_letter(
    client: aioredis.Redis, entry: Entry, dead_stream: str, group: str, consumer: str, reason: str, detail: str
) -> bool:
    """Atomically ack ``entry`` and copy it to ``dead_stream``; ``False`` if it was no longer pending."""
    fields = dead_letter_fields(entry.stream, entry.id, entry.fields, group=group, consumer=consumer,
                                deliveries=entry.deliveries, reason=reason, detail=detail,
                                time_ms=int(time.time() * 1000))
    with naming("EVAL (dead-letter script: XACK the source, XADD the dead-letter stream)", entry.stream, dead_stream):
        result = await client.eval(  # type: ignore[misc]
            _DEAD_LETTER_SCRIPT, 2, entry.stream, dead_stream, group, entry.id, *fields)  # type: ignore[arg-type]
    return bool(result)
