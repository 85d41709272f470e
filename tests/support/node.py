"""A real Kubernetes node and the controllers beside it: containerd, a kubelet, kube-controller-manager
and kube-scheduler, all built from the pinned Kubernetes module (hack/control-plane/build.sh).

Why a real node: the moments where users lose data (a rolling update, a scale-down, a pod deleted, a
container killed, garbage collection) are decided by the kubelet and the controllers, not by anything
the operator writes. With these, a StreamGroup's Deployment gets ReplicaSets, pods are scheduled and run
from the project's image under containerd and runc, readiness comes from the sidecar's real ``/readyz``,
and a deleted pod gets SIGTERM then SIGKILL after its grace period.

Networking (see :mod:`tests.support.netns`): containerd, the kubelet, a CNI bridge and every pod live in a
network namespace the test creates, so each pod has its own address and replicas can share ports. The
API server and Redis stay on the host's loopback; forwarders carry the kubelet to the API server
(127.0.0.1 inside, as the kubeconfig says) and the pods to Redis (the bridge's address,
:attr:`RealNode.gateway`). A process that must reach Redis at the address the pods use (the operator)
runs inside the namespace too (:meth:`RealNode.command`).

How this machine constrains it (../shared/notes/real-node.md): cgroup v1 in hybrid mode (runc, cgroupfs,
no QoS cgroups), no CAP_SYS_RESOURCE (``restrict_oom_score_adj``), no registry (every image is imported
with ``ctr``, pods use ``imagePullPolicy: IfNotPresent`` or ``Never``; the sandbox image is build.sh's
``pause``), no overlay mounts for images (the ``native`` snapshotter copies each image per container).
Nothing here is optional: if containerd or the kubelet cannot start, :meth:`RealNode.start` raises with
the end of its log.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .forwarding import Forwarder
from .kube import ControlPlane, find_binaries
from .netns import NetworkNamespace
from .ports import free_port, terminate

BRIDGE, SUBNET, GATEWAY = "sgbr0", "10.88.0.0/16", "10.88.0.1"
KUBERNETES_SERVICE = "10.0.0.1"  # the first address of the API server's --service-cluster-ip-range
PAUSE_IMAGE = "localhost/streamgroup-pause:1"
NODE_BINARIES = ("kubelet", "kube-controller-manager", "kube-scheduler", "pause")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _spawn(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # A new session: the test's Ctrl-C goes to the test, which stops these in order.
        return subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(check: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}; its log ends:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout}s; the log ends:\n{_tail(log)}")
        time.sleep(0.2)


class Controllers:
    """kube-controller-manager and kube-scheduler for a control plane, as the admin, no leader election."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.dir = Path(tempfile.mkdtemp(prefix="sg-controllers-"))
        self.binaries = find_binaries(names=("kube-controller-manager", "kube-scheduler"))
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> Controllers:
        kubeconfig = str(self.plane.kubeconfig)
        common = [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                  f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1",
                  # The API server has no front-proxy CA to look up: no error per second about it.
                  "--authentication-skip-lookup=true"]
        self.processes.append(_spawn([
            str(self.binaries["kube-controller-manager"]), *common, f"--secure-port={free_port()}",
            # Publishes kube-root-ca.crt in every namespace (projected service-account volumes need it).
            f"--root-ca-file={self.plane.ca_cert}", "--controllers=*",
            # A pod of a node that stopped reporting is evicted after this; the node here never goes away.
            "--node-monitor-grace-period=60s",
        ], self.dir / "kube-controller-manager.log"))
        self.processes.append(_spawn([str(self.binaries["kube-scheduler"]), *common, f"--secure-port={free_port()}"],
                                     self.dir / "kube-scheduler.log"))
        return self

    def logs(self) -> str:
        return "\n".join(f"--- {name}:\n{_tail(self.dir / name)}"
                         for name in ("kube-controller-manager.log", "kube-scheduler.log"))

    def stop(self) -> None:
        for process in self.processes:
            terminate(process)
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


