"""Redis commands of a consumer: creating the group, reading, acking, dead-lettering, stats.

Thin wrappers that turn Redis replies into :class:`~streamgroup_sidecar.encoding.Entry`
objects. XREADGROUP replies are parsed here rather than by redis-py's callback, which
folds fields into a dict and would lose a field name repeated in one entry.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ReadOnlyError, ResponseError

from .config import RedisSettings
from .encoding import Entry, Fields
from .ids import parse_id

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

# Leave the group only with nothing pending: XGROUP DELCONSUMER would drop pending entries.
_LEAVE_SCRIPT = """
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #mine > 0 then
  return 0
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) + 1
"""


def _raw(response: Any, **_: Any) -> Any:
    return response


class ServerNameSSLConnection(SSLConnection):
    """A TLS connection that verifies (and sends as SNI) a given name instead of the host's.

    For a Redis reached by an address (an IP, a node-local proxy) whose certificate names a
    service. redis-py has no option for it; its ``_connection_arguments`` hook is the seam.
    """

    def __init__(self, *, ssl_server_name: str, **kwargs: Any) -> None:
        self.ssl_server_name = ssl_server_name
        super().__init__(**kwargs)

    def _connection_arguments(self) -> Mapping[str, Any]:
        return {**super()._connection_arguments(), "server_hostname": self.ssl_server_name}


def client_from_url(url: str, server_name: str | None = None, **kwargs: Any) -> aioredis.Redis:
    """``Redis.from_url``, plus an optional TLS server name."""
    if not server_name:
        client: aioredis.Redis = aioredis.Redis.from_url(url, **kwargs)
        return client
    options: dict[str, Any] = dict(parse_url(url))
    options.update(kwargs)
    options["connection_class"] = ServerNameSSLConnection
    options["ssl_server_name"] = server_name
    return aioredis.Redis(connection_pool=aioredis.ConnectionPool(**options))


def connect(settings: RedisSettings, socket_timeout: float) -> aioredis.Redis:
    """A client for ``settings``; secrets stay inside the client, never in its repr or logs."""
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5.0,
        "socket_keepalive": True,
        "health_check_interval": 15,
        "retry_on_timeout": False,
    }
    if settings.username is not None:
        kwargs["username"] = settings.username
    if settings.password is not None:
        kwargs["password"] = settings.password
    if settings.url.startswith("rediss://"):
        kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        if settings.tls_ca_file:
            kwargs["ssl_ca_certs"] = settings.tls_ca_file
        if settings.tls_cert_file:
            kwargs["ssl_certfile"] = settings.tls_cert_file
            kwargs["ssl_keyfile"] = settings.tls_key_file
    client = client_from_url(settings.url, settings.tls_server_name, **kwargs)
    client.set_response_callback("XREADGROUP", _raw)
    client.set_response_callback("XAUTOCLAIM", _raw)
    return client


async def ensure_group(client: aioredis.Redis, stream: str, group: str, start: str) -> bool:
    """Create ``group`` on ``stream`` at ``start`` (and the stream if missing). ``True`` if created.

    An existing group is left exactly where it is: moving it silently would skip or
    replay entries.
    """
    try:
        await client.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if str(exc).startswith("BUSYGROUP"):
            return False
        raise
    return True


def is_nogroup(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


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
    args: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    args.append("STREAMS")
    args.extend(positions.keys())
    args.extend(positions.values())
    reply = await client.execute_command(*args)  # type: ignore[no-untyped-call]
    return parse_read(reply, names)


async def pending_counts(
    client: aioredis.Redis, stream: str, group: str, consumer: str, first: str, last: str, count: int
) -> dict[str, int]:
    """Delivery counts of our own pending entries between two IDs (after a history read bumped them)."""
    rows = await client.xpending_range(stream, group, min=first, max=last, count=count, consumername=consumer)
    return {_text(row["message_id"]): int(row["times_delivered"]) for row in rows}


async def autoclaim(
    client: aioredis.Redis, stream: str, group: str, consumer: str, min_idle_ms: int, cursor: str, count: int
) -> tuple[str, list[Entry], list[str]]:
    """One XAUTOCLAIM page to ``consumer``: the next cursor, the entries taken, and the IDs found deleted.

    Redis removes deleted (trimmed) IDs from the pending list in the same call, so they
    must be recorded by the caller: they can no longer be delivered.
    """
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
    lost = await client.eval(_LEASE_SCRIPT, 1, stream, *args)  # type: ignore[misc]
    return [_text(i) for i in lost]


async def own_pending_ids(client: aioredis.Redis, stream: str, group: str, consumer: str, count: int) -> list[str]:
    rows = await client.xpending_range(stream, group, min="-", max="+", count=count, consumername=consumer)
    return [_text(row["message_id"]) for row in rows]


async def live_peers(client: aioredis.Redis, stream: str, group: str, consumer: str, max_idle_ms: int) -> list[str]:
    """Other consumers of the group seen within ``max_idle_ms``, most recently seen first."""
    rows = await client.xinfo_consumers(stream, group)
    peers = [(int(row["idle"]), _text(row["name"])) for row in rows]
    return [name for idle, name in sorted(peers) if name != consumer and idle <= max_idle_ms]


async def hand_over(
    client: aioredis.Redis, stream: str, group: str, peer: str, ids: list[str], idle_ms: int
) -> int:
    """Move ``ids`` to ``peer``, marked idle for ``idle_ms`` so that its next sweep takes them at once."""
    claimed = await client.xclaim(stream, group, peer, 0, list[Any](ids), idle=idle_ms, justid=True)
    return len(claimed)


async def leave_group(client: aioredis.Redis, stream: str, group: str, consumer: str) -> bool:
    """Delete ``consumer`` from the group if it has nothing pending; ``True`` if it is gone."""
    result = await client.eval(_LEAVE_SCRIPT, 1, stream, group, consumer)  # type: ignore[misc]
    return bool(result)


async def record_trimmed(
    client: aioredis.Redis, stream: str, dead_stream: str, group: str, consumer: str, ids: list[str]
) -> None:
    """Dead-letter entries XAUTOCLAIM found deleted: only their IDs are left to record."""
    async with client.pipeline(transaction=True) as pipe:
        for entry_id in ids:
            entry = Entry(stream, entry_id, None, deliveries=0)  # unknown: XAUTOCLAIM does not say
            fields = dead_letter_fields(entry, group, consumer, "trimmed",
                                        "deleted from the stream before it was delivered")
            pipe.xadd(dead_stream, dict(zip(fields[::2], fields[1::2], strict=True)))
        await pipe.execute()


async def ack(client: aioredis.Redis, group: str, ids_by_stream: dict[str, list[str]]) -> None:
    """Acknowledge everything given, in one round trip."""
    async with client.pipeline(transaction=False) as pipe:
        for stream, ids in ids_by_stream.items():
            pipe.xack(stream, group, *ids)
        await pipe.execute()


def dead_letter_fields(
    entry: Entry, group: str, consumer: str, reason: str, detail: str
) -> list[bytes | str]:
    """The dead-letter entry: metadata fields (prefixed ``sg:``) first, then the original fields."""
    meta: list[bytes | str] = [
        "sg:stream", entry.stream,
        "sg:id", entry.id,
        "sg:group", group,
        "sg:consumer", consumer,
        "sg:deliveries", str(entry.deliveries),
        "sg:reason", reason,
        "sg:detail", detail,
        "sg:time", str(int(time.time() * 1000)),
    ]
    for name, value in entry.fields or ():
        meta += [name, value]
    return meta


async def dead_letter(
    client: aioredis.Redis, entry: Entry, dead_stream: str, group: str, consumer: str, reason: str, detail: str
) -> bool:
    """Atomically ack ``entry`` and copy it to ``dead_stream``; ``False`` if it was no longer pending."""
    fields = dead_letter_fields(entry, group, consumer, reason, detail)
    result = await client.eval(  # type: ignore[misc]
        _DEAD_LETTER_SCRIPT, 2, entry.stream, dead_stream, group, entry.id, *fields)  # type: ignore[arg-type]
    return bool(result)


async def group_info(client: aioredis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    """This group's row of XINFO GROUPS, or ``None`` if the stream or group does not exist."""
    try:
        rows = await client.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    for row in rows:
        if _text(row["name"]) == group:
            return {_text(k): v for k, v in row.items()}
    return None


async def oldest_pending_age(client: aioredis.Redis, stream: str, group: str) -> float | None:
    """Seconds since the oldest pending entry was added (from its ID), or ``None`` with nothing pending."""
    summary = await client.xpending(stream, group)
    oldest = summary.get("min")
    if not summary.get("pending") or not oldest:
        return None
    ms, _ = parse_id(_text(oldest))
    return max(0.0, time.time() - ms / 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
