"""``streamgroup-operator``: settings from flags and ``SG_OPERATOR_*``, a cluster to talk to, then kopf.

Everything that can be wrong before the operator starts (a bad value, no Kubernetes
configuration, a kubeconfig or context that cannot be used) ends the process with exit status
2 and one line on stderr, rather than a traceback that kopf would repeat every minute.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence

import kopf

from streamgroup_core import logs

from . import authenticating, handlers
from .config import PROG, ConfigError, parse_settings
from .loggers import LOGGER, NamingKopfObjects, QuietWatchHandlers


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv, env)
        found = authenticating.locate(settings.kube, env)
        authenticating.load(found)
    except (ConfigError, authenticating.NoCluster) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.logs.level, settings.logs.format).addFilter(NamingKopfObjects())
    logging.getLogger("kopf.objects").addFilter(QuietWatchHandlers())
    namespaces = settings.watch.namespaces
    LOGGER.info("starting", extra={"sg": {"kubernetes": found.describe(),
                                          "namespaces": ",".join(namespaces) or "(all)"}})
    kopf.run(registry=handlers.registry(settings), memo=kopf.Memo(state=handlers.State.new(settings)),
             standalone=True, clusterwide=not namespaces, namespaces=namespaces)
    return 0


if __name__ == "__main__":
    sys.exit(main())
