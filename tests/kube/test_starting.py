"""The operator's command against a real API server: the kubeconfig and context it is given are the ones used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.kube.streamgroups import create, deployment, eventually, manifest
from tests.support.operator_process import OperatorProcess
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer


def two_contexts(admin: Path, folder: Path) -> Path:
    """The admin's kubeconfig plus a current context that leads nowhere: only ``--context`` makes it work."""
    config = json.loads(admin.read_text())  # the test control plane writes JSON (which is YAML)
    [real] = config["contexts"]
    config["clusters"].append({"name": "nowhere", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}})
    config["contexts"].append({"name": "nowhere", "context": {"cluster": "nowhere", "user": real["context"]["user"]}})
    config["current-context"] = "nowhere"
    path = folder / "two-contexts.kubeconfig"
    path.write_text(json.dumps(config))
    return path


class TestClusterSettings:
    def test_the_kubeconfig_and_context_flags_are_used_without_kubeconfig_in_the_environment(
        self, apis: Any, kubeconfig: Path, namespace: str, redis_server: RedisServer, tmp_path: Path
    ) -> None:
        config = two_contexts(kubeconfig, tmp_path)
        context = json.loads(kubeconfig.read_text())["current-context"]
        operator = OperatorProcess(None, [namespace], ["--kubeconfig", str(config), "--context", context]).start()
        try:
            create(apis, namespace, manifest("billing", redis_server.url))
            eventually(lambda: deployment(apis, namespace, "billing"), what="the Deployment")
            assert f"kubeconfig {config}, context {context}" in operator.logs()
        finally:
            print("operator log (end):\n" + operator.tail(50))
            operator.stop()

    def test_a_context_the_kubeconfig_does_not_have_exits_2_with_one_line(
        self, kubeconfig: Path, tmp_path: Path
    ) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "streamgroup_operator", "--kubeconfig", str(kubeconfig), "--context", "staging"],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert result.returncode == 2
        [line] = result.stderr.splitlines()
        assert line.startswith(f"streamgroup-operator: cannot use the kubeconfig {kubeconfig}, context staging: ")
        assert "staging" in line.split(": ", 2)[2]
