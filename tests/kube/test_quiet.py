"""While nothing changes, the operator writes nothing: users watch these objects and pay for every write.

A handful of StreamGroups in different steady states (scaled by lag, scaled to zero, fixed replicas,
a partitioned stream) on a real redis-server and a real API server, the operator resyncing every
0.5 s. Once each status and Deployment shows what the operator decided, several resyncs of every
StreamGroup later (counted on the operator's own metric, not slept for) no StreamGroup and no
Deployment has a new resourceVersion, and the API server counted no write of any kind from it.
Then one stream gets an entry: exactly that StreamGroup's status is written (which shows the check
can fail).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from typing import Any

from tests.kube.streamgroups import GROUP, PLURAL, VERSION, create, eventually, manifest
from tests.support.kube import ControlPlane
from tests.support.operator_process import OperatorProcess
from tests.support.redis_server import RedisServer

WRITES = ("POST", "PUT", "PATCH", "APPLY", "DELETE")
RESOURCES = ("streamgroups", "deployments", "events", "pods", "secrets")


def versions(apis: Any, namespace: str) -> dict[str, str]:
    """Every StreamGroup's and Deployment's resourceVersion, by kind/name."""
    sgs = apis.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    deployments = apis.apps.list_namespaced_deployment(namespace).items
    found = {f"sg/{s['metadata']['name']}": s["metadata"]["resourceVersion"] for s in sgs}
    found.update({f"deployment/{d.metadata.name}": d.metadata.resource_version for d in deployments})
    return found


def writes(control_plane: ControlPlane) -> Counter[str]:
    """The API server's count of write requests so far on what the operator touches, by verb and resource."""
    text = subprocess.run([*control_plane.kubectl_command(), "get", "--raw", "/metrics"], check=True,
                          capture_output=True, text=True, timeout=30).stdout
    counted: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("verb") in WRITES and labels.get("resource") in RESOURCES:
            counted[f"{labels['verb']} {labels['resource']}"] += int(float(line.rsplit(" ", 1)[1]))
    return counted


def resyncs(operator: OperatorProcess) -> float:
    """StreamGroup resyncs so far (the operator's counter)."""
    text = operator.get("/metrics")[1]
    found = re.search(r'^streamgroup_operator_reconciles_total\{kind="resync",result="ok"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def settled(apis: Any, namespace: str, expected: dict[str, tuple[int, int | None]]) -> bool:
    """Every StreamGroup's status shows its lag and replicas, and its Deployment the same replicas."""
    sgs = {s["metadata"]["name"]: s.get("status", {})
           for s in apis.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]}
    deployments = {d.metadata.name: d.spec.replicas for d in apis.apps.list_namespaced_deployment(namespace).items}
    return all(sgs.get(name, {}).get("replicas") == replicas and sgs[name].get("lag") == lag
               and deployments.get(name) == replicas for name, (replicas, lag) in expected.items())


class TestNothingChanges:
    def test_no_streamgroup_or_deployment_is_written_while_nothing_changes_and_one_change_writes_one_status(
        self, apis: Any, control_plane: ControlPlane, namespace: str, operator: OperatorProcess,
        redis_server: RedisServer
    ) -> None:
        r = redis_server.client()
        for n in range(5):
            r.xadd("orders", {"n": str(n)})
        for partition in range(2):
            r.xadd(f"events:{{{partition}}}", {"n": "1"})
        scaled = {"minReplicas": 0, "maxReplicas": 3, "targetLagPerReplica": 10}
        create(apis, namespace, manifest("billing", redis_server.url, autoscaling=scaled))
        create(apis, namespace, manifest("idle", redis_server.url, streams=["quiet"], autoscaling=scaled))
        create(apis, namespace, manifest("fixed", redis_server.url, streams=["payments"], replicas=2))
        create(apis, namespace, manifest("partitioned", redis_server.url, streams=[], group="events",
                                         partitionedStreams=[{"name": "events", "partitions": 2}],
                                         autoscaling=scaled))
        expected = {"billing": (1, 5), "idle": (0, 0), "fixed": (2, 0), "partitioned": (1, 2)}
        eventually(lambda: settled(apis, namespace, expected), timeout=60, what="every StreamGroup settled")
        # One more resync of each after that, so that what it wrote is in place, then the quiet starts.
        start = resyncs(operator)
        eventually(lambda: resyncs(operator) >= start + len(expected), what="a resync of each")

        before, written = versions(apis, namespace), writes(control_plane)
        start = resyncs(operator)
        eventually(lambda: resyncs(operator) >= start + 4 * len(expected), what="four resyncs of each")
        assert versions(apis, namespace) == before
        # Not even a write that changes nothing (a no-op PATCH still costs both sides a request).
        assert writes(control_plane) - written == Counter()

        r.xadd("orders", {"n": "one more"})
        eventually(lambda: settled(apis, namespace, {**expected, "billing": (1, 6)}), what="the new lag shown")
        after = versions(apis, namespace)
        assert {key for key in before if after[key] != before[key]} == {"sg/billing"}
