"""Working through dead letters: list them, re-drive them to their stream, or purge them.

The sidecar writes a dead letter as the ``sg:`` metadata fields (source stream, original ID, group,
consumer, deliveries, reason, detail, time) followed by the original fields. Re-driving strips that
metadata and XADDs the original fields, in their order, to the source stream (or ``--to``), then XDELs
the dead letter, both in one Lua script per entry: a dead letter is never re-driven and still listed,
nor deleted without having been re-added. A dead letter with no original fields (reason ``trimmed``:
its payload was gone before it could be delivered) cannot be re-driven, only purged.

Commands accept the dead-letter stream or its source stream: with a StreamGroup target the spec's
``delivery.deadLetterStream`` template decides, otherwise ``<stream>:dead``; a non-empty stream whose
first entry is not a dead letter is never treated as a dead-letter stream, so that ``purge orders``
cannot empty the source stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import redis

from streamgroup_core.deadletters import META_FIELDS, source_of, split_fields

from . import CLIError
from .parsing import format_id, next_id, parse_id
from .reading import Entry, count, entries, entry, is_stream, last_id, require_stream
from .rendering import fields_json, iso_ms, shorten, text, write_json_line, write_table
from .targeting import Target

# KEYS: dead-letter stream, destination. ARGV: dead letter ID, then the metadata field names.
# Returns the new ID, 0 when the dead letter has no original fields, nil when it is gone.
_REDRIVE_SCRIPT = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return false end
local fields = found[1][2]
local meta = {}
for i = 2, #ARGV do meta[ARGV[i]] = true end
local first = 1
while first < #fields and meta[fields[first]] do
  meta[fields[first]] = nil
  first = first + 2
end
if first > #fields then return 0 end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields, first))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""


@dataclass(frozen=True)
class DeadLetter:
    id: str
    meta: dict[str, bytes]
    original: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def is_dead_letter(self) -> bool:
        return "sg:stream" in self.meta

    @property
    def source(self) -> bytes | None:
        return self.meta.get("sg:stream")

    def get(self, name: str) -> str | None:
        value = self.meta.get(f"sg:{name}")
        return None if value is None else text(value)

    def to_json(self, dead_letter_stream: str) -> dict[str, Any]:
        deliveries, when = self.get("deliveries"), self.get("time")
        return {
            "dead_letter_stream": dead_letter_stream,
            "id": self.id,
            "stream": self.get("stream"),
            "original_id": self.get("id"),
            "group": self.get("group"),
            "consumer": self.get("consumer"),
            "deliveries": int(deliveries) if deliveries and deliveries.isdigit() else None,
            "reason": self.get("reason"),
            "detail": self.get("detail"),
            "time": iso_ms(int(when)) if when and when.isdigit() else None,
            **fields_json(self.original),
        }


def split(item: Entry) -> DeadLetter:
    """Metadata (the leading ``sg:`` fields, each once) apart from the original fields."""
    meta, original = split_fields(item.fields)
    return DeadLetter(item.id, meta, original)


def _looks_dead(client: redis.Redis, key: str) -> bool | None:
    """Whether the first entry of ``key`` is a dead letter; ``None`` when the stream is missing or empty."""
    if not is_stream(client, key):
        return None
    first = next(entries(client, key, limit=1), None)
    return None if first is None else split(first).is_dead_letter


def dead_letter_streams(client: redis.Redis, key: str | None, target: Target) -> list[str]:
    """The dead-letter stream(s) meant by ``key``: itself, the one of a source stream, or all of a StreamGroup."""
    if key is None:
        if not target.streams:
            raise CLIError("name a dead-letter stream (or its source stream), or use --streamgroup")
        return list(target.dead_letter_streams)
    if key in target.dead_letter_streams:
        return [key]
    if key in target.streams:
        return [target.dead_letter_stream(key)]
    looks_dead = _looks_dead(client, key)
    if looks_dead is not None:
        return [key] if looks_dead else [target.dead_letter_stream(key)]
    is_dead_letter_stream = source_of(target.dead_letter_template, key) is not None
    return [key] if is_dead_letter_stream else [target.dead_letter_stream(key)]


# -- list ---------------------------------------------------------------------------------------------------


def list_dead_letters(client: redis.Redis, dlq: str, count: int) -> tuple[list[DeadLetter], int]:
    """The oldest ``count`` dead letters of ``dlq`` and how many it holds in all."""
    if not is_stream(client, dlq):
        return [], 0
    total = int(client.xlen(dlq))  # type: ignore[arg-type]
    return [split(item) for item in entries(client, dlq, limit=count)], total


def print_dead_letters(dlq: str, letters: Sequence[DeadLetter], total: int, out: TextIO, output: str) -> None:
    if output == "json":
        for letter in letters:
            write_json_line(out, letter.to_json(dlq))
        return
    if not letters:
        print(f"{dlq}: no dead letters", file=out)
        return
    print(f"{dlq}: {total} dead letter{'s' if total != 1 else ''}", file=out)
    rows = []
    for letter in letters:
        data = letter.to_json(dlq)
        rows.append([
            letter.id, data["stream"] or "-", data["original_id"] or "-",
            "-" if data["deliveries"] is None else str(data["deliveries"]), data["reason"] or "-",
            data["time"] or "-", shorten(data["detail"] or "", 80) or "-",
        ])
    write_table(out, ["ID", "STREAM", "ORIGINAL ID", "DELIVERIES", "REASON", "TIME", "DETAIL"], rows,
                right=["DELIVERIES"])
    if total > len(letters):
        print(f"({total - len(letters)} more; raise --count to see them)", file=out)


# -- redrive ------------------------------------------------------------------------------------------------


@dataclass
class Redriven:
    moved: dict[str, int] = field(default_factory=dict)
    """Destination stream → dead letters re-added there (and deleted from the dead-letter stream)."""
    without_payload: list[str] = field(default_factory=list)
    not_dead_letters: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    """Dead letters that disappeared (purged or re-driven by someone else) before their turn."""

    @property
    def total(self) -> int:
        return sum(self.moved.values())


def _normal_ids(ids: Iterable[str]) -> list[str]:
    normal: list[str] = []
    for given in ids:
        for part in given.replace(",", " ").split():
            entry_id = format_id(*parse_id(part))
            if entry_id not in normal:
                normal.append(entry_id)
    if not normal:
        raise CLIError("--ids needs at least one entry ID")
    return normal


def _chosen(client: redis.Redis, dlq: str, ids: Sequence[str]) -> list[DeadLetter]:
    """The given dead letters, or a CLIError (before anything is changed) naming the ones that can't go."""
    letters, missing, unfit = [], [], []
    for entry_id in _normal_ids(ids):
        item = entry(client, dlq, entry_id)
        if item is None:
            missing.append(entry_id)
            continue
        letter = split(item)
        if not letter.is_dead_letter:
            unfit.append(f"{entry_id} is not a dead letter (no sg: fields)")
        elif not letter.original:
            unfit.append(f"{entry_id} has no original fields (reason {letter.get('reason')}), purge it instead")
        letters.append(letter)
    if missing:
        raise CLIError(f"not in {dlq}: {', '.join(missing)}; nothing was re-driven")
    if unfit:
        raise CLIError(f"{'; '.join(unfit)}; nothing was re-driven")
    return letters


