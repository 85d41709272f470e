"""Where the Kubernetes API server is and who the operator is there, settled before anything starts.

Without a configuration kopf and the kubernetes client would not fail: kopf retries its login
every minute, logging a long traceback each time, and the process never exits. So the operator
looks first (:func:`locate`: a kubeconfig it was given, else its service account when in a
cluster, else ``$KUBECONFIG`` or ``~/.kube/config``), and stops with one line saying what it
looked for when there is nothing to use. What it found configures the kubernetes client
(:func:`load`, used for the operator's own calls) and kopf's login (:func:`credentials`), so
both talk to the same server as the same user, with the context asked for.

A kubeconfig's embedded certificates and key stay in memory (:mod:`streamgroup_core.kubeconfigs`):
the kubernetes client would otherwise write them to the temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from streamgroup_core import kubeconfigs

from .config import KubeSettings

TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
DEFAULT_KUBECONFIG = "~/.kube/config"


class NoCluster(Exception):
    """No usable Kubernetes configuration; the message, one line, says what was looked for."""


@dataclass(frozen=True)
class Found:
    """The configuration to use: a kubeconfig (one or more ``:``-separated files) and context, or in-cluster."""

    kubeconfig: str | None
    """``None``: the service account of the pod the operator runs in."""
    context: str | None = None

    def describe(self) -> str:
        if self.kubeconfig is None:
            return "in-cluster service account"
        return f"kubeconfig {self.kubeconfig}" + (f", context {self.context}" if self.context else "")


def _not_in_cluster(environ: Mapping[str, str], exists: Callable[[str], bool]) -> str | None:
    """Why this is not a pod with a service account, or ``None`` when it is."""
    if not environ.get("KUBERNETES_SERVICE_HOST") or not environ.get("KUBERNETES_SERVICE_PORT"):
        return "not in a cluster (KUBERNETES_SERVICE_HOST unset)"
    if not exists(TOKEN_FILE):
        return f"not in a cluster (no service account token at {TOKEN_FILE})"
    return None


def locate(kube: KubeSettings, environ: Mapping[str, str], exists: Callable[[str], bool] = os.path.isfile) -> Found:
    """The configuration to use, by the precedence of ``--kubeconfig``'s help; :class:`NoCluster` if none."""
    home = environ.get("HOME") or os.path.expanduser("~")

    def expand(paths: str) -> list[str]:
        return [home + p[1:] if p.startswith("~") else p for p in paths.split(os.pathsep) if p]

    if kube.kubeconfig:
        if not any(exists(p) for p in expand(kube.kubeconfig)):
            raise NoCluster(f"no kubeconfig at {':'.join(expand(kube.kubeconfig))} (--kubeconfig)")
        return Found(kube.kubeconfig, kube.context)
    why_not = _not_in_cluster(environ, exists)
    if why_not is None and kube.context is None:
        return Found(None)
    named = environ.get("KUBECONFIG")
    paths = expand(named or DEFAULT_KUBECONFIG)
    if any(exists(p) for p in paths):
        return Found(":".join(paths), kube.context)
    looked = f"no kubeconfig at {':'.join(paths)} ({'from KUBECONFIG' if named else 'KUBECONFIG unset'})"
    if kube.context is not None:
        raise NoCluster(f"no Kubernetes configuration for context {kube.context}: {looked}; use --kubeconfig")
    raise NoCluster(f"no Kubernetes configuration: {why_not} and {looked}; use --kubeconfig")


def load(found: Found) -> None:
    """Configure the kubernetes client's default configuration; :class:`NoCluster` if it cannot be used."""
    loaders: Any = k8s_config  # untyped
    kubeconfigs.keep_in_memory()
    try:
        if found.kubeconfig is None:
            loaders.load_incluster_config()
        else:
            loaders.load_kube_config(config_file=found.kubeconfig, context=found.context)
    except Exception as exc:  # a broken file fails in many ways (YAML, missing keys, unknown context)
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise NoCluster(f"cannot use the {found.describe()}: {detail}") from None


def credentials() -> kopf.ConnectionInfo:
    """kopf's connection, read from the kubernetes client's configuration that :func:`load` made.

    Read anew at each login: kopf logs in again when the API server refuses a token, and the
    client's configuration refreshes a rotated service account token (or an exec plugin's) on read.
    """
    config: Any = k8s.Configuration.get_default_copy()
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )
