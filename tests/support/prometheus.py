"""A real Prometheus server on loopback, from Debian's ``prometheus`` package, for the alerting tests.

``PrometheusServer`` runs one server in a temporary directory with a generated configuration: every
scrape job discovers its targets from a file (``file_sd_configs``), so a test can point a job at
processes it starts later without restarting Prometheus, and rules are evaluated every second.
``render_alert_rules`` renders the chart's shipped alerting rules with helm, as hack/generate.sh does
for deploy/prometheus/alerts.yaml, with values of the test's choosing (thresholds lowered, ``for:``
durations shortened), so that the rules under test are the ones users get, only faster.
Alerts are read from the HTTP API (``/api/v1/alerts``) with bounded polling.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .kube import bin_dir
from .ports import free_port, terminate, wait_closed

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "streamgroup"
_PR_SET_PDEATHSIG = 1


def render_alert_rules(directory: Path, values: Mapping[str, str]) -> Path:
    """The chart's alerting rules rendered with ``alerts.<key>=<value>`` for each of ``values``.

    Written to ``directory/alerts.yaml`` as a plain rules file (the PrometheusRule's groups) and
    checked with ``promtool check rules``; returns its path.
    """
    helm = bin_dir() / "helm"
    if not os.access(helm, os.X_OK):
        raise RuntimeError(f"{helm} is missing: run `bash hack/control-plane/build.sh`")
    args = [str(helm), "template", "streamgroup", str(CHART), "--set", "prometheusRule.enabled=true",
            "--show-only", "templates/monitoring/prometheusrule.yaml"]
    for key, value in values.items():
        args += ["--set", f"alerts.{key}={value}"]
    rendered = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if rendered.returncode != 0:
        raise RuntimeError(f"helm template failed: {rendered.stderr}")
    path = directory / "alerts.yaml"
    path.write_text(yaml.safe_dump({"groups": yaml.safe_load(rendered.stdout)["spec"]["groups"]}, sort_keys=False))
    promtool = shutil.which("promtool")
    if promtool is None:
        raise RuntimeError("promtool is missing: hack/setup.sh installs Debian's prometheus package")
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                             check=False)
    if checked.returncode != 0:
        raise RuntimeError(f"promtool check rules refused the rendered rules:\n{checked.stdout}{checked.stderr}")
    return path


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the thread that started it dies (a test run killed
    with kill -9 leaves no server behind)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class PrometheusServer:
    """One Prometheus: ``jobs`` maps each scrape job's name to its first targets (``host:port``)."""

    def __init__(self, rule_files: Sequence[Path], jobs: Mapping[str, Sequence[str]], interval: str = "1s") -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: hack/setup.sh installs Debian's prometheus package")
        self.binary = binary
        self.rule_files = list(rule_files)
        self.jobs = {job: list(targets) for job, targets in jobs.items()}
        self.interval = interval
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sg-prometheus-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _targets_file(self, job: str) -> Path:
        return self.dir / f"targets-{job}.json"

    def scrape(self, job: str, targets: Sequence[str]) -> None:
        """Point ``job`` at ``targets``; Prometheus picks the file up while running (file discovery)."""
        if job not in self.jobs:
            raise KeyError(f"{job} is not a job of this server: jobs are fixed at start ({', '.join(self.jobs)})")
        self.jobs[job] = list(targets)
        staged = self.dir / f".{job}.json"
        staged.write_text(json.dumps([{"targets": list(targets)}] if targets else []))
        staged.replace(self._targets_file(job))  # atomic: discovery never reads a half-written file

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        try:
            return self._start(timeout)
        except BaseException:
            self.cleanup()  # a failed start leaves nothing running and nothing on disk
            raise

    def _start(self, timeout: float) -> PrometheusServer:
        for job, targets in self.jobs.items():
            self.scrape(job, targets)
        config = {
            "global": {"scrape_interval": self.interval, "scrape_timeout": self.interval,
                       "evaluation_interval": self.interval},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "file_sd_configs": [{"files": [str(self._targets_file(job))],
                                                       "refresh_interval": self.interval}]}
                for job in self.jobs
            ],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        with (self.dir / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, f"--config.file={self.dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready after {timeout}s:\n{self.logs()[-3000:]}")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def logs(self) -> str:
        path = self.dir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful answer of the HTTP API (``path`` after ``/api/v1/``)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as reply:
            body = json.loads(reply.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus answered {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: one ``{"metric": labels, "value": [time, "text"]}`` per series."""
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alerts(self, name: str, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """The active (pending or firing) alerts called ``name`` whose labels include ``labels``."""
        wanted = dict(labels or {})
        return [alert for alert in self.api("alerts")["alerts"]
                if alert["labels"].get("alertname") == name
                and all(alert["labels"].get(key) == value for key, value in wanted.items())]

    def wait_firing(self, name: str, labels: Mapping[str, str] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """The first alert ``name`` with ``labels`` seen firing; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            seen = self.alerts(name, labels)
            firing = [alert for alert in seen if alert["state"] == "firing"]
            if firing:
                return firing[0]
            time.sleep(0.2)
        raise AssertionError(f"{name} {labels} not firing within {timeout}s; active: {seen}; "
                             f"rules: {self._rule_states(name)}")

    def wait_resolved(self, name: str, labels: Mapping[str, str] | None = None, timeout: float = 30.0) -> None:
        """Until no alert ``name`` with ``labels`` is active (neither pending nor firing)."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            seen = self.alerts(name, labels)
            if not seen:
                return
            time.sleep(0.2)
        raise AssertionError(f"{name} {labels} still active after {timeout}s: {seen}")

    def _rule_states(self, name: str) -> list[dict[str, Any]]:
        """The rule's own view (health, last error), to say why an alert did not fire."""
        groups = self.api("rules", type="alert")["groups"]
        return [{key: rule.get(key) for key in ("name", "health", "lastError", "state")}
                for group in groups for rule in group["rules"] if rule["name"] == name]

    def stop(self) -> None:
        terminate(self.process)
        self.process = None
        wait_closed(self.port)

    def cleanup(self) -> None:
        """Stop the server and remove its directory (data, configuration, log)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.cleanup()
