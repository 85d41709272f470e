"""hack/demo.py, the first thing a new user runs: it delivers everything and stops without a warning."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]


class TestTheDemo:
    def test_it_delivers_every_entry_and_the_sidecar_stops_cleanly_before_redis(self) -> None:
        result = subprocess.run([sys.executable, "hack/demo.py", "20"], cwd=REPO, capture_output=True, text=True,
                                timeout=120)
        logs = re.search(r"logs are in (\S+)", result.stdout)
        try:
            assert result.returncode == 0, result.stdout + result.stderr
            assert "acknowledged  40 " in result.stdout and "pending       0, lag 0" in result.stdout
            assert "warnings or errors" not in result.stdout, result.stdout
            assert logs, result.stdout
            sidecar_log = (Path(logs[1]) / "sidecar.log").read_text().splitlines()
            levels = {orjson.loads(line)["level"] for line in sidecar_log}
            assert levels == {"info"}, sidecar_log
            # It left the group: Redis was still there when it stopped, and nothing was pending.
            stopped = orjson.loads(sidecar_log[-1])
            assert (stopped["msg"], stopped["left_group"], stopped["handed_over"]) == ("stopped", True, {})
        finally:
            if logs:
                shutil.rmtree(logs[1], ignore_errors=True)
