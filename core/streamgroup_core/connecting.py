"""One way to reach Redis: an :class:`Endpoint`, and the asyncio and synchronous clients made from it.

The sidecar (from flags and mounted files), the operator and the CLI (from a StreamGroup and its
Secrets) all connect through :func:`async_client` or :func:`sync_client`, so a URL, a user name, a
password and TLS mean the same thing everywhere.

Why TLS is set up here rather than with redis-py's ``ssl_*`` options: those take the client
certificate and key as file names only, and the operator and the CLI hold them in memory (read
from Secrets through the API). Writing them to a temporary folder left key material at rest, so
instead each new connection builds its own ``ssl.SSLContext``: files are read where they are
mounted (read-only), bytes in memory are handed to OpenSSL through an anonymous memory file
(``memfd_create``) that has no path on any file system and is gone once loaded. Building the
context per connection also means that a rotated certificate (a Secret updated, its mounted
files replaced) is used by the next connection without a restart.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import parse_url as parse_async_url
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.cluster import ClusterNode as SyncClusterNode
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.connection import parse_url as parse_sync_url
from redis.sentinel import Sentinel as SyncSentinel
from redis.sentinel import SentinelManagedConnection as SyncSentinelManagedConnection

from .addresses import DEFAULT_SENTINEL_PORT, MODES, UrlParts, split_url, url_for
from .redaction import hide_url_passwords, url_password


@dataclass(frozen=True)
class Pem:
    """PEM material: a file (re-read for every new connection) or bytes held in memory."""

    path: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("give a PEM file's path or its bytes, not both")


@dataclass(frozen=True)
class Tls:
    """TLS towards Redis (``rediss://``). Without a CA the system's trust store is used."""

    ca: Pem | None = None
    cert: Pem | None = None
    """Client certificate, for mutual TLS (with :attr:`key`)."""
    key: Pem | None = None
    server_name: str | None = None
    """Name the server certificate must carry, and the SNI sent, when it is not the URL's host."""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate and its key go together")




@dataclass(frozen=True)
class Sentinels:
    """Sentinel mode: the name the sentinels know the primary by, and how to log in to them."""

    master_name: str
    username: str | None = None
    """ACL user on the sentinels; they often have other credentials than the data nodes, or none."""
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Endpoint:
    """How to reach one Redis deployment; secrets stay out of ``repr`` and :attr:`label`.

    ``standalone``: :attr:`url` is one server. ``cluster``: it lists seed nodes, comma-separated
    (``redis://redis-0:6379,redis-1:6379``); the client discovers the others. ``sentinel``: it lists
    the sentinels (default port 26379), which say where the primary named in :attr:`sentinels` is.
    """

    url: str = "redis://127.0.0.1:6379/0"
    """``redis://``, ``rediss://`` (TLS) or ``unix://``; may carry a user, a password and the db."""
    username: str | None = None
    """ACL user; wins over the URL's."""
    password: str | None = field(default=None, repr=False)
    """Wins over the URL's."""
    tls: Tls = field(default_factory=Tls)
    """Used with ``rediss://`` only (for the sentinels too, in sentinel mode)."""
    mode: str = "standalone"
    sentinels: Sentinels | None = None
    """Required in sentinel mode, refused in the others."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown Redis mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if (self.mode == "sentinel") != (self.sentinels is not None):
            raise ValueError("sentinel mode needs the primary's name, and only sentinel mode takes one")

    def __repr__(self) -> str:
        return (f"Endpoint(url={self.label!r}, username={self.username!r}, tls={self.tls!r}, mode={self.mode!r}, "
                f"sentinels={self.sentinels!r})")

    @property
    def uses_tls(self) -> bool:
        return self.url.startswith("rediss://")

    @property
    def label(self) -> str:
        """The URL without its password, for logs and messages."""
        return hide_url_passwords(self.url)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values to scrub from any text shown (see :func:`~streamgroup_core.redaction.redact`)."""
        sentinel = self.sentinels.password if self.sentinels is not None else None
        return tuple(s for s in (self.password, url_password(self.url), sentinel) if s)

    def hosts(self) -> list[tuple[str, int]]:
        """The addresses the URL lists (one in standalone mode)."""
        return split_url(self.url, DEFAULT_SENTINEL_PORT if self.mode == "sentinel" else 6379).hosts


@contextlib.contextmanager
def _readable_path(pem: Pem) -> Iterator[str]:
    """A path OpenSSL can open for ``pem``: its file, or, for bytes, a file with no name on any disk.

    On Linux an anonymous memory file (``memfd_create``); elsewhere a pipe read through
    ``/dev/fd`` (a PEM fits in a pipe's buffer). Either is closed once OpenSSL has read it.
    """
    if pem.path is not None:
        yield pem.path
        return
    assert pem.data is not None
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("streamgroup-tls", os.MFD_CLOEXEC)
        try:
            _write_all(fd, pem.data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    read_end, write_end = os.pipe()
    try:
        _write_all(write_end, pem.data)
        os.close(write_end)
        write_end = -1
        yield f"/dev/fd/{read_end}"
    finally:
        os.close(read_end)
        if write_end != -1:
            os.close(write_end)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _identity(pem: Pem | None) -> tuple[Any, ...]:
    """What decides a context's content: a file's identity and age (it may be replaced), or the bytes."""
    if pem is None:
        return ()
    if pem.path is not None:
        stat = os.stat(pem.path)
        return (pem.path, stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return (pem.data,)


_CONTEXTS: dict[tuple[Any, ...], ssl.SSLContext] = {}
_CONTEXTS_KEPT = 16


def ssl_context(tls: Tls) -> ssl.SSLContext:
    """A client context for ``tls``: certificates verified, host name (or :attr:`Tls.server_name`) checked.

    Contexts are kept while their files stay the same (same inode, time and size), so a new connection
    costs a few ``stat`` calls, not a reading of the system's trust store; a replaced file (a rotated
    Secret) makes a new one.
    """
    key = (_identity(tls.ca), _identity(tls.cert), _identity(tls.key))
    context = _CONTEXTS.get(key)
    if context is None:
        context = _new_context(tls)
        if len(_CONTEXTS) >= _CONTEXTS_KEPT:
            _CONTEXTS.pop(next(iter(_CONTEXTS)))
        _CONTEXTS[key] = context
    return context


def _new_context(tls: Tls) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca is None:
        context.load_default_certs()
    elif tls.ca.path is not None:
        context.load_verify_locations(cafile=tls.ca.path)
    else:
        assert tls.ca.data is not None
        context.load_verify_locations(cadata=tls.ca.data.decode("ascii", errors="replace"))
    if tls.cert is not None and tls.key is not None:
        with _readable_path(tls.cert) as cert, _readable_path(tls.key) as key:
            context.load_cert_chain(cert, key)
    return context


def _bound(base: type[Any], tls: Tls) -> type[Any]:
    """``base`` with ``tls`` as a class attribute: redis-py builds connections from a class and
    keyword arguments, and the cluster and sentinel clients do not pass unknown arguments on."""
    return type(base.__name__, (base,), {"tls": tls})


class _AsyncTls:
    """Mixin: an asyncio connection whose TLS context is built from :class:`Tls` when it connects."""

    tls: Tls
    host: str

    def _connection_arguments(self) -> dict[str, Any]:
        return {**super()._connection_arguments(), "ssl": ssl_context(self.tls),  # type: ignore[misc]
                "server_hostname": self.tls.server_name or self.host}


class _SyncTls:
    """Mixin: a blocking connection whose TLS context is built from :class:`Tls` when it connects."""

    tls: Tls
    host: str

    def _connect(self) -> Any:
        sock = super()._connect()  # type: ignore[misc]
        try:
            return ssl_context(self.tls).wrap_socket(sock, server_hostname=self.tls.server_name or self.host)
        except BaseException:
            sock.close()
            raise


class _AsyncTlsConnection(_AsyncTls, aioredis.Connection):
    pass


class _SyncTlsConnection(_SyncTls, redis.Connection):
    pass


class _AsyncSentinelTlsConnection(_AsyncTls, AsyncSentinelManagedConnection):
    pass


class _SyncSentinelTlsConnection(_SyncTls, SyncSentinelManagedConnection):
    pass


def _standalone(endpoint: Endpoint, parsed: dict[str, Any]) -> dict[str, Any]:
    """redis-py's own reading of a one-server URL (unix sockets, query options), with the endpoint's credentials."""
    if endpoint.username is not None:
        parsed["username"] = endpoint.username
    if endpoint.password is not None:
        parsed["password"] = endpoint.password
    return parsed


def _credentials(endpoint: Endpoint, parts: UrlParts) -> dict[str, Any]:
    username = endpoint.username if endpoint.username is not None else parts.username
    password = endpoint.password if endpoint.password is not None else parts.password
    return {"username": username, "password": password}


def async_client(endpoint: Endpoint, *, socket_timeout: float, connect_timeout: float = 5.0,
                 **options: Any) -> Any:
    """An asyncio client for ``endpoint``; ``options`` go to redis-py's connections (e.g. ``socket_keepalive``).

    Standalone and sentinel mode give a ``redis.asyncio.Redis`` (in sentinel mode its connections
    ask the sentinels where the primary is whenever they connect, so a failover is followed by
    reconnecting); cluster mode gives a ``redis.asyncio.RedisCluster``. A command that gets no reply
    within ``socket_timeout`` fails (it is never retried silently). ValueError for a URL it cannot use.
    """
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout, **options}
    if endpoint.mode == "cluster":
        return _async_cluster(endpoint, timeouts)
    if endpoint.mode == "sentinel":
        return _async_sentinel(endpoint, timeouts)
    settings = _standalone(endpoint, dict(parse_async_url(endpoint.url)))
    if endpoint.uses_tls:
        settings["connection_class"] = _bound(_AsyncTlsConnection, endpoint.tls)
    settings.update(retry_on_timeout=False, **timeouts)
    return aioredis.Redis.from_pool(aioredis.ConnectionPool(**settings))


class _ClosedUnderUs:
    """Mixin: a write on a connection that another task closed meanwhile fails as a ConnectionError.

    redis-py's asyncio cluster client closes *every* connection of every node when one command fails
    on a lost connection (to rediscover the cluster). A task writing on one of them at that moment gets
    uvloop's ``RuntimeError`` ("the handler is closed"), or an ``AttributeError`` once redis-py dropped
    the connection's writer: what it means is a lost connection, and callers retry it as one.
    """

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except (RuntimeError, AttributeError) as exc:
            raise redis.ConnectionError(f"connection closed while in use ({type(exc).__name__}: {exc})") from exc


class _AsyncClusterConnection(_ClosedUnderUs, aioredis.Connection):
    pass


class _AsyncClusterTlsConnection(_ClosedUnderUs, _AsyncTlsConnection):
    pass


def _async_cluster(endpoint: Endpoint, timeouts: dict[str, Any]) -> Any:
    parts = split_url(endpoint.url)
    # On a MOVED reply the client updates that slot's owner; by default every fifth one also makes it
    # close every connection and rediscover the cluster, which cuts every blocking read short.
    timeouts = {"reinitialize_steps": 0, **timeouts}
    client = AsyncRedisCluster(startup_nodes=[AsyncClusterNode(host, port) for host, port in parts.hosts],
                               **_credentials(endpoint, parts), **timeouts)
    # The client keeps one dict of connection arguments for every node it finds; the seed nodes were
    # made from it already, so they are made again.
    client.connection_kwargs["connection_class"] = (
        _bound(_AsyncClusterTlsConnection, endpoint.tls) if endpoint.uses_tls else _AsyncClusterConnection)
    manager = client.nodes_manager
    manager.startup_nodes = {node.name: AsyncClusterNode(node.host, node.port, **client.connection_kwargs)
                             for node in manager.startup_nodes.values()}
    return client


def _async_sentinel(endpoint: Endpoint, timeouts: dict[str, Any]) -> Any:
    assert endpoint.sentinels is not None
    parts = split_url(endpoint.url, DEFAULT_SENTINEL_PORT)
    sentinels = endpoint.sentinels
    manager = AsyncSentinel([], **timeouts)
    scheme = parts.scheme
    manager.sentinels = [
        async_client(Endpoint(url_for(host, port, 0, tls=scheme == "rediss"), username=sentinels.username,
                              password=sentinels.password, tls=endpoint.tls), **timeouts)
        for host, port in parts.hosts
    ]
    kind = _AsyncSentinelTlsConnection if endpoint.uses_tls else AsyncSentinelManagedConnection
    return manager.master_for(sentinels.master_name, connection_class=_bound(kind, endpoint.tls), db=parts.db,
                              **_credentials(endpoint, UrlParts(scheme, None, None, [], 0)), **timeouts)


def sync_client(endpoint: Endpoint, *, socket_timeout: float, connect_timeout: float = 5.0,
                **options: Any) -> Any:
    """A blocking client for ``endpoint`` (for the CLI); same meaning of every setting as :func:`async_client`."""
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout, **options}
    if endpoint.mode == "cluster":
        parts = split_url(endpoint.url)
        (host, port), *others = parts.hosts
        tls: dict[str, Any] = {}
        if endpoint.uses_tls:
            tls["connection_class"] = _bound(_SyncTlsConnection, endpoint.tls)
        # With a url the client makes every node's pool from a connection class; seeds beyond the first
        # are startup nodes.
        return SyncRedisCluster(url=url_for(host, port), startup_nodes=[SyncClusterNode(h, p) for h, p in others],
                                **_credentials(endpoint, parts), **tls, **timeouts)
    if endpoint.mode == "sentinel":
        assert endpoint.sentinels is not None
        parts = split_url(endpoint.url, DEFAULT_SENTINEL_PORT)
        sentinels = endpoint.sentinels
        manager = SyncSentinel([], **timeouts)
        manager.sentinels = [
            sync_client(Endpoint(url_for(host, port, 0, tls=parts.scheme == "rediss"), username=sentinels.username,
                                 password=sentinels.password, tls=endpoint.tls), **timeouts)
            for host, port in parts.hosts
        ]
        kind = _SyncSentinelTlsConnection if endpoint.uses_tls else SyncSentinelManagedConnection
        return manager.master_for(sentinels.master_name, connection_class=_bound(kind, endpoint.tls), db=parts.db,
                                  **_credentials(endpoint, UrlParts(parts.scheme, None, None, [], 0)), **timeouts)
    settings = _standalone(endpoint, dict(parse_sync_url(endpoint.url)))
    if endpoint.uses_tls:
        settings["connection_class"] = _bound(_SyncTlsConnection, endpoint.tls)
    settings.update(retry_on_timeout=False, **timeouts)
    return redis.Redis.from_pool(redis.ConnectionPool(**settings))


def _raw(response: Any, **_: Any) -> Any:
    return response


def keep_raw(client: Any, *commands: str) -> Any:
    """Make ``client`` (any kind this module makes) return the replies of ``commands`` unparsed.

    redis-py folds stream entries into dicts, which loses a field name repeated in one entry; the
    sidecar and the CLI parse XREADGROUP, XAUTOCLAIM and XRANGE replies themselves. A blocking
    cluster client parses replies in the client of each node, made as nodes are found, so the
    callbacks are set on those too, now and whenever the client makes another.
    """
    for command in commands:
        client.set_response_callback(command, _raw)
    if isinstance(client, SyncRedisCluster):
        manager = client.nodes_manager
        make_node = manager.create_redis_node

        def make_raw_node(host: str, port: int, **kwargs: Any) -> Any:
            node = make_node(host, port, **kwargs)
            for command in commands:
                node.set_response_callback(command, _raw)
            return node

        manager.create_redis_node = make_raw_node  # type: ignore[method-assign]
        for node in client.get_nodes():
            if node.redis_connection is not None:
                for command in commands:
                    node.redis_connection.set_response_callback(command, _raw)
    return client
