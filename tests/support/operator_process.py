"""The operator as a separate process (``python -m streamgroup_operator``), watching given namespaces."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .netns import entered
from .ports import free_port


class OperatorProcess:
    """``kubeconfig`` goes to ``$KUBECONFIG`` (``None``: unset); ``args`` are flags, ``env`` more variables.

    ``netns``: run it inside that network namespace (the real node's, :mod:`tests.support.node`), so
    that it reaches Redis at the address the pods use; its health port is then asked from inside too.
    """

    def __init__(self, kubeconfig: Path | None, namespaces: Sequence[str], args: Sequence[str] = (),
                 netns: str | None = None, **env: str) -> None:
        self.netns = netns
        self.port = free_port()
        self.args = list(args)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            **({"KUBECONFIG": str(kubeconfig)} if kubeconfig is not None else {}),
            "SG_OPERATOR_NAMESPACES": ",".join(namespaces),
            "SG_OPERATOR_HOST": "127.0.0.1",
            "SG_OPERATOR_PORT": str(self.port),
            "SG_OPERATOR_RESYNC_INTERVAL": "0.5",
            "SG_OPERATOR_SIDECAR_IMAGE": "streamgroup/streamgroup:test",
            # Leader election is on by default; outside a pod the Lease's namespace must be given.
            **({"SG_OPERATOR_LEADER_ELECT_NAMESPACE": namespaces[0]} if namespaces else {}),
            **env,
        }
        self.log = Path(tempfile.mkstemp(prefix="sg-operator-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> OperatorProcess:
        with self.log.open("ab") as log:
            command = [sys.executable, "-m", "streamgroup_operator", *self.args]
            if self.netns is not None:
                command = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *command]
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited with {self.process.returncode}:\n{self.logs()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"operator not healthy after {timeout}s:\n{self.logs()[-4000:]}")
            time.sleep(0.1)
        return self

    def get(self, path: str) -> tuple[int, str]:
        if self.netns is not None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            with entered(self.netns):  # the socket is made inside; it keeps that network when used outside
                connection.connect()
            try:
                connection.request("GET", path)
                reply = connection.getresponse()
                return int(reply.status), reply.read().decode()
            finally:
                connection.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
            return int(reply.status), reply.read().decode()

    def healthy(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, count: int) -> str:
        """The last ``count`` lines of the log, without the resync timer's routine successes."""
        lines = [line for line in self.logs().splitlines() if "Timer 'resync' succeeded" not in line]
        return "\n".join(lines[-count:])

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.log.unlink(missing_ok=True)
        return code
