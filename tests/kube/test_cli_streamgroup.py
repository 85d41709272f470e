"""`streamgroup --streamgroup NAME ...`: the CLI finds Redis, streams, group and password through the API."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from kubernetes import client

from streamgroup_cli.__main__ import main
from streamgroup_core.acls import setuser_arguments
from tests.kube.streamgroups import create, manifest
from tests.support.redis_server import RedisServer


class TestStreamGroupTarget:
    def test_status_and_dead_letters_work_by_streamgroup_name_with_the_password_from_its_secret(
        self, api_client: client.ApiClient, apis: Any, kubeconfig: Path, namespace: str
    ) -> None:
        server = RedisServer(password="cli-pa55").start()
        try:
            r = server.client()
            for n in range(3):
                r.xadd("orders", {"n": str(n)})
            r.xgroup_create("orders", "billing", id="0")
            r.xreadgroup("billing", "pod-a", {"orders": ">"}, count=1)
            r.xadd("orders:dead", {"sg:stream": "orders", "sg:id": "1-0", "sg:group": "billing", "sg:consumer": "c",
                                   "sg:deliveries": "3", "sg:reason": "status-422", "sg:detail": "d",
                                   "sg:time": "1700000000000", "n": "x"})
            client.CoreV1Api(api_client).create_namespaced_secret(namespace, client.V1Secret(
                metadata=client.V1ObjectMeta(name="redis-auth"),
                data={"password": base64.b64encode(b"cli-pa55").decode()}))
            url = f"redis://127.0.0.1:{server.port}/0"
            create(apis, namespace, manifest("billing", url, redis={"url": url,
                                                                    "passwordSecretRef": {"name": "redis-auth"}}))
            out = io.StringIO()
            code = main(["--streamgroup", "billing", "-n", namespace, "--kubeconfig", str(kubeconfig),
                         "status", "--output", "json"], stdout=out)
            assert code == 0, out.getvalue()
            [row] = orjson.loads(out.getvalue())
            assert (row["stream"], row["group"], row["lag"], row["pending"]) == ("orders", "billing", 2, 1)
            out = io.StringIO()
            code = main(["--streamgroup", "billing", "-n", namespace, "--kubeconfig", str(kubeconfig),
                         "dead-letters", "list", "--output", "json"], stdout=out)
            assert code == 0, out.getvalue()
            assert "status-422" in out.getvalue() and "cli-pa55" not in out.getvalue()
        finally:
            server.cleanup()

    def test_acl_prints_the_rules_for_a_streamgroups_own_keys_named_after_it(
        self, apis: Any, kubeconfig: Path, namespace: str
    ) -> None:
        url = "redis://127.0.0.1:6379/0"  # never reached: acl talks to no Redis
        create(apis, namespace, manifest("billing", url, streams=["refunds"],
                                         partitionedStreams=[{"name": "orders", "partitions": 2}]))
        out = io.StringIO()
        code = main(["--streamgroup", "billing", "-n", namespace, "--kubeconfig", str(kubeconfig), "acl"], stdout=out)
        assert code == 0, out.getvalue()
        lines = out.getvalue().splitlines()
        assert [line.split()[2] for line in lines] == [
            f"sg-{namespace}-billing-{part}" for part in ("sidecar", "operator", "cli-read", "cli-write")]
        arguments = setuser_arguments(lines[0])
        assert {word for word in arguments if word.startswith("~")} == {
            "~refunds", "~orders:{0}", "~orders:{1}", "~refunds:dead", "~orders:{0}:dead", "~orders:{1}:dead"}
        assert arguments[-1] == "(+xadd ~refunds:dead ~orders:{0}:dead ~orders:{1}:dead)"

    def test_a_kubeconfigs_embedded_key_is_never_written_to_the_temporary_folder(
        self, apis: Any, kubeconfig: Path, namespace: str, tmp_path: Path
    ) -> None:
        assert "client-key-data" in kubeconfig.read_text()  # the test's kubeconfig embeds its key
        create(apis, namespace, manifest("billing", "redis://127.0.0.1:6379/0"))
        scratch = tmp_path / "cli-tmp"
        scratch.mkdir()
        done = subprocess.run(
            [sys.executable, "-m", "streamgroup_cli", "--streamgroup", "billing", "-n", namespace,
             "--kubeconfig", str(kubeconfig), "acl", "--parts", "sidecar"],
            env={**os.environ, "TMPDIR": str(scratch)}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "ACL SETUSER" in done.stdout
        assert list(scratch.iterdir()) == []
