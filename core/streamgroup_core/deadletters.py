"""Dead letters: where they go (the key template) and what one looks like (its fields).

The sidecar writes dead letters, the operator measures their streams and the CLI lists, re-drives
and purges them; all three must resolve the same key and read the same fields, so both are defined
here once.

The key template has one placeholder, ``{stream}``, replaced by the source stream's key; every
other character is the key's own, braces included, so that Redis Cluster hash tags need no
escaping: ``{{stream}}:dead`` gives ``{orders}:dead``, in the slot of ``orders``, and
``dlq{v2}:{stream}`` gives ``dlq{v2}:orders``. A source that has a hash tag keeps it in its dead
letter key under the default template: ``orders:{3}`` → ``orders:{3}:dead``.

A dead letter is the source entry's fields, after metadata fields named ``sg:…`` (stream, ID,
group, consumer, deliveries, reason, detail, time) that come first, each once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .partitions import hash_tag

DEFAULT_TEMPLATE = "{stream}:dead"
META_FIELDS = ("sg:stream", "sg:id", "sg:group", "sg:consumer", "sg:deliveries", "sg:reason", "sg:detail", "sg:time")
_META = frozenset(name.encode() for name in META_FIELDS)

Fields = Sequence[tuple[bytes, bytes]]


class InvalidTemplate(ValueError):
    """A dead-letter key template that does not follow the syntax; the message says what is wrong."""


PLACEHOLDER = "{stream}"


def check_template(template: str) -> str:
    """``template`` if it has the placeholder; :class:`InvalidTemplate` otherwise."""
    if PLACEHOLDER not in template:
        raise InvalidTemplate(f"{template!r} must contain {PLACEHOLDER}, e.g. {DEFAULT_TEMPLATE}")
    if template == PLACEHOLDER:
        raise InvalidTemplate(f"{template!r} is the source stream itself: its dead letters would be read again")
    return template


def dead_letter_key(template: str, stream: str) -> str:
    """The dead-letter stream of ``stream``."""
    return check_template(template).replace(PLACEHOLDER, stream)


def dead_letter_key_for(template: str, stream: str, mode: str) -> str:
    """The dead-letter stream of ``stream`` under ``template`` when Redis runs in ``mode``.

    Standalone and sentinel mode: :func:`dead_letter_key`. On a Redis Cluster the dead letter is
    written by one script together with the source's XACK, so both keys must share a slot: with the
    default template a stream with a hash tag keeps it (``orders:{3}`` → ``orders:{3}:dead``) and an
    untagged one becomes the tag (``orders`` → ``{orders}:dead``; ``orders:dead`` would be elsewhere).
    Another template is taken as it stands; whoever writes checks its slot.
    """
    if mode == "cluster" and template == DEFAULT_TEMPLATE and hash_tag(stream) == stream.encode():
        return "{" + stream + "}:dead"
    return dead_letter_key(template, stream)


def source_of(template: str, key: str) -> str | None:
    """The stream whose dead-letter stream ``key`` is under ``template``, or ``None`` if it is not one."""
    literals = [re.escape(part) for part in check_template(template).split(PLACEHOLDER)]
    pattern = literals[0] + "".join(("(?P<stream>.+)" if i == 0 else "(?P=stream)") + literal
                                    for i, literal in enumerate(literals[1:]))
    match = re.fullmatch(pattern, key, re.DOTALL)
    return match.group("stream") if match else None


def dead_letter_fields(
    stream: str, entry_id: str, fields: Fields | None, *, group: str, consumer: str, deliveries: int,
    reason: str, detail: str, time_ms: int,
) -> list[bytes | str]:
    """The flat field list of a dead letter: metadata first, then the original fields in order."""
    flat: list[bytes | str] = [
        "sg:stream", stream,
        "sg:id", entry_id,
        "sg:group", group,
        "sg:consumer", consumer,
        "sg:deliveries", str(deliveries),
        "sg:reason", reason,
        "sg:detail", detail,
        "sg:time", str(time_ms),
    ]
    for name, value in fields or ():
        flat += [name, value]
    return flat


def split_fields(fields: Fields) -> tuple[dict[str, bytes], list[tuple[bytes, bytes]]]:
    """Metadata (the leading ``sg:`` fields, each once) apart from the original fields."""
    meta: dict[str, bytes] = {}
    position = 0
    while position < len(fields) and fields[position][0] in _META:
        name = fields[position][0].decode()
        if name in meta:
            break
        meta[name] = fields[position][1]
        position += 1
    return meta, list(fields[position:])
