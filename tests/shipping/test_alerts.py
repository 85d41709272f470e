"""The alerting rules: valid for Prometheus, and each alert fires when it should and only then."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: hack/setup.sh installs Debian's prometheus package"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


class TestAlertingRules:
    def test_the_rules_file_passes_promtool_check(self) -> None:
        result = promtool("check", "rules", "deploy/prometheus/alerts.yaml")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 7 rules found" in result.stdout

    def test_every_alert_fires_on_its_symptom_and_stays_quiet_otherwise(self) -> None:
        result = promtool("test", "rules", "tests/shipping/alerts-test.yaml")
        assert result.returncode == 0, result.stdout + result.stderr

    def test_every_alert_has_a_unit_test(self) -> None:
        rules = (REPO / "deploy/prometheus/alerts.yaml").read_text()
        tests = (REPO / "tests/shipping/alerts-test.yaml").read_text()
        names = [line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")]
        assert len(names) == 7
        for name in names:
            assert f"alertname: {name}" in tests, name
