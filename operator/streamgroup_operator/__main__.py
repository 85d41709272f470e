"""``streamgroup-operator``: settings from flags and ``SG_OPERATOR_*``, a cluster to talk to, the Lease, then kopf.

Everything that can be wrong before the operator starts (a bad value, no Kubernetes
configuration, a kubeconfig or context that cannot be used, no namespace for the Lease) ends the
process with exit status 2 and one line on stderr, rather than a traceback that kopf would repeat
every minute.

With leader election (:mod:`.electing`) the health server answers first, then the operator stands
by until it holds the Lease, and only then starts kopf: a standby has no watch, no handler and no
resync, so it cannot write anything. Stopped (SIGTERM) while leading, it lets kopf stop, waits for
its last API calls, and releases the Lease; losing the Lease ends the process at once (status 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from streamgroup_core import logs

from . import applying, authenticating, electing, handlers
from .config import PROG, ConfigError, OperatorSettings, parse_settings
from .loggers import LOGGER, NamingKopfObjects, QuietWatchHandlers


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv, env)
        found = authenticating.locate(settings.kube, env)
        authenticating.load(found)
        lease = (electing.lease_namespace(settings.election, env, electing.read_text)
                 if settings.election.enabled else None)
    except (ConfigError, authenticating.NoCluster) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.logs.level, settings.logs.format).addFilter(NamingKopfObjects())
    logging.getLogger("kopf.objects").addFilter(QuietWatchHandlers())
    namespaces = settings.watch.namespaces
    LOGGER.info("starting", extra={"sg": {
        "kubernetes": found.describe(), "namespaces": ",".join(namespaces) or "(all)",
        "lease": f"{lease}/{settings.election.lease_name}" if lease else "(none: leader election off)"}})
    return asyncio.run(operate(settings, lease, electing.identity(env) if lease is not None else None))


async def operate(settings: OperatorSettings, lease_namespace: str | None, identity: str | None) -> int:
    """Serve the probes, win the Lease (if electing), run kopf until it stops, then give the Lease up."""
    state = handlers.State.new(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):  # kopf puts its own in place once it runs
        loop.add_signal_handler(signum, stopping.set)
    elector = None
    if lease_namespace is not None and identity is not None:
        elector = electing.Elector(settings.election, lease_namespace, identity, state.metrics.leader)
        await handlers.serve(state, elector.ready)
    else:
        state.metrics.leader.set(1)
        await handlers.serve(state, lambda: {"watching": True})
    keeping: asyncio.Task[None] | None = None
    try:
        if elector is not None:
            if not await elector.acquire(stopping):
                return 0  # stopped while standing by
            # Made before kopf starts, so that kopf, which cancels every task made while it runs, leaves it be.
            keeping = asyncio.create_task(elector.keep(), name="lease")
        registry = handlers.registry(settings)

        async def stopped(**_: Any) -> None:
            # Stopped by its own signal handler, kopf leaves its waiter of the stop flag pending, then waits
            # 5 s for it among the "hung tasks" before cancelling it: the Lease would be released that late.
            stopping.set()

        kopf.on.cleanup(registry=registry, id="stop-flag")(stopped)
        namespaces = settings.watch.namespaces
        # An identity of our own: kopf's default asks getpass.getuser(), which raises in an image whose
        # user (65532) has no passwd entry, as containerd runs it (podman adds one, so podman alone hid it).
        # (kopf's Identity type is a NewType of str it does not export.)
        own: Any = identity or f"streamgroup-operator@{socket.gethostname()}"
        await kopf.operator(registry=registry, memo=kopf.Memo(state=state), standalone=True,
                            clusterwide=not namespaces, namespaces=namespaces, stop_flag=stopping, identity=own)
    finally:
        if keeping is not None:
            # Renewing while the last API calls finish: the Lease is given up only once nothing of ours acts.
            settled = await asyncio.to_thread(applying.settle, settings.election.renew_deadline / 2)
            keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeping
            if elector is not None:
                await elector.release(settled)
        if state.server is not None:
            await state.server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
