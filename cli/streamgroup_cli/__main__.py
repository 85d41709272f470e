"""``streamgroup``: a command line for the people running Streamgroup.

Subcommands talk to Redis directly (``--redis-url`` or ``SG_REDIS_URL``):

* ``status``: per stream and group, the lag, pending count, oldest pending age and consumers;
* ``produce``: add entries from JSON lines on stdin (one flat object per line).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import orjson
import redis


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _text(value: Any) -> str:
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)


def _sync(reply: Any) -> Any:
    """redis-py types replies as ``Awaitable | Any``; the synchronous client returns the value."""
    return reply


def _id_age(entry_id: str, now: float) -> float:
    return max(0.0, now - int(entry_id.split("-", 1)[0]) / 1000)


def group_status(client: redis.Redis, stream: str, group_filter: str | None = None) -> list[dict[str, Any]]:
    """One row per group of ``stream``: what SREs look at first when something is slow."""
    try:
        groups: Any = client.xinfo_groups(stream)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            raise CLIError(f"stream {stream!r} does not exist") from None
        raise
    now = time.time()
    rows = []
    for info in groups:
        name = _text(info["name"])
        if group_filter is not None and name != group_filter:
            continue
        summary: Any = client.xpending(stream, name)
        oldest = _text(summary["min"]) if summary.get("pending") else None
        consumers = [
            {"name": _text(c["name"]), "pending": int(c["pending"]), "idle_seconds": int(c["idle"]) / 1000}
            for c in _sync(client.xinfo_consumers(stream, name))
        ]
        lag = info.get("lag")
        rows.append({
            "stream": stream,
            "group": name,
            "lag": int(lag) if isinstance(lag, int) and lag >= 0 else None,
            "pending": int(info["pending"]),
            "oldest_pending_age_seconds": round(_id_age(oldest, now), 3) if oldest else None,
            "last_delivered_id": _text(info["last-delivered-id"]),
            "consumers": consumers,
        })
    if group_filter is not None and not rows:
        raise CLIError(f"stream {stream!r} has no group {group_filter!r}")
    return rows


def _print_status(rows: list[dict[str, Any]], out: TextIO) -> None:
    header = f"{'STREAM':<24} {'GROUP':<20} {'LAG':>8} {'PENDING':>8} {'OLDEST':>9} CONSUMERS (pending, idle)"
    print(header, file=out)
    for row in rows:
        lag = "?" if row["lag"] is None else str(row["lag"])
        oldest = "-" if row["oldest_pending_age_seconds"] is None else f"{row['oldest_pending_age_seconds']:.1f}s"
        consumers = ", ".join(f"{c['name']} ({c['pending']}, {c['idle_seconds']:.1f}s)" for c in row["consumers"])
        print(f"{row['stream']:<24} {row['group']:<20} {lag:>8} {row['pending']:>8} {oldest:>9} {consumers or '-'}",
              file=out)


def produce(client: redis.Redis, stream: str, lines: TextIO, maxlen: int | None = None) -> int:
    """XADD one entry per JSON line; values that are not strings are stored as their JSON text."""
    count = 0
    pipe = client.pipeline(transaction=False)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
            if not isinstance(obj, dict) or not obj:
                raise ValueError("expected a non-empty JSON object")
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            pipe.execute()
            raise CLIError(f"line {number}: {exc}; the {count} entries before it were added, none after") from None
        fields = {k: v if isinstance(v, str) else orjson.dumps(v) for k, v in obj.items()}
        pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
        count += 1
        if len(pipe) >= 500:
            pipe.execute()
    pipe.execute()
    return count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamgroup", description="Inspect and feed Streamgroup's Redis streams.")
    parser.add_argument("--redis-url", default=os.environ.get("SG_REDIS_URL", "redis://127.0.0.1:6379/0"),
                        help="Redis URL (default: $SG_REDIS_URL or redis://127.0.0.1:6379/0)")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="lag, pending and consumers of each group")
    status.add_argument("streams", nargs="+", help="stream keys")
    status.add_argument("--group", help="only this group")
    status.add_argument("--output", choices=["table", "json"], default="table")
    prod = sub.add_parser("produce", help="add entries from JSON lines on stdin")
    prod.add_argument("stream")
    prod.add_argument("--maxlen", type=int, help="trim the stream to about this many entries")
    return parser


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    args = _parser().parse_args(argv)
    out = stdout or sys.stdout
    client = redis.Redis.from_url(args.redis_url, socket_connect_timeout=5, socket_timeout=30)
    try:
        if args.command == "status":
            rows = [row for stream in args.streams for row in group_status(client, stream, args.group)]
            if args.output == "json":
                out.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
            else:
                _print_status(rows, out)
        elif args.command == "produce":
            count = produce(client, args.stream, stdin or sys.stdin, args.maxlen)
            print(f"added {count} entries to {args.stream}", file=out)
    except CLIError as exc:
        print(f"streamgroup: {exc}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        print(f"streamgroup: Redis error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
