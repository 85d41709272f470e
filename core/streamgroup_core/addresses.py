"""Where Redis is: URLs of one server, or of several (cluster seed nodes, sentinels), and their checks.

A one-server URL is redis-py's own (``redis://``, ``rediss://``, ``unix://``, query options). A cluster
or sentinel set-up lists several addresses, comma-separated, in one URL
(``redis://user:pass@redis-0:6379,redis-1:6379/0``); redis-py has no reading of that, so it is here.
Errors say what is wrong and never show the password.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis import connection

# How redis-py reads a URL when it makes a client (typed here: redis-py's function is not).
_redis_reading: Callable[[str], dict[str, Any]] = connection.parse_url

DEFAULT_URL = "redis://127.0.0.1:6379/0"
MODES = ("standalone", "cluster", "sentinel")
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class UrlParts:
    scheme: str
    username: str | None
    password: str | None = field(repr=False)
    hosts: list[tuple[str, int]]
    db: int


def split_url(url: str, default_port: int = 6379) -> UrlParts:
    """A ``redis://`` or ``rediss://`` URL that may list several ``host:port``, comma-separated.

    ValueError names what is wrong (never the password).
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise ValueError("must start with redis:// or rediss://")
    netloc, _, path = rest.partition("/")
    netloc = netloc.split("?", 1)[0]
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    hosts: list[tuple[str, int]] = []
    # Addresses are named by their place, not shown: in a URL whose password holds an unescaped / ? or #,
    # what is taken for the list of hosts is a piece of the password.
    for place, item in enumerate(hostlist.split(","), start=1):
        item = item.strip()
        if not item:
            raise ValueError(f"has an empty address (number {place}) in its list of hosts")
        try:
            parsed = urllib.parse.urlsplit(f"//{item}")
            host, port = parsed.hostname, parsed.port
        except ValueError:
            raise ValueError(f"has an invalid port in address number {place} of its list of hosts") from None
        if not host:
            raise ValueError(f"has no host in address number {place} of its list of hosts")
        hosts.append((host, port or default_port))
    db_text = path.split("?", 1)[0].strip("/")
    if db_text and not db_text.isdigit():
        raise ValueError("database (the path) must be a number")
    return UrlParts(scheme, username, password, hosts, int(db_text or 0))


def url_for(host: str, port: int = 6379, db: int = 0, tls: bool = False) -> str:
    """The URL of a Redis given by host, port and database number."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{'rediss' if tls else 'redis'}://{shown}:{port}/{db}"


def _split(text: str) -> urllib.parse.SplitResult:
    try:
        return urllib.parse.urlsplit(text)
    except ValueError:  # urllib's message shows the whole host part, user and password included
        raise ValueError("is not a URL: an unmatched [ or ], or a character a host cannot have") from None


def check_url(text: str, mode: str = "standalone") -> str:
    """``text`` (stripped) if it is a Redis URL this module can use in ``mode``; a ValueError saying why otherwise."""
    text = text.strip()
    query = _split(text).query if "://" in text else ""
    tls_options = [name for name in urllib.parse.parse_qs(query) if name.lower().startswith("ssl")]
    if tls_options:
        raise ValueError(f"sets TLS in the URL ({', '.join(tls_options)}); TLS is configured with its own "
                         "options (CA, client certificate, server name), and rediss:// turns it on")
    if mode != "standalone":
        listed = split_url(text, DEFAULT_SENTINEL_PORT if mode == "sentinel" else 6379)
        if mode == "cluster" and listed.db:
            raise ValueError("a Redis Cluster has only database 0")
        return text
    if "," in text.partition("://")[2].partition("/")[0]:
        raise ValueError("lists several hosts: that is for cluster or sentinel mode")
    parts = _split(text)
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
    try:
        _redis_reading(text)  # the query's options (socket_timeout=...), read when a client is made
    except ValueError as exc:
        raise ValueError(f"has a query option redis-py cannot read ({exc})") from None
    return text
