"""``streamgroup-sidecar``: parse the configuration, run until SIGTERM/SIGINT, exit cleanly."""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import logging
import signal
import sys
from collections.abc import Sequence

from streamgroup_core import logs

from .config import ConfigError, parse_settings
from .reading import GroupLost
from .running import Sidecar

# Seconds between collections on the clock (see _collect_on_a_clock).
COLLECTION_INTERVAL = 30.0


async def _run(sidecar: Sidecar) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    collector = asyncio.create_task(_collect_on_a_clock(COLLECTION_INTERVAL))
    try:
        await sidecar.run(stop)
    finally:
        collector.cancel()


async def _collect_on_a_clock(interval: float) -> None:
    """Run a full garbage collection every ``interval`` seconds, whatever the rate.

    With the thresholds of :func:`_tune_gc` collections follow allocations: at saturation that is
    often, but at a few hundred entries a second the first young collection can take hours, and
    cyclic garbage made meanwhile (a dropped connection, a failure's traceback) would hold memory
    that long. After the freeze a full collection only walks what was allocated since start-up,
    so it is short (its measured cost is in docs/performance.md).
    """
    while True:
        await asyncio.sleep(interval)
        gc.collect()


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path.

    Entries, requests and replies are short-lived and free of cycles: reference counting frees
    them. With the default thresholds the collector still runs every 700 allocations and walks
    every object the imports left behind, a visible share of the CPU in batch mode
    (docs/performance.md). Objects alive after start-up are frozen out of its walks, and young
    collections run every 50,000 allocations instead of 700. Under load full collections stay
    frequent (every ten million allocations, minutes at saturation) so that cyclic garbage
    (tracebacks, futures) never piles up: after the freeze they only walk what was allocated
    since. At low rates allocations are few, so :func:`_collect_on_a_clock` collects as well.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"streamgroup-sidecar: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    try:
        sidecar = Sidecar(settings)  # checks what needs the settings whole (a dead-letter key's slot)
    except ConfigError as exc:
        print(f"streamgroup-sidecar: {exc}", file=sys.stderr)
        return 2
    _tune_gc()
    try:
        # uvloop when available: the event loop is part of the hot path (docs/performance.md).
        runner = getattr(importlib.import_module("uvloop"), "run", asyncio.run) if _has_uvloop() else asyncio.run
        runner(_run(sidecar))
    except GroupLost as exc:
        logging.getLogger("streamgroup.sidecar").error(f"exiting: {exc} (--on-group-loss exit)")
        return 3
    except ConfigError as exc:  # found once running: the app's Dapr subscriptions (--app-protocol dapr)
        print(f"streamgroup-sidecar: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
