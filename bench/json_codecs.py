"""JSON encoders and the sidecar's per-entry request building, in microseconds per entry.

Why: every entry the sidecar delivers is turned into a JSON body (and a dozen headers) in
Python; this tells whether that is worth optimizing next to the HTTP and Redis costs. It
times, on a typical entry, ``orjson`` (what the sidecar uses), the standard library's
``json`` and ``msgspec`` encoding the same dict, then the sidecar's own
``fields_to_json`` (UTF-8 checks, repeated names) and ``RequestBuilder.build`` (body plus
headers) and ``build_batch`` for 100 entries, per entry.

Usage: ``python -m bench.json_codecs``. Prints one JSON line of microseconds per entry.
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from streamgroup_sidecar.encoding import RequestBuilder, fields_to_json, fields_to_object
from streamgroup_sidecar.entries import Entry

from .common import entry_fields


def per_call_us(call: Callable[[], Any], number: int = 20000) -> float:
    """Best of 5 timings, in microseconds per call (the best is the least disturbed by other work)."""
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def main() -> None:
    raw = [(k.encode(), v.encode()) for k, v in entry_fields(7, 1_700_000_000_000_000_000).items()]
    obj, _ = fields_to_object(raw)
    results: dict[str, Any] = {
        "orjson.dumps": per_call_us(lambda: orjson.dumps(obj)),
        "json.dumps": per_call_us(lambda: json.dumps(obj, separators=(",", ":")).encode()),
    }
    try:
        import msgspec

        encoder = msgspec.json.Encoder()
        results["msgspec.encode"] = per_call_us(lambda: encoder.encode(obj))
    except ImportError:
        results["msgspec.encode"] = None
    builder = RequestBuilder(group="bench", consumer="bench-0")
    static = builder.static_headers("bench")
    entry = Entry("bench", "1700000000000-0", raw)
    results["sidecar fields_to_json"] = per_call_us(lambda: fields_to_json(raw))
    results["sidecar build (body+headers)"] = per_call_us(lambda: builder.build(entry, static))
    if hasattr(builder, "build_batch"):
        batch = [Entry("bench", f"1700000000000-{i}", raw) for i in range(100)]
        headers = builder.batch_headers() if hasattr(builder, "batch_headers") else static
        results["sidecar build_batch, per entry"] = per_call_us(
            lambda: builder.build_batch(batch, headers), number=300) / len(batch)
    print(json.dumps({"us_per_entry": results}))


if __name__ == "__main__":
    main()
