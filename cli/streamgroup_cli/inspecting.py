"""Looking at consumer groups without changing them: ``status`` and ``pending``.

``status`` answers "is it keeping up?" (lag, pending count, oldest pending age, who is consuming);
``pending`` answers "what exactly is stuck, with whom, and how often has it been tried?". Both only
read (XINFO, XPENDING), so they are safe to run at any time against production.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

import redis

from . import CLIError
from .rendering import duration, id_ms, iso_ms, text, write_table


def _groups(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    try:
        groups: Any = client.xinfo_groups(stream)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            raise CLIError(f"stream {stream!r} does not exist") from None
        raise
    return list(groups)


def _age(entry_id: str, now: float) -> float:
    return max(0.0, now - id_ms(entry_id) / 1000)


def group_status(client: redis.Redis, stream: str, group_filter: str | None = None) -> list[dict[str, Any]]:
    """One row per group of ``stream``: what SREs look at first when something is slow."""
    now = time.time()
    rows = []
    for info in _groups(client, stream):
        name = text(info["name"])
        if group_filter is not None and name != group_filter:
            continue
        summary: Any = client.xpending(stream, name)
        oldest = text(summary["min"]) if summary.get("pending") else None
        consumers_reply: Any = client.xinfo_consumers(stream, name)
        consumers = [
            {"name": text(c["name"]), "pending": int(c["pending"]), "idle_seconds": int(c["idle"]) / 1000}
            for c in consumers_reply
        ]
        lag = info.get("lag")
        rows.append({
            "stream": stream,
            "group": name,
            "lag": int(lag) if isinstance(lag, int) and lag >= 0 else None,
            "pending": int(info["pending"]),
            "oldest_pending_age_seconds": round(_age(oldest, now), 3) if oldest else None,
            "last_delivered_id": text(info["last-delivered-id"]),
            "consumers": consumers,
        })
    if group_filter is not None and not rows:
        raise CLIError(f"stream {stream!r} has no group {group_filter!r}")
    return rows


def partition_total(name: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per group summing a partitioned stream's partition rows: lag and pending added up (lag
    unknown if any partition's is), the oldest pending entry of any partition, each consumer's pending
    summed and its shortest idle time. Marked by ``partitions``, the number of partition rows it sums."""
    totals: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = totals.setdefault(row["group"], {
            "stream": name, "group": row["group"], "partitions": 0, "lag": 0, "pending": 0,
            "oldest_pending_age_seconds": None, "consumers": {}})
        total["partitions"] += 1
        total["lag"] = None if total["lag"] is None or row["lag"] is None else total["lag"] + row["lag"]
        total["pending"] += row["pending"]
        oldest = row["oldest_pending_age_seconds"]
        if oldest is not None:
            total["oldest_pending_age_seconds"] = max(oldest, total["oldest_pending_age_seconds"] or 0.0)
        for consumer in row["consumers"]:
            seen = total["consumers"].setdefault(consumer["name"], {**consumer, "pending": 0})
            seen["pending"] += consumer["pending"]
            seen["idle_seconds"] = min(seen["idle_seconds"], consumer["idle_seconds"])
    return [{**total, "consumers": list(total["consumers"].values())} for total in totals.values()]


def _stream_label(row: dict[str, Any]) -> str:
    return f"{row['stream']} (total of {row['partitions']})" if "partitions" in row else str(row["stream"])


def print_status(rows: list[dict[str, Any]], out: TextIO) -> None:
    write_table(out, ["STREAM", "GROUP", "LAG", "PENDING", "OLDEST", "CONSUMERS (pending, idle)"], (
        [
            _stream_label(row), row["group"], "?" if row["lag"] is None else str(row["lag"]), str(row["pending"]),
            duration(row["oldest_pending_age_seconds"]),
            ", ".join(f"{c['name']} ({c['pending']}, {duration(c['idle_seconds'])})" for c in row["consumers"]) or "-",
        ]
        for row in rows
    ), right=["LAG", "PENDING", "OLDEST"])


def pending_entries(
    client: redis.Redis,
    stream: str,
    group: str,
    consumer: str | None = None,
    min_idle_seconds: float | None = None,
    count: int = 100,
) -> list[dict[str, Any]]:
    """The oldest ``count`` pending entries of ``group`` (XPENDING's extended form), with idle time and tries."""
    if not any(text(info["name"]) == group for info in _groups(client, stream)):
        raise CLIError(f"stream {stream!r} has no group {group!r}")
    idle = int(min_idle_seconds * 1000) if min_idle_seconds else None
    reply: Any = client.xpending_range(stream, group, "-", "+", count, consumername=consumer, idle=idle)
    now = time.time()
    return [
        {
            "stream": stream,
            "group": group,
            "id": text(item["message_id"]),
            "consumer": text(item["consumer"]),
            "idle_seconds": int(item["time_since_delivered"]) / 1000,
            "deliveries": int(item["times_delivered"]),
            "added": iso_ms(id_ms(text(item["message_id"]))),
            "age_seconds": round(_age(text(item["message_id"]), now), 3),
        }
        for item in reply
    ]


def print_pending(rows: list[dict[str, Any]], out: TextIO) -> None:
    write_table(out, ["STREAM", "ID", "CONSUMER", "IDLE", "DELIVERIES", "AGE"], (
        [row["stream"], row["id"], row["consumer"], duration(row["idle_seconds"]), str(row["deliveries"]),
         duration(row["age_seconds"])]
        for row in rows
    ), right=["IDLE", "DELIVERIES", "AGE"])
