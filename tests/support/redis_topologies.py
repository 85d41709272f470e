"""Real Redis topologies on loopback: a six-node Redis Cluster and a Sentinel-managed primary.

Both are Debian's redis-server, started in private temporary folders on free ports and stopped
(with their folders removed) by :meth:`cleanup`. What they take from the machine:

* a cluster node listens on its port and on port + 10000 (the cluster bus), so ports are picked
  in pairs, both free, below 55536;
* a replica is promoted by a failover only once the cluster knows it: :meth:`RedisCluster.start`
  returns after ``CLUSTER SLOTS`` lists a replica for every primary and every node says
  ``cluster_state:ok``;
* a sentinel rewrites its configuration file, so each gets its own in the temporary folder.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from .ports import terminate, wait_closed

_BUS_OFFSET = 10000


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """``count`` ports whose cluster bus ports (+10000) are free too."""
    rng = rng or random.Random()
    chosen: list[int] = []
    for _ in range(10_000):
        port = rng.randrange(20_000, 55_535 - _BUS_OFFSET + 10_000)
        if port in chosen or port + _BUS_OFFSET > 65_535:
            continue
        if _bindable(port) and _bindable(port + _BUS_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"could not find {count} free port pairs for a cluster")


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {timeout}s (last: {last!r})")


def tls_server_args(tls: Path) -> list[str]:
    """TLS only, clients must show a certificate of the test CA (``tls`` made by ``make_tls``); the
    server's certificate also serves as its client certificate towards other nodes."""
    return ["--tls-cert-file", str(tls / "server.crt"), "--tls-key-file", str(tls / "server.key"),
            "--tls-ca-cert-file", str(tls / "ca.crt"), "--tls-auth-clients", "yes", "--tls-replication", "yes"]


def tls_client_args(tls: Path | None) -> dict[str, Any]:
    """redis-py's own TLS options for the fixtures' helper clients (the code under test uses the core's)."""
    if tls is None:
        return {}
    return {"ssl": True, "ssl_ca_certs": str(tls / "ca.crt"), "ssl_certfile": str(tls / "client.crt"),
            "ssl_keyfile": str(tls / "client.key"), "ssl_check_hostname": False}


def tls_cli_args(tls: Path | None) -> list[str]:
    if tls is None:
        return []
    return ["--tls", "--cacert", str(tls / "ca.crt"), "--cert", str(tls / "client.crt"),
            "--key", str(tls / "client.key")]


class _Node:
    """One redis-server process of a topology, with its own folder and log."""

    def __init__(self, folder: Path, port: int, args: list[str], config: str | None = None,
                 tls: Path | None = None) -> None:
        self.folder = folder
        self.port = port
        self.tls = tls
        folder.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run hack/setup.sh")
        command = [binary]
        if config is not None:
            (folder / "redis.conf").write_text(config)
            command.append(str(folder / "redis.conf"))
        listen = ["--port", "0", "--tls-port", str(port), *tls_server_args(tls)] if tls else ["--port", str(port)]
        self.command = [*command, *args, *listen, "--bind", "127.0.0.1", "--dir", str(folder),
                        "--logfile", str(folder / "redis.log"), "--daemonize", "no"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        terminate(self.process)
        wait_closed(self.port)

    password: str | None = None

    def client(self, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("password", self.password)
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **tls_client_args(self.tls), **kwargs)

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _cluster_args(node_timeout_ms: int, auth: list[str]) -> list[str]:
    return ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms), "--save", "", "--appendonly", "no",
            # A replica may take over however long it was cut off: the tests kill primaries on purpose.
            "--cluster-replica-validity-factor", "0", *auth]


