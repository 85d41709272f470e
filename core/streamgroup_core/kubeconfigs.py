"""A kubeconfig's embedded certificates and keys kept in memory, never written to the temporary folder.

A kubeconfig often embeds its CA, client certificate and key (``certificate-authority-data``,
``client-key-data``). The kubernetes client writes such data to files in the temporary folder, kept
until the process exits, because Python's ssl module (and kopf) load certificates from paths only:
a client key at rest in a writable folder, for the operator and for the CLI's ``--streamgroup``
alike. :func:`keep_in_memory` makes the client put it in anonymous memory files (``memfd_create``)
instead, reached through ``/proc/self/fd``: a path for every reader in this process, nothing on any
disk. The kubernetes client is imported only when this is called (the sidecar never is).
"""

from __future__ import annotations

import os
from typing import Any

_HELD: dict[bytes, str] = {}
"""Embedded data and the memory file holding it; open for the process's life, since every new TLS
connection reads the path again."""


def memory_file(content: Any, temp_file_path: Any = None, force_recreate: bool = False) -> str:
    """A path to ``content`` in memory: the contract of the client's ``_create_temp_file_with_content``."""
    data = content.encode() if isinstance(content, str) else bytes(content)
    if data not in _HELD or force_recreate:
        fd = os.memfd_create("streamgroup-kubeconfig", os.MFD_CLOEXEC)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        _HELD[data] = f"/proc/self/fd/{fd}"
    return _HELD[data]


def keep_in_memory() -> None:
    """From now on, the kubernetes client's embedded kubeconfig data goes to memory files (Linux only;
    elsewhere the client keeps its own temporary files)."""
    if not hasattr(os, "memfd_create"):
        return
    from kubernetes.config import kube_config

    kube_config._create_temp_file_with_content = memory_file