def redrive(client: redis.Redis, dlq: str, ids: Sequence[str] | None, to: str | None) -> Redriven:
    """Re-add the original fields of the given (``ids``) or all (``None``) dead letters, deleting each one.

    All of none is nothing to do: a dead-letter stream that was never written does not exist, the same
    as an empty one. Given IDs that are not there are an error (someone expected them)."""
    if ids is None and not client.exists(dlq):
        return Redriven()
    require_stream(client, dlq)
    result = Redriven()
    if ids is not None:
        letters = _chosen(client, dlq, ids)
    else:
        newest = last_id(client, dlq)
        letters = []
        for item in entries(client, dlq, "-", newest) if newest is not None else ():
            letter = split(item)
            if not letter.is_dead_letter:
                result.not_dead_letters.append(letter.id)
            elif not letter.original:
                result.without_payload.append(letter.id)
            else:
                letters.append(letter)
    plan: list[tuple[str, bytes | str]] = []
    for letter in letters:
        destination: bytes | str = to if to is not None else letter.source or b""
        plan.append((letter.id, destination))
    for destination in dict.fromkeys(dest for _, dest in plan):
        name, raw = text(destination), destination.encode() if isinstance(destination, str) else destination
        if raw == dlq.encode():
            raise CLIError(f"cannot re-drive {dlq} into itself; nothing was re-driven")
        kind = text(client.type(raw))
        if kind != "stream":
            hint = "" if to else " (named in sg:stream; choose another with --to)"
            problem = "does not exist" if kind == "none" else f"is a {kind}, not a stream"
            raise CLIError(f"{name!r}{hint} {problem}; nothing was re-driven")
    for entry_id, destination in plan:
        try:
            # EVAL, not EVALSHA: one command for the ACL rules to grant (`streamgroup acl`).
            outcome: Any = client.eval(_REDRIVE_SCRIPT, 2, dlq, destination, entry_id,  # type: ignore[arg-type]
                                       *META_FIELDS)
        except redis.RedisError as exc:
            raise CLIError(f"Redis error after re-driving {result.total} dead letters (each one either moved or "
                           f"still in {dlq}): {exc}") from None
        if outcome is None:
            result.gone.append(entry_id)
        elif outcome == 0:
            result.without_payload.append(entry_id)
        else:
            name = text(destination)
            result.moved[name] = result.moved.get(name, 0) + 1
    return result