class RealNode:
    """containerd and a kubelet in a network namespace of their own, registered as node ``name``."""

    def __init__(self, plane: ControlPlane, name: str | None = None) -> None:
        self.plane = plane
        self.binaries = find_binaries(names=("kubelet", "pause"))
        self.dir = Path(tempfile.mkdtemp(prefix="sg-node-", dir="/var/tmp"))
        self.name = name or f"node-{secrets.token_hex(4)}"
        self.netns: NetworkNamespace | None = None
        self.forwarders: list[Forwarder] = []
        self.exposed: dict[int, Forwarder] = {}
        self.containerd: subprocess.Popen[bytes] | None = None
        self.kubelet: subprocess.Popen[bytes] | None = None
        self.socket = self.dir / "containerd" / "containerd.sock"

    # --- what tests use -------------------------------------------------------------------------------

    @property
    def gateway(self) -> str:
        """The address pods (and processes run with :meth:`command`) reach forwarded host ports at."""
        return GATEWAY

    def command(self, *args: str) -> list[str]:
        """``args`` run in the node's network (so ``gateway`` addresses reach Redis, 127.0.0.1 the API server)."""
        assert self.netns is not None
        return self.netns.command(*args)

    @property
    def netns_name(self) -> str:
        assert self.netns is not None
        return self.netns.name

    def expose(self, port: int) -> str:
        """Host port 127.0.0.1:``port`` reachable from pods at ``gateway:port``; returns that address."""
        self.exposed[port] = Forwarder(f"{self.netns_name}@0.0.0.0:{port}", f"127.0.0.1:{port}")
        return f"{GATEWAY}:{port}"

    def unexpose(self, port: int) -> None:
        if (forwarder := self.exposed.pop(port, None)) is not None:
            forwarder.stop()

    def load(self, archive: Path) -> None:
        """Import an OCI archive (``podman save --format oci-archive``) into the node's image store."""
        self._ctr("images", "import", "--all-platforms", str(archive), timeout=600)

    def images(self) -> list[str]:
        return self._ctr("images", "list", "--quiet").split()

    def pod_logs(self, namespace: str, pod: str) -> str:
        """Every container log of the pod the kubelet has written (also of restarted containers)."""
        out = []
        for folder in sorted((self.dir / "pod-logs").glob(f"{namespace}_{pod}_*")):
            for file in sorted(folder.rglob("*.log")):
                out.append(f"--- {file.relative_to(folder)}:\n{file.read_text(errors='replace')[-6000:]}")
        return "\n".join(out) or f"(no logs of {namespace}/{pod})"

    def logs(self) -> str:
        return (f"--- containerd:\n{_tail(self.dir / 'containerd.log')}\n"
                f"--- kubelet:\n{_tail(self.dir / 'kubelet.log')}")

    # --- starting -------------------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> RealNode:
        try:
            self.netns = NetworkNamespace("sg-node")
            self.netns.bridge(BRIDGE, f"{GATEWAY}/16")
            # The kubelet's kubeconfig names 127.0.0.1:<port>: the same address inside the namespace. Pods
            # reach it as the `kubernetes` Service, 10.0.0.1:443: without a kube-proxy, that address is the
            # namespace's own (pods get there through their default route, the bridge) and a forwarder's.
            port = self.plane.apiserver_port
            self.forwarders.append(Forwarder(f"{self.netns.name}@127.0.0.1:{port}", f"127.0.0.1:{port}"))
            self.netns.address("lo", f"{KUBERNETES_SERVICE}/32")
            self.forwarders.append(Forwarder(f"{self.netns.name}@{KUBERNETES_SERVICE}:443", f"127.0.0.1:{port}"))
            self._start_containerd()
            self._load_pause()
            self._start_kubelet(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_containerd(self) -> None:
        root = self.dir / "containerd"
        cni = self.dir / "cni"
        (cni / "net.d").mkdir(parents=True)
        (cni / "net.d" / "10-streamgroup.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "streamgroup-test",
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isDefaultGateway": True, "ipMasq": False,
                         "ipam": {"type": "host-local", "dataDir": str(cni / "ipam"),
                                  "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]]}}],
        }))
        config = self.dir / "containerd.toml"
        config.write_text(f"""version = 2
root = "{root / 'root'}"
state = "{root / 'state'}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Without it every sandbox fails ("can't get final child's PID from pipe"): no CAP_SYS_RESOURCE here.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni / 'net.d'}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
""")
        log = self.dir / "containerd.log"
        self.containerd = _spawn(self.command("containerd", "--config", str(config)), log)
        _wait(lambda: self.socket.is_socket() and self._ctr_ok("version"), 30, "containerd", self.containerd, log)

    def _load_pause(self) -> None:
        """build.sh's ``pause`` as a one-file image, written as an OCI archive and imported."""
        archive = self.dir / "pause.tar"
        _write_oci_archive(archive, PAUSE_IMAGE, self.binaries["pause"])
        self.load(archive)

    def _start_kubelet(self, timeout: float) -> None:
        kubelet_dir = self.dir / "kubelet"
        kubelet_dir.mkdir()
        config = self.dir / "kubelet.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False, "enforceNodeAllocatable": [],
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            # Test only: nothing outside this machine's namespaces can reach the kubelet.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "address": "127.0.0.1", "port": free_port(), "healthzPort": free_port(), "readOnlyPort": 0,
            "failSwapOn": False, "localStorageCapacityIsolation": False, "makeIPTablesUtilChains": False,
            "resolvConf": "", "podLogsDir": str(self.dir / "pod-logs"),
            # Imported images cannot be pulled again: never collect them, never evict for a full disk.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "imagefs.available": "0%"},
            "syncFrequency": "5s", "nodeStatusUpdateFrequency": "2s",
            "serializeImagePulls": False,
        }))
        log = self.dir / "kubelet.log"
        self.kubelet = _spawn(self.command(
            str(self.binaries["kubelet"]), f"--config={config}", f"--kubeconfig={self.plane.kubeconfig}",
            f"--root-dir={kubelet_dir}", f"--cert-dir={kubelet_dir / 'pki'}", f"--hostname-override={self.name}",
            f"--node-ip={GATEWAY}", "--v=1"), log)
        api = self.plane.api_client()
        try:
            core = client.CoreV1Api(api)
            _wait(lambda: self._ready(core), timeout, f"node {self.name} Ready", self.kubelet, log)
        finally:
            api.close()  # type: ignore[no-untyped-call]

    def _ready(self, core: client.CoreV1Api) -> bool:
        try:
            node = core.read_node(self.name)
        except ApiException:
            return False
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    # --- containerd's CLI -----------------------------------------------------------------------------

    def _ctr(self, *args: str, timeout: float = 60.0) -> str:
        result = subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def _ctr_ok(self, *args: str) -> bool:
        try:
            self._ctr(*args, timeout=5)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        return True

    # --- stopping -------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Everything this node started, by the pids and names it knows, then its directory."""
        terminate(self.kubelet)
        sandboxes = self._kill_containers()
        terminate(self.containerd)
        self._kill_shims()
        for netns in sandboxes:
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True, timeout=30)
        for forwarder in [*self.forwarders, *self.exposed.values()]:
            forwarder.stop()
        self.forwarders.clear()
        self.exposed.clear()
        if self.netns is not None:
            self.netns.delete()
        _unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_containers(self) -> list[str]:
        """SIGKILL every container's task and remove the containers; the pods' network namespaces."""
        if self.containerd is None or self.containerd.poll() is not None:
            return []
        sandboxes: list[str] = []
        try:
            ids = self._ctr("containers", "list", "--quiet").split()
        except (RuntimeError, subprocess.TimeoutExpired):
            return []
        for container in ids:
            try:
                info = json.loads(self._ctr("containers", "info", container))
            except (RuntimeError, subprocess.TimeoutExpired, ValueError):
                continue
            for namespace in ((info.get("Spec") or {}).get("linux") or {}).get("namespaces") or []:
                path = str(namespace.get("path") or "")
                if namespace.get("type") == "network" and path.startswith("/var/run/netns/"):
                    sandboxes.append(path.rsplit("/", 1)[-1])
            for step in (("tasks", "kill", "--signal", "SIGKILL", container), ("tasks", "delete", "--force", container),
                         ("containers", "delete", container)):
                self._ctr_ok(*step)
        return sorted(set(sandboxes))

    def _kill_shims(self) -> None:
        """containerd's shims outlive it by design; ours are the ones started with our socket."""
        marker = str(self.socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if b"containerd-shim" in (cmdline := (proc / "cmdline").read_bytes()) and marker in cmdline:
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue


def _unmount_under(directory: Path) -> None:
    """Unmount what the kubelet and runc left mounted below ``directory``, deepest first."""
    prefix = str(directory.resolve()) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = sorted({line.split()[4] for line in lines if line.split()[4].startswith(prefix)}, key=len, reverse=True)
    for point in points:
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30)


def _write_oci_archive(archive: Path, reference: str, binary: Path) -> None:
    """An OCI image archive of one layer holding ``binary`` as ``/pause``, its entrypoint."""
    def blob(tar: tarfile.TarFile, data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        info = tarfile.TarInfo(f"blobs/sha256/{digest}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w") as layer:
        info = layer.gettarinfo(str(binary), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o755
        with binary.open("rb") as data:
            layer.addfile(info, data)
    layer_bytes = layer_buffer.getvalue()
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"]}}
    with tarfile.open(archive, "w") as tar:
        layer_descriptor = blob(tar, layer_bytes, "application/vnd.oci.image.layer.v1.tar")
        config_descriptor = blob(tar, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_descriptor, "layers": [layer_descriptor]}
        manifest_descriptor = blob(tar, json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
        manifest_descriptor["annotations"] = {"org.opencontainers.image.ref.name": reference}
        for name, content in (("oci-layout", {"imageLayoutVersion": "1.0.0"}),
                              ("index.json", {"schemaVersion": 2, "manifests": [manifest_descriptor]})):
            data = json.dumps(content).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
