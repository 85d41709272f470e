"""Dead letters: where they go (the key template) and what one looks like (its fields).

The sidecar writes dead letters, the operator measures their streams and the CLI lists, re-drives
and purges them; all three must resolve the same key and read the same fields, so both are defined
here once.

The key template has one placeholder, ``{stream}``, replaced by the source stream's key. Braces
that belong in the key itself are doubled, as in Python's ``str.format``: ``dlq{{v2}}:{stream}``
gives ``dlq{v2}:orders``, and ``{{{stream}}}:dead`` gives ``{orders}:dead`` (a Redis Cluster hash
tag that keeps the dead letters in their stream's slot). Anything else in braces is refused.

A dead letter is the source entry's fields, after metadata fields named ``sg:…`` (stream, ID,
group, consumer, deliveries, reason, detail, time) that come first, each once.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

DEFAULT_TEMPLATE = "{stream}:dead"
META_FIELDS = ("sg:stream", "sg:id", "sg:group", "sg:consumer", "sg:deliveries", "sg:reason", "sg:detail", "sg:time")
_META = frozenset(name.encode() for name in META_FIELDS)

Fields = Sequence[tuple[bytes, bytes]]


class InvalidTemplate(ValueError):
    """A dead-letter key template that does not follow the syntax; the message says what is wrong."""


def _pieces(template: str) -> list[tuple[str, bool]]:
    """``(literal text, followed by {stream})`` pieces of ``template``, or :class:`InvalidTemplate`."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidTemplate(f"{template!r}: {exc}; write a brace that belongs in the key twice ({{{{ or }}}})"
                              ) from None
    pieces = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (name != "stream" or spec or conversion):
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise InvalidTemplate(f"{template!r}: {shown} is not a placeholder; the only one is {{stream}} "
                                  "(write a brace that belongs in the key twice)")
        pieces.append((literal, name is not None))
    if not any(has_stream for _, has_stream in pieces):
        raise InvalidTemplate(f"{template!r} must contain {{stream}}, e.g. {DEFAULT_TEMPLATE}")
    return pieces


def check_template(template: str) -> str:
    """``template`` if it follows the syntax; :class:`InvalidTemplate` otherwise."""
    _pieces(template)
    return template


def dead_letter_key(template: str, stream: str) -> str:
    """The dead-letter stream of ``stream``."""
    return "".join(literal + (stream if has_stream else "") for literal, has_stream in _pieces(template))


def source_of(template: str, key: str) -> str | None:
    """The stream whose dead-letter stream ``key`` is under ``template``, or ``None`` if it is not one."""
    pattern = ""
    for literal, has_stream in _pieces(template):
        pattern += re.escape(literal) + ("(?P<stream>.+)" if has_stream and "(?P<stream>" not in pattern
                                         else "(?P=stream)" if has_stream else "")
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