def describe_redrive(dlq: str, result: Redriven) -> str:
    if result.moved:
        where = ", ".join(f"{moved} to {stream}" for stream, moved in result.moved.items())
        lines = [f"re-drove {result.total} dead letter{'s' if result.total != 1 else ''} from {dlq}: {where}"]
    else:
        lines = [f"re-drove nothing from {dlq}"]
    if result.without_payload:
        lines.append(f"left {len(result.without_payload)} without original fields (payload trimmed away); "
                     f"purge them with --ids {' '.join(result.without_payload[:5])}"
                     f"{' ...' if len(result.without_payload) > 5 else ''}")
    if result.not_dead_letters:
        lines.append(f"left {len(result.not_dead_letters)} entries that are not dead letters (no sg: fields)")
    if result.gone:
        lines.append(f"{len(result.gone)} had already gone (re-driven or purged meanwhile)")
    return "\n".join(lines)


# -- purge --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Purged:
    deleted: int
    absent: list[str] = field(default_factory=list)
    """Given IDs (``--ids``) that were not in the dead-letter stream."""
    nothing: str | None = None
    """Why there was nothing to purge (no dead letters, none matching); ``None`` when some were selected."""


def purge(
    client: redis.Redis,
    dlq: str,
    *,
    ids: Sequence[str] | None = None,
    everything: bool = False,
    older_than_seconds: float | None = None,
    yes: bool = False,
    now: float | None = None,
) -> Purged:
    """Delete dead letters for good: how many went, and which of the given ``ids`` were not there.

    Without ``yes`` nothing is deleted: a CLIError says how many would go. Nothing to purge (no
    dead-letter stream yet, an empty one, nothing matching) is not an error, with or without ``yes``:
    the wanted state, none of those dead letters left, already holds.
    """
    given = _normal_ids(ids) if ids is not None else None
    if given is None and not everything and older_than_seconds is None:
        raise CLIError("say which dead letters to purge: --ids, --all or --older-than")
    # A stream that never received a dead letter does not exist: that is the same as an empty one.
    if not is_stream(client, dlq) or not client.xlen(dlq):
        return Purged(0, given or [], f"{dlq} has no dead letters")
    absent: list[str] = []
    if given is not None:
        chosen = [entry_id for entry_id in given if entry(client, dlq, entry_id) is not None]
        absent = [entry_id for entry_id in given if entry_id not in chosen]
        if not chosen:
            return Purged(0, absent, f"none of the given IDs are in {dlq}: {', '.join(absent)}")
        what = f"{len(chosen)} dead letter{'s' if len(chosen) != 1 else ''}" + (
            f" ({len(absent)} of the given IDs are not there)" if absent else "")
    elif everything:
        newest = last_id(client, dlq)
        held = int(client.xlen(dlq))  # type: ignore[arg-type]
        what = f"all {held} dead letters" if held != 1 else "the only dead letter"
    else:
        assert older_than_seconds is not None
        cutoff_ms = max(0, int(((time.time() if now is None else now) - older_than_seconds) * 1000))
        cutoff = format_id(cutoff_ms, 0)
        older = count(client, dlq, "-", "(" + cutoff, limit=2**62)
        if not older:
            return Purged(0, [], f"{dlq} has no dead letters written before {iso_ms(cutoff_ms)}")
        what = f"{older} dead letters written before {iso_ms(cutoff_ms)}"
    if not yes:
        raise CLIError(f"purge would delete {what} from {dlq} for good; add --yes to do it")
    if given is not None:
        return Purged(int(client.xdel(dlq, *chosen)), absent)  # type: ignore[arg-type]
    if everything:
        if newest is None:
            return Purged(0, [], f"{dlq} has no dead letters")
        return Purged(int(client.xtrim(dlq, minid=next_id(newest), approximate=False)))  # type: ignore[arg-type]
    return Purged(int(client.xtrim(dlq, minid=cutoff, approximate=False)))  # type: ignore[arg-type]


def describe_purge(dlq: str, result: Purged) -> str:
    if result.nothing is not None:
        return f"nothing to purge: {result.nothing}"
    note = (f" ({len(result.absent)} of the given IDs were not there: {', '.join(result.absent)})"
            if result.absent else "")
    return f"deleted {result.deleted} dead letter{'s' if result.deleted != 1 else ''} from {dlq}{note}"
