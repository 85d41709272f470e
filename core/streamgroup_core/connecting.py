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
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url as parse_async_url
from redis.connection import parse_url as parse_sync_url

from .redaction import hide_url_passwords, url_password

DEFAULT_URL = "redis://127.0.0.1:6379/0"


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
class Endpoint:
    """How to reach one Redis; secrets stay out of ``repr`` and :attr:`label`."""

    url: str = DEFAULT_URL
    """``redis://``, ``rediss://`` (TLS) or ``unix://``; may carry a user, a password and the db."""
    username: str | None = None
    """ACL user; wins over the URL's."""
    password: str | None = field(default=None, repr=False)
    """Wins over the URL's."""
    tls: Tls = field(default_factory=Tls)
    """Used with ``rediss://`` only."""

    def __repr__(self) -> str:
        return f"Endpoint(url={self.label!r}, username={self.username!r}, tls={self.tls!r})"

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
        return tuple(s for s in (self.password, url_password(self.url)) if s)


def url_for(host: str, port: int = 6379, db: int = 0, tls: bool = False) -> str:
    """The URL of a Redis given by host, port and database number."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{'rediss' if tls else 'redis'}://{shown}:{port}/{db}"


def check_url(text: str) -> str:
    """``text`` (stripped) if it is a Redis URL this module can use; a ValueError saying why otherwise."""
    text = text.strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("has no host")
    if parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError("database (the path) must be a number")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return text


@contextlib.contextmanager
def _readable_path(pem: Pem) -> Iterator[str]:
    """A path OpenSSL can open for ``pem``: its file, or an anonymous memory file for its bytes."""
    if pem.path is not None:
        yield pem.path
        return
    assert pem.data is not None
    fd = os.memfd_create("streamgroup-tls", os.MFD_CLOEXEC)
    try:
        view = memoryview(pem.data)
        while view:
            view = view[os.write(fd, view):]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def ssl_context(tls: Tls) -> ssl.SSLContext:
    """A client context for ``tls``: certificates verified, host name (or :attr:`Tls.server_name`) checked."""
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


class _AsyncTlsConnection(aioredis.Connection):
    """An asyncio connection whose TLS context is built from :class:`Tls` when it connects."""

    def __init__(self, *, tls: Tls, **kwargs: Any) -> None:
        self.tls = tls
        super().__init__(**kwargs)

    def _connection_arguments(self) -> dict[str, Any]:
        return {**super()._connection_arguments(), "ssl": ssl_context(self.tls),
                "server_hostname": self.tls.server_name or self.host}


class _SyncTlsConnection(redis.Connection):
    """A blocking connection whose TLS context is built from :class:`Tls` when it connects."""

    def __init__(self, *, tls: Tls, **kwargs: Any) -> None:
        self.tls = tls
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]

    def _connect(self) -> Any:
        sock = super()._connect()  # type: ignore[no-untyped-call]
        try:
            return ssl_context(self.tls).wrap_socket(sock, server_hostname=self.tls.server_name or self.host)
        except BaseException:
            sock.close()
            raise


def _options(endpoint: Endpoint, parsed: dict[str, Any], tls_class: type) -> dict[str, Any]:
    options = dict(parsed)
    if endpoint.username is not None:
        options["username"] = endpoint.username
    if endpoint.password is not None:
        options["password"] = endpoint.password
    if endpoint.uses_tls:
        options["connection_class"] = tls_class
        options["tls"] = endpoint.tls
    return options


def async_client(endpoint: Endpoint, *, socket_timeout: float, connect_timeout: float = 5.0,
                 **options: Any) -> aioredis.Redis:
    """An asyncio client for ``endpoint``; ``options`` go to redis-py's connections (e.g. ``socket_keepalive``).

    A command that gets no reply within ``socket_timeout`` fails (it is never retried silently).
    Raises ``ValueError`` for a URL redis-py cannot use.
    """
    settings = _options(endpoint, dict(parse_async_url(endpoint.url)), _AsyncTlsConnection)
    settings.update(socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout, retry_on_timeout=False,
                    **options)
    return aioredis.Redis.from_pool(aioredis.ConnectionPool(**settings))


def sync_client(endpoint: Endpoint, *, socket_timeout: float, connect_timeout: float = 5.0,
                **options: Any) -> redis.Redis:
    """A blocking client for ``endpoint`` (for the CLI); same meaning of every setting as :func:`async_client`."""
    settings = _options(endpoint, dict(parse_sync_url(endpoint.url)), _SyncTlsConnection)  # type: ignore[no-untyped-call]
    settings.update(socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout, retry_on_timeout=False,
                    **options)
    return redis.Redis.from_pool(redis.ConnectionPool(**settings))
