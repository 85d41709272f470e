"""The benchmark harness still runs end to end: a smoke run of every scenario with tiny sizes.

No figure is checked (speed targets live in bench/ and docs/performance.md, never in tests);
what is checked is that each scenario ran, that the sidecar runs delivered and acknowledged
every entry, and that the harness left no process behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
TINY = ["--entries", "400", "--ceiling-entries", "2000", "--requests", "300", "--client-seconds", "3",
        "--naive-seconds", "0.5", "--duration", "1", "--warmup", "0.2", "--rate", "200", "--repeat", "1",
        "--clients", "builtin,pyreqwest", "--scale", "1,2"]


def harness_processes() -> set[int]:
    """PIDs of sinks, sidecars and private Redis servers, whoever started them."""
    markers = ("bench.sink", "streamgroup_sidecar", "redis-server")
    return {proc.pid for proc in psutil.process_iter(["cmdline"])
            if any(marker in " ".join(proc.info.get("cmdline") or []) for marker in markers)}


class TestTheHarness:
    def test_every_scenario_runs_with_tiny_sizes_and_the_sidecar_runs_deliver_everything(self, tmp_path: Path) -> None:
        figures = tmp_path / "bench.json"
        before = harness_processes()
        done = subprocess.run([sys.executable, "-m", "bench.run", *TINY, "--json", str(figures)], cwd=REPO,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads(figures.read_text())["summary"]
        for scenario in ("redis_ceiling", "sink_ceiling", "http:builtin:uvloop", "http:pyreqwest:uvloop", "naive",
                         "sidecar", "forwarder", "batch", "scale:2"):
            assert "error" not in summary[scenario], (scenario, summary[scenario])
            assert summary[scenario]["rate"] > 0, scenario
        for scenario in ("sidecar", "batch", "scale:2"):
            assert summary[scenario]["verified"] is True, scenario
        assert "4 Sidecar per-entry" in done.stdout and "5 Sidecar batch mode" in done.stdout
        assert harness_processes() <= before, "the harness stopped every process it started"

    def test_the_profiler_ranks_the_sidecar_hot_path(self) -> None:
        done = subprocess.run([sys.executable, "-m", "bench.profile_sidecar", "--entries", "2000", "--tool", "cprofile",
                               "--top", "5"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "2001 entries" in done.stdout and "streamgroup_sidecar" in done.stdout