class ClusterNode(_Node):
    """One cluster-enabled server on its own, for what a node answers without a cluster (CLUSTER KEYSLOT)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, cluster_ports(1)[0], _cluster_args(1000, []))

    def start(self) -> ClusterNode:  # type: ignore[override]
        super().start()
        _wait(lambda: self.client().ping(), 10, f"node {self.port} answering")
        return self


class RedisCluster:
    """Three primaries and three replicas, ``cluster-node-timeout`` short so failovers take seconds."""

    def __init__(self, node_timeout_ms: int = 1000, password: str | None = None, tls: Path | None = None) -> None:
        """``tls``: a folder made by ``make_tls``; then every node, the cluster bus and replication speak TLS only."""
        self.dir = Path(tempfile.mkdtemp(prefix="sg-cluster-"))
        self.ports = cluster_ports(6)
        self.password = password
        self.tls = tls
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        args = _cluster_args(node_timeout_ms, auth) + (["--tls-cluster", "yes"] if tls else [])
        self.nodes = [_Node(self.dir / str(port), port, args, tls=tls) for port in self.ports]
        for node in self.nodes:
            node.password = password

    @property
    def seeds(self) -> str:
        """The comma-separated seed list a sidecar takes in cluster mode."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    def start(self, timeout: float = 60.0) -> RedisCluster:
        """Start the nodes and make them a cluster; on any failure, stop what was started and remove the folder."""
        try:
            return self._start(timeout)
        except BaseException:
            self.cleanup()
            raise

    def _start(self, timeout: float) -> RedisCluster:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            _wait(lambda node=node: node.client().ping(), 10, f"node {node.port} answering")
        created = subprocess.run(
            ["redis-cli", *(["-a", self.password, "--no-auth-warning"] if self.password else []),
             *tls_cli_args(self.tls), "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=120)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout[-2000:]}{created.stderr[-2000:]}")
        self.wait_healthy(timeout)
        return self

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.cleanup()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every live node says the cluster is ok and every primary has a replica."""
        def healthy() -> bool:
            for node in self.nodes:
                if not node.alive():
                    continue
                info = node.client().execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return False
            return all(len(replicas) >= 1 for replicas in self.replicas_by_primary().values())
        _wait(healthy, timeout, "cluster ok with a replica for every primary")

    def wait_failed_over(self, dead_port: int, timeout: float = 60.0) -> None:
        """Until the live nodes say the cluster is ok again and ``dead_port`` serves no slot."""
        def recovered() -> bool:
            for node in self.nodes:
                if node.alive():
                    info = node.client().execute_command("CLUSTER", "INFO")
                    if b"cluster_state:ok" not in info:
                        return False
            return all(primary != dead_port for _, _, primary, _ in self.slot_ranges())
        _wait(recovered, timeout, f"a replica promoted in place of {dead_port}")

    def restart(self, port: int, timeout: float = 60.0) -> None:
        """Start a killed node again (as a pod is restarted): it rejoins the cluster from its ``nodes.conf``,
        as a replica of whichever node took its slots; returns once every primary has a replica again."""
        node = self.node(port)
        if node.alive():
            raise RuntimeError(f"node {port} is running")
        node.start()
        _wait(lambda: node.client().ping(), 10, f"node {port} answering")
        self.wait_healthy(timeout)

    def write_replicated(self, key: str, fields: dict[str, str]) -> str:
        """XADD on the key's primary, then WAIT until a replica has it (a counted entry survives a failover)."""
        client = self.primary_of(key).client()
        try:
            entry_id = client.xadd(key, fields)  # type: ignore[arg-type]
            if int(client.wait(1, 5000)) < 1:
                raise TimeoutError(f"no replica acknowledged {key} {entry_id!r}")
            return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        finally:
            client.close()

    def _live_node(self) -> _Node:
        return next(node for node in self.nodes if node.alive())

    def slot_ranges(self) -> list[tuple[int, int, int, list[int]]]:
        """``(first slot, last slot, primary port, replica ports)`` per range, from CLUSTER SLOTS."""
        rows = self._live_node().client().execute_command("CLUSTER", "SLOTS")
        return [(int(r[0]), int(r[1]), int(r[2][1]), [int(rep[1]) for rep in r[3:]]) for r in rows]

    def replicas_by_primary(self) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {}
        for _, _, primary, replicas in self.slot_ranges():
            found.setdefault(primary, []).extend(r for r in replicas if r not in found.get(primary, []))
        return found

    def node(self, port: int) -> _Node:
        return next(node for node in self.nodes if node.port == port)

    def primary_of(self, key: str) -> _Node:
        slot = int(self._live_node().client().execute_command("CLUSTER", "KEYSLOT", key))
        for first, last, primary, _ in self.slot_ranges():
            if first <= slot <= last:
                return self.node(primary)
        raise LookupError(f"no primary serves slot {slot}")

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self._live_node().port, socket_timeout=5,
                                  password=self.password, **tls_client_args(self.tls))

    def node_id(self, port: int) -> str:
        reply = self.node(port).client().execute_command("CLUSTER", "MYID")
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def migrate_slot(self, slot: int, to_port: int, pause: float = 0.0) -> int:
        """Move ``slot`` to the primary on ``to_port`` as ``redis-cli --cluster reshard`` does: mark it
        importing and migrating, MIGRATE its keys one at a time (``pause`` seconds after each: meanwhile
        the source answers ASK for the keys already moved), then give it to the target on every
        primary. Returns how many keys moved."""
        source = next(primary for first, last, primary, _ in self.slot_ranges() if first <= slot <= last)
        if source == to_port:
            raise ValueError(f"slot {slot} is on {to_port} already")
        source_id, target_id = self.node_id(source), self.node_id(to_port)
        target, origin = self.node(to_port).client(), self.node(source).client()
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        origin.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        auth = ["AUTH", self.password] if self.password else []
        moved = 0
        for _ in range(10_000):
            keys = origin.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1)
            if not keys:
                break
            origin.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, *auth, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause)
        # The target first, then the source, as redis-cli does: the slot is never without an owner.
        for port in [to_port, source, *(p for p in self.replicas_by_primary() if p not in (to_port, source))]:
            self.node(port).client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        _wait(lambda: all(primary == to_port for first, last, primary, _ in self.slot_ranges()
                          if first <= slot <= last), 30, f"slot {slot} served by {to_port}")
        return moved

    def command_calls(self, name: str) -> int:
        """Calls of ``name`` (e.g. ``command|getkeys``) on every live node, from INFO commandstats."""
        total = 0
        for node in self.nodes:
            if node.alive():
                stats = node.client().info("commandstats").get(f"cmdstat_{name}")
                total += int(stats["calls"]) if stats else 0
        return total

    def cleanup(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(f"--- {node.port}\n{node.log()}" for node in self.nodes)


class RedisSentinel:
    """A primary, one replica and three sentinels watching them as ``master_name``."""

    def __init__(self, master_name: str = "sg-primary", down_after_ms: int = 1000,
                 password: str | None = None, sentinel_password: str | None = None, tls: Path | None = None) -> None:
        """``tls``: a folder made by ``make_tls``; then the data nodes, the sentinels and replication speak TLS only."""
        self.dir = Path(tempfile.mkdtemp(prefix="sg-sentinel-"))
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        ports = cluster_ports(5)
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        self.primary = _Node(self.dir / "primary", ports[0], ["--save", "", "--appendonly", "no", *auth], tls=tls)
        self.replica = _Node(self.dir / "replica", ports[1], ["--save", "", "--appendonly", "no", *auth,
                                                              "--replicaof", "127.0.0.1", str(ports[0])], tls=tls)
        config = "\n".join([
            f"sentinel monitor {master_name} 127.0.0.1 {ports[0]} 2",
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
            f"sentinel failover-timeout {master_name} 10000",
            f"sentinel parallel-syncs {master_name} 1",
            *([f"sentinel auth-pass {master_name} {password}"] if password else []),
            *([f"requirepass {sentinel_password}"] if sentinel_password else []),
            "sentinel resolve-hostnames no",
        ]) + "\n"
        self.sentinels = [_Node(self.dir / f"sentinel-{port}", port, ["--sentinel"], config=config, tls=tls)
                          for port in ports[2:]]

    @property
    def sentinel_addresses(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)

    def data_client(self, node: _Node) -> redis.Redis:
        return node.client(password=self.password)

    def sentinel_client(self, node: _Node) -> redis.Redis:
        return node.client(password=self.sentinel_password)

    def start(self, timeout: float = 30.0) -> RedisSentinel:
        """Start the servers and sentinels; on any failure, stop what was started and remove the folder."""
        try:
            return self._start(timeout)
        except BaseException:
            self.cleanup()
            raise

    def _start(self, timeout: float) -> RedisSentinel:
        for node in (self.primary, self.replica, *self.sentinels):
            node.start()
        for node in (self.primary, self.replica):
            _wait(lambda node=node: self.data_client(node).ping(), 10, f"node {node.port} answering")
        _wait(lambda: self.data_client(self.replica).info("replication").get("master_link_status") == "up",
              timeout, "the replica in sync")

        def watched() -> bool:
            for node in self.sentinels:
                state = self.sentinel_client(node).execute_command("SENTINEL", "MASTER", self.master_name)
                fields = dict(zip(state[::2], state[1::2], strict=True))
                if int(fields[b"num-slaves"]) < 1 or int(fields[b"num-other-sentinels"]) < 2:
                    return False
                # A replica is promotable only once this sentinel has had an INFO reply from it.
                for row in self.sentinel_client(node).execute_command("SENTINEL", "REPLICAS", self.master_name):
                    replica = dict(zip(row[::2], row[1::2], strict=True))
                    if replica[b"flags"] != b"slave" or int(replica[b"info-refresh"]) > 5000:
                        return False
            return True
        _wait(watched, timeout, "every sentinel seeing the replica and the other sentinels")
        return self

    def __enter__(self) -> RedisSentinel:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.cleanup()

    def primary_port(self) -> int:
        for node in self.sentinels:
            if node.alive():
                host_port = self.sentinel_client(node).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
                return int(host_port[1])
        raise RuntimeError("no sentinel alive")

    def failover(self, timeout: float = 30.0) -> int:
        """``SENTINEL FAILOVER``; returns the new primary's port once the sentinels report it."""
        before = self.primary_port()
        self.sentinel_client(self.sentinels[0]).execute_command("SENTINEL", "FAILOVER", self.master_name)
        return int(_wait(lambda: (port := self.primary_port()) != before and port, timeout, "a new primary"))

    def kill_primary(self, timeout: float = 30.0) -> tuple[int, int]:
        """SIGKILL the primary, as a crash would; returns (its port, the promoted replica's port) once the
        sentinels report the new primary."""
        before = self.primary_port()
        self.node(before).kill()
        after = int(_wait(lambda: (port := self.primary_port()) != before and port, timeout, "a promoted replica"))
        # Only then may it restart: a sentinel that has not heard of the failover yet would send clients to
        # a restarted old primary, and without persistence that one is empty (README, "What replication
        # means for you"). Kubernetes gives the same guarantee with a startup delay, or persistence.
        _wait(lambda: self.primary_ports() == {after}, timeout, "every sentinel naming the promoted replica")
        return before, after

    def primary_ports(self) -> set[int]:
        """The primary's port according to each live sentinel."""
        return {int(self.sentinel_client(node).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)[1])
                for node in self.sentinels if node.alive()}

    def restart(self, port: int, timeout: float = 30.0) -> None:
        """Start a killed data node again (as Kubernetes restarts a pod); the sentinels make it a replica of
        the new primary. Returns once it is one, in sync, so writes can be counted again (WAIT 1)."""
        node = self.node(port)
        node.start()
        _wait(lambda: self.data_client(node).ping(), 10, f"node {port} answering")

        def replicating() -> bool:
            info = self.data_client(node).info("replication")
            return info.get("role") == "slave" and info.get("master_link_status") == "up"
        _wait(replicating, timeout, f"node {port} a replica in sync")

    def node(self, port: int) -> _Node:
        return next(node for node in (self.primary, self.replica) if node.port == port)

    def cleanup(self) -> None:
        for node in (*self.sentinels, self.primary, self.replica):
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
