"""The benchmark harness still runs end to end: a smoke run of every scenario with tiny sizes.

No figure is checked (speed targets live in bench/ and docs/performance.md, never in tests);
what is checked is that each scenario ran, that the sidecar runs delivered and acknowledged
every entry, and that the harness left none of the processes it started behind (it records them;
other processes on the machine, such as another test run's redis-server, are none of its business).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from bench.common import PROCESS_LOG

REPO = Path(__file__).resolve().parents[2]
TINY = ["--entries", "400", "--ceiling-entries", "2000", "--requests", "300", "--client-seconds", "3",
        "--naive-seconds", "0.5", "--duration", "1", "--warmup", "0.2", "--rate", "200", "--repeat", "1",
        "--clients", "builtin,pyreqwest", "--scale", "1,2"]


def still_running(record: Path) -> list[str]:
    """The processes the harness recorded that still run (the same PID and start time: not a reused PID)."""
    left = []
    for line in record.read_text().splitlines():
        pid, started, name = line.split(" ", 2)
        try:
            if psutil.Process(int(pid)).create_time() == float(started):
                left.append(f"{name} ({pid})")
        except psutil.NoSuchProcess:
            continue
    return left


class TestTheHarness:
    def test_every_scenario_runs_with_tiny_sizes_and_the_sidecar_runs_deliver_everything(self, tmp_path: Path) -> None:
        figures, record = tmp_path / "bench.json", tmp_path / "processes"
        env = {**os.environ, PROCESS_LOG: str(record)}
        done = subprocess.run([sys.executable, "-m", "bench.run", *TINY, "--json", str(figures)], cwd=REPO,
                              capture_output=True, text=True, timeout=240, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads(figures.read_text())["summary"]
        for scenario in ("redis_ceiling", "sink_ceiling", "http:builtin:uvloop", "http:pyreqwest:uvloop", "naive",
                         "sidecar", "forwarder", "batch", "scale:2"):
            assert "error" not in summary[scenario], (scenario, summary[scenario])
            assert summary[scenario]["rate"] > 0, scenario
        for scenario in ("sidecar", "batch", "scale:2"):
            assert summary[scenario]["verified"] is True, scenario
        assert "4 Sidecar per-entry" in done.stdout and "5 Sidecar batch mode" in done.stdout
        started = record.read_text().splitlines()
        assert any(" redis" in line for line in started) and any(" sidecar" in line for line in started)
        assert still_running(record) == [], "the harness stopped every process it started"

    def test_the_profiler_ranks_the_sidecar_hot_path(self) -> None:
        done = subprocess.run([sys.executable, "-m", "bench.profile_sidecar", "--entries", "2000", "--tool", "cprofile",
                               "--top", "5"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "2001 entries" in done.stdout and "streamgroup_sidecar" in done.stdout


class TestTheOperatorScenario:
    def test_a_few_streamgroups_are_made_measured_and_everything_it_started_is_stopped(self, tmp_path: Path) -> None:
        """bench.operator_scale end to end with five StreamGroups (it needs the control-plane binaries)."""
        figures, record = tmp_path / "scale.json", tmp_path / "processes"
        env = {**os.environ, PROCESS_LOG: str(record)}
        done = subprocess.run([sys.executable, "-m", "bench.operator_scale", "--streamgroups", "5", "--resync", "1",
                               "--settle", "1", "--window", "2", "--json", str(figures)], cwd=REPO,
                              capture_output=True, text=True, timeout=240, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(figures.read_text())
        for figure in ("groups_made_s", "deployments_made_s", "lag_in_every_status_s", "scaled_everywhere_s",
                       "operator_cpu_percent", "operator_rss_mb"):
            assert isinstance(result[figure], float), figure
        assert "steady-state operator CPU" in done.stdout
        started = record.read_text().splitlines()
        for name in ("kube-apiserver", "etcd", "redis", "operator"):
            assert any(line.endswith(f" {name}") for line in started), name
        assert still_running(record) == [], "the scenario stopped every process it started"
