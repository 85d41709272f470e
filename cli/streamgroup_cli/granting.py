"""``streamgroup acl``: the ``ACL SETUSER`` lines that give each part of Streamgroup what it needs.

The rules themselves live in :mod:`streamgroup_core.acls`; this module only finds the keys (from
``--streams`` or a StreamGroup) and prints one line per part, each with a password placeholder.
Nothing is sent to Redis: an administrator reads the lines, replaces the placeholders and runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from streamgroup_core.acls import PARTS, Scope, setuser
from streamgroup_core.addresses import split_url
from streamgroup_core.deadletters import check_template, dead_letter_key_for
from streamgroup_core.partitions import partition_keys

from . import CLIError
from .targeting import Target


def scope(target: Target, streams: Sequence[str], partitioned: dict[str, int], template: str | None) -> Scope:
    """The keys the rules cover: the StreamGroup's, or the streams given (and their dead-letter streams)."""
    mode = target.connection.mode
    keys = list(streams) + [key for name, count in partitioned.items() for key in partition_keys(name, count)]
    if not keys:
        keys = list(target.streams)
    if not keys:
        raise CLIError("give --streams (and --partitioned-streams), or use --streamgroup")
    chosen = template if template is not None else target.dead_letter_template
    try:
        check_template(chosen)
        dead = [dead_letter_key_for(chosen, key, mode) for key in keys]
    except ValueError as exc:
        raise CLIError(f"--dead-letter-stream: {exc}") from None
    db = split_url(target.connection.url).db if mode == "standalone" and "://" in target.connection.url else 0
    return Scope(tuple(dict.fromkeys(keys)), tuple(dict.fromkeys(dead)), mode, db)


def partitioned_streams(values: Sequence[str]) -> dict[str, int]:
    """``orders:16`` → ``{"orders": 16}``."""
    found: dict[str, int] = {}
    for value in values:
        name, _, count = value.rpartition(":")
        if not name or not count.isdigit() or int(count) < 1:
            raise CLIError(f"--partitioned-streams takes NAME:PARTITIONS, e.g. orders:16 (not {value!r})")
        found[name] = int(count)
    return found


def print_rules(out: TextIO, prefix: str, keys: Scope, parts: Sequence[str]) -> None:
    for part in parts:
        if part not in PARTS:
            raise CLIError(f"unknown part {part!r}; choose from {', '.join(PARTS)}")
    for part in parts:
        print(setuser(prefix, part, keys), file=out)
