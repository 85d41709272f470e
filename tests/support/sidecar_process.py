"""The sidecar as a separate process, for tests that kill it, signal it or read its logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .ports import free_port


class SidecarProcess:
    """``streamgroup-sidecar`` started with ``SG_`` variables only, as the operator starts it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.health_port = free_port()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SG_HEALTH_HOST": "127.0.0.1",
            "SG_HEALTH_PORT": str(self.health_port),
            **env,
        }
        self.log = Path(tempfile.mkstemp(prefix="sg-sidecar-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SidecarProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "streamgroup_sidecar"], env=self.env,
                                            stdout=subprocess.DEVNULL, stderr=log)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"sidecar not ready after {timeout}s:\n{self.logs()[-3000:]}")
            time.sleep(0.05)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a node dies or the OOM killer strikes."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def cleanup(self) -> None:
        self.kill()
        self.log.unlink(missing_ok=True)
