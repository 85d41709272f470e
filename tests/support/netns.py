"""Network namespaces the tests create, and TCP forwarding across them.

Why: the real node (:mod:`tests.support.node`) gives every pod its own network through a CNI bridge,
so that a Deployment's replicas can all listen on the same ports. The rule on this machine is that only
loopback, or addresses inside network namespaces the tests create, are used; so the node's containerd,
kubelet, bridge and pods live in a namespace of ours, and everything else (API server, Redis, the test
itself) stays on the host's loopback. :class:`Forwarder` joins the two: it listens on one side and
connects on the other, byte for byte, one TCP connection per connection.

A socket belongs to the network namespace its creator was in when it was made, whatever thread or
namespace uses it afterwards: the forwarder enters a namespace (``setns``) only to make a socket, then
returns. Processes are started inside a namespace with ``nsenter --net`` alone, not ``ip netns exec``,
which would also give them a private mount namespace: the kubelet mounts Secret volumes that
containerd must see.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """The calling thread in namespace ``name`` (``None``: where it already is) until the block ends."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


class NetworkNamespace:
    """A named network namespace (``ip netns add``) with its loopback up; ``delete()`` removes it."""

    def __init__(self, prefix: str = "sg") -> None:
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
        except Exception:
            self.delete()
            raise

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def command(self, *args: str) -> list[str]:
        """``args`` run inside this namespace (network only: mounts, pids and the rest stay the host's)."""
        return ["nsenter", f"--net={self.path}", "--", *args]

    def bridge(self, device: str, address: str) -> None:
        """A Linux bridge with ``address`` (CIDR), up, for the CNI bridge plugin to attach pods to."""
        _ip("-n", self.name, "link", "add", device, "type", "bridge")
        _ip("-n", self.name, "addr", "add", address, "dev", device)
        _ip("-n", self.name, "link", "set", device, "up")

    def address(self, device: str, address: str) -> None:
        """One more address (CIDR) on ``device``: the namespace answers for it."""
        _ip("-n", self.name, "addr", "add", address, "dev", device)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30)
