"""The Redis ACL rules each part of Streamgroup needs, and nothing more.

One place says which commands the sidecar, the operator and the CLI send and on which keys, so the
``ACL SETUSER`` lines the CLI prints (``streamgroup acl``), the README and the tests on a real
redis-server cannot drift apart. What the rules rest on:

* commands are named one by one, subcommands where a command has several (``xinfo|groups``, not
  ``xinfo``), starting from ``-@all``; no category is granted, since categories grow with Redis
  versions;
* keys are the StreamGroup's own: each stream or partition, each dead-letter stream, by exact name
  (glob characters in a name are escaped), never a pattern that another StreamGroup's keys could
  match;
* the sidecar may add entries only to its dead-letter streams: XADD is granted by a selector
  (Redis 7) on those keys alone, while the script that moves an entry there (XACK on its source
  and XADD in one step) runs with EVAL on both;
* AUTH and HELLO need no permission; PING does (health checks), and the sidecar names its
  connections (CLIENT SETNAME);
* a cluster client discovers the slots (CLUSTER SLOTS) and the commands' key positions (COMMAND),
  on every node (ACL users are per node: create them on each); behind sentinels the data nodes see
  nothing more (the sentinels, if they have ACL users of their own, are outside these rules).

Each rule set is proven on real servers, standalone, cluster and sentinel, by ``tests/security``
and ``tests/topologies``: the part does all its work and Redis logs no refusal (ACL LOG).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

PARTS = ("sidecar", "operator", "cli-read", "cli-write")
PASSWORD_PLACEHOLDER = "<password>"

_SIDECAR = ("xreadgroup", "xack", "xautoclaim", "xclaim", "xpending", "xinfo|groups", "xinfo|consumers",
            "xgroup|create", "xgroup|delconsumer", "eval", "multi", "exec", "ping", "client|setname")
"""Read the group, ack, claim (reclaim and leases), pending, its stats, leave the group; EVAL runs the
dead-letter, lease and leave scripts, MULTI/EXEC records trimmed entries. The group is created when
missing (the sidecar also runs without the operator)."""

_SIDECAR_DEAD_LETTERS = ("xadd",)

_OPERATOR = ("xgroup|create", "xgroup|destroy", "xgroup|delconsumer", "xinfo|groups", "xinfo|consumers", "xrange",
             "xpending", "xclaim", "xlen", "eval", "ping")
"""Create and destroy groups, measure lag, pending and dead letters (XRANGE, bounded, counts the lag
Redis cannot tell), remove consumers of no live replica after handing their entries over (XCLAIM and
the same leave script as the sidecar's)."""

_CLI_READ = ("xinfo|groups", "xinfo|consumers", "xinfo|stream", "xpending", "xrange", "xrevrange", "xlen", "type",
             "exists", "ping")
"""status, pending, replay (printing), dead-letters list, partitions, and trim's dry check."""

_CLI_WRITE = (*_CLI_READ, "xadd", "xdel", "xtrim", "eval")
"""produce, replay --to-stream, dead-letters redrive (a script) and purge, trim."""

_CLUSTER = ("cluster|slots", "command")


@dataclass(frozen=True)
class Scope:
    """The keys of one StreamGroup and how its Redis is run."""

    streams: tuple[str, ...]
    """Every stream key: plain streams and each partition."""
    dead_letter_streams: tuple[str, ...]
    mode: str = "standalone"
    db: int = 0


def escape(key: str) -> str:
    """``key`` as an ACL key pattern that matches it alone (glob characters escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", key)


def commands(part: str, scope: Scope) -> list[str]:
    """The commands ``part`` sends, for ``scope``'s topology."""
    base = {"sidecar": _SIDECAR, "operator": _OPERATOR, "cli-read": _CLI_READ, "cli-write": _CLI_WRITE}.get(part)
    if base is None:
        raise ValueError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
    extra: tuple[str, ...] = _CLUSTER if scope.mode == "cluster" else ()
    if scope.db:
        extra = (*extra, "select")
    return [*base, *extra]


def rules(part: str, scope: Scope) -> list[str]:
    """The ``ACL SETUSER`` arguments after the user name and password: commands, keys, selectors."""
    keys = dict.fromkeys([*scope.streams, *scope.dead_letter_streams])
    granted = [f"+{command}" for command in commands(part, scope)]
    rule = ["resetkeys", "resetchannels", "-@all", *granted, *(f"~{escape(key)}" for key in keys)]
    if part == "sidecar":
        dead = " ".join(f"~{escape(key)}" for key in dict.fromkeys(scope.dead_letter_streams))
        rule.append(f"({' '.join('+' + c for c in _SIDECAR_DEAD_LETTERS)} {dead})")
    return rule


def user_name(prefix: str, part: str) -> str:
    return f"{prefix}-{part}"


def quote(argument: str) -> str:
    """One argument as redis-cli reads it back: bare when it can be, else double-quoted with escapes."""
    if argument and not re.search(r'[\s"\'\\]', argument):
        return argument
    return '"' + argument.replace("\\", "\\\\").replace('"', '\\"') + '"'


def setuser(prefix: str, part: str, scope: Scope, password: str = PASSWORD_PLACEHOLDER) -> str:
    """The ``ACL SETUSER`` line for ``part``, with a password placeholder to replace."""
    words = ["ACL", "SETUSER", user_name(prefix, part), "on", f">{password}", *rules(part, scope)]
    return " ".join(quote(word) for word in words)


def setuser_arguments(line: str) -> Sequence[str]:
    """The arguments of a line :func:`setuser` printed, as redis-cli would send them (for tests and tools)."""
    words: list[str] = []
    for match in re.finditer(r'"((?:[^"\\]|\\.)*)"|(\S+)', line):
        quoted, bare = match.groups()
        words.append(re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare)
    return words
