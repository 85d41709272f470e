"""``streamgroup-operator``: run the kopf operator with the settings from ``SG_OPERATOR_*``."""

from __future__ import annotations

import sys

import kopf

from streamgroup_core import logs

from .config import ConfigError, from_environ


def main() -> int:
    try:
        settings = from_environ()
    except ConfigError as exc:
        print(f"streamgroup-operator: {exc}", file=sys.stderr)
        return 2
    logs.setup("info")
    from . import handlers  # noqa: F401  (registers the handlers with kopf)

    namespaces = settings.watch.namespaces
    kopf.run(standalone=True, clusterwide=not namespaces, namespaces=namespaces)
    return 0


if __name__ == "__main__":
    sys.exit(main())
