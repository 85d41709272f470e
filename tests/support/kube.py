"""A real, private Kubernetes control plane on loopback: etcd + kube-apiserver, run the way envtest does.

Why: the operator's contract is with the API server itself (CRD schemas and CEL rules, defaults, RBAC,
watches, server-side apply), and a fake would only repeat our own assumptions back to us. There is no
kubelet, scheduler or controller-manager: objects are stored and served, nothing runs (see tests/README.md).

The binaries come from hack/control-plane/build.sh, in ${STREAMGROUP_BIN_DIR:-~/.cache/streamgroup/bin}.
Everything else is made fresh per instance in a temporary directory: two CAs (one for serving, one for
client certificates), the apiserver's serving certificate, the admin's client certificate (CN=admin,
O=system:masters), the service-account key pair, etcd's data, the logs and the kubeconfig files. Every server
binds 127.0.0.1 only. Certificates are made with the openssl command (the `cryptography` package is not part
of the project's environment).

    with ControlPlane() as cp:
        subprocess.run([*cp.kubectl_command(), "get", "--raw", "/readyz"], check=True)

`python -m tests.support.kube up` starts one and waits for Ctrl-C (hack/control-plane/up.sh wraps it).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from .ports import free_port, port_is_open

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "control-plane" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kubectl", "helm")

_LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1


class BinariesMissing(RuntimeError):
    """The control-plane binaries have not been built (or not into the directory looked at)."""


def bin_dir() -> Path:
    """Where build.sh puts the binaries: $STREAMGROUP_BIN_DIR, else ~/.cache/streamgroup/bin."""
    configured = os.environ.get("STREAMGROUP_BIN_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "streamgroup" / "bin"


def find_binaries(directory: Path | None = None, names: Sequence[str] = BINARIES) -> dict[str, Path]:
    """The path of each named binary, or BinariesMissing naming the ones absent and the build command."""
    directory = directory if directory is not None else bin_dir()
    found = {name: directory / name for name in names}
    missing = [name for name, path in found.items() if not os.access(path, os.X_OK)]
    if missing:
        raise BinariesMissing(
            f"control-plane binaries missing from {directory}: {', '.join(missing)}. "
            f"Build them with `bash {BUILD_SCRIPT.relative_to(REPO_ROOT)}` "
            "(needs Go; 10 to 15 minutes cold on two cores), "
            "or point STREAMGROUP_BIN_DIR at a directory that has them."
        )
    return found


def pinned_version(module: str) -> str:
    """The version of `module` that a wrapper go.mod under hack/control-plane/ requires (first match)."""
    pattern = re.compile(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", re.MULTILINE)
    for go_mod in sorted(BUILD_SCRIPT.parent.glob("*/go.mod")):
        match = pattern.search(go_mod.read_text())
        if match:
            return match.group(1)
    raise LookupError(f"no go.mod under {BUILD_SCRIPT.parent} requires {module}")


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the thread that started it dies.

    Guards against stray servers when the test run itself is killed (kill -9, CI timeout), where no
    stop() and no atexit handler can run.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _subject(common_name: str, organizations: Sequence[str]) -> str:
    def escape(value: str) -> str:
        if not value:
            raise ValueError("certificate subject fields must not be empty")
        return re.sub(r"([/+=\\])", r"\\\1", value)

    return "/CN=" + escape(common_name) + "".join("/O=" + escape(org) for org in organizations)


class _Pki:
    """Keys and certificates made with the openssl CLI, all P-256 and valid for two days."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def _config(self, name: str, extensions: dict[str, str]) -> Path:
        lines = [
            "[req]",
            "distinguished_name = dn",
            "prompt = no",
            "x509_extensions = ext",
            "[dn]",
            "CN = placeholder",
            "[ext]",
            *(f"{key} = {value}" for key, value in extensions.items()),
        ]
        path = self.dir / f"{name}.cnf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _run(self, *args: str) -> None:
        result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")

    def certificate(
        self,
        name: str,
        subject: str,
        extensions: dict[str, str],
        issuer: str | None = None,
    ) -> tuple[Path, Path]:
        """A new key and a certificate for it, self-signed or signed by the CA called `issuer`."""
        cert, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        args = [
            "req",
            "-x509",
            "-config",
            str(self._config(name, extensions)),
            "-subj",
            subject,
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
        ]
        if issuer is not None:
            args += ["-CA", str(self.dir / f"{issuer}.crt"), "-CAkey", str(self.dir / f"{issuer}.key")]
        self._run(*args)
        return cert, key

    def ca(self, name: str, common_name: str) -> tuple[Path, Path]:
        return self.certificate(
            name,
            _subject(common_name, ()),
            {
                "basicConstraints": "critical,CA:TRUE",
                "keyUsage": "critical,keyCertSign,cRLSign,digitalSignature",
                "subjectKeyIdentifier": "hash",
            },
        )

    def client(self, name: str, user: str, groups: Sequence[str], issuer: str) -> tuple[Path, Path]:
        return self.certificate(
            name,
            _subject(user, groups),
            {
                "basicConstraints": "critical,CA:FALSE",
                "keyUsage": "critical,digitalSignature",
                "extendedKeyUsage": "clientAuth",
                "authorityKeyIdentifier": "keyid",
            },
            issuer=issuer,
        )

    def server(self, name: str, issuer: str) -> tuple[Path, Path]:
        return self.certificate(
            name,
            _subject("kube-apiserver", ()),
            {
                "basicConstraints": "critical,CA:FALSE",
                "keyUsage": "critical,digitalSignature",
                "extendedKeyUsage": "serverAuth",
                # And the `kubernetes` Service's address, as pods reach the API server (tests/support/node.py).
                "subjectAltName": "IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes.default.svc",
                "authorityKeyIdentifier": "keyid",
            },
            issuer=issuer,
        )

    def key_pair(self, name: str) -> tuple[Path, Path]:
        """A private key and its public key, for signing and checking service-account tokens."""
        key, public = self.dir / f"{name}.key", self.dir / f"{name}.pub"
        self._run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
        self._run("pkey", "-in", str(key), "-pubout", "-out", str(public))
        return key, public


class ControlPlane:
    """etcd + kube-apiserver on free loopback ports with an admin kubeconfig; stop() leaves nothing behind."""

    def __init__(
        self,
        binaries_dir: Path | None = None,
        startup_timeout: float = 90.0,
        stop_timeout: float = 15.0,
        extra_apiserver_flags: Sequence[str] = (),
        service_accounts: bool = False,
    ) -> None:
        """``service_accounts``: admit pods with their service account's token (needs a controller manager
        to make each namespace's ``default`` account and publish ``kube-root-ca.crt``: tests/support/node.py)."""
        self.binaries = find_binaries(binaries_dir)
        self.service_accounts = service_accounts
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.extra_apiserver_flags = list(extra_apiserver_flags)
        self.dir: Path | None = None
        self.etcd_client_port = 0
        self.etcd_peer_port = 0
        self.apiserver_port = 0
        self.etcd: subprocess.Popen[bytes] | None = None
        self.apiserver: subprocess.Popen[bytes] | None = None
        self._pki: _Pki | None = None
        self._identities: dict[tuple[str, ...], Path] = {}
        self._ssl: ssl.SSLContext | None = None
        self.exit_codes: dict[str, int] = {}
        """How each server ended at the last stop(): 0 or a signal on SIGTERM, -9 if it had to be killed."""

    # -- where things are ---------------------------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        if self.dir is None:
            raise RuntimeError("the control plane is not started")
        return self.dir.joinpath(*parts)

    @property
    def url(self) -> str:
        """The API server's address, e.g. https://127.0.0.1:40123."""
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_client_port}"

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig (CN=admin, O=system:masters): everything is allowed."""
        return self._path("admin.kubeconfig")

    @property
    def ca_cert(self) -> Path:
        """The CA that signed the API server's serving certificate."""
        return self._path("pki", "serving-ca.crt")

    @property
    def admin_cert(self) -> tuple[Path, Path]:
        """The admin's client certificate and key."""
        return self._path("pki", "admin.crt"), self._path("pki", "admin.key")

    @property
    def etcd_log(self) -> Path:
        return self._path("etcd.log")

    @property
    def apiserver_log(self) -> Path:
        return self._path("kube-apiserver.log")

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in (self.etcd, self.apiserver) if process is not None]

    @property
    def ports(self) -> list[int]:
        return [port for port in (self.etcd_client_port, self.etcd_peer_port, self.apiserver_port) if port]

    # -- starting and stopping -----------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        if self.dir is not None:
            raise RuntimeError("the control plane is already started")
        self.dir = Path(tempfile.mkdtemp(prefix="sg-kube-"))
        try:
            self._make_pki()
            # A free port may be taken by someone else between our probe and the server's bind: retry then.
            for attempt in range(3):
                try:
                    self._start_servers()
                    break
                except _PortTaken as taken:
                    self._stop_servers()
                    if attempt == 2:
                        raise RuntimeError(f"{taken}: no free loopback ports after 3 tries") from None
            self._write_kubeconfig(self.kubeconfig, "admin", *self.admin_cert)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop kube-apiserver then etcd (SIGTERM, SIGKILL after stop_timeout) and remove the temp dir."""
        self._stop_servers()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        self._pki = None
        self._ssl = None
        self._identities.clear()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _make_pki(self) -> None:
        pki = self._pki = _Pki(self._path("pki"))
        pki.ca("serving-ca", "streamgroup-test-serving-ca")
        pki.ca("client-ca", "streamgroup-test-client-ca")
        pki.server("serving", issuer="serving-ca")
        pki.client("admin", "admin", ["system:masters"], issuer="client-ca")
        pki.key_pair("service-account")

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as output:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self._path(),
                # Own session: a Ctrl-C in the terminal reaches only us, and we stop the servers in order.
                start_new_session=True,
                # Only from the main thread: the death signal follows the starting thread, not the process.
                preexec_fn=_die_with_parent
                if threading.current_thread() is threading.main_thread()
                else None,
            )

    def _start_servers(self) -> None:
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.etcd_client_port, self.etcd_peer_port, self.apiserver_port = sorted(ports)
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        data_dir = self._path("etcd-data")
        shutil.rmtree(data_dir, ignore_errors=True)
        self.etcd = self._spawn(
            [
                str(self.binaries["etcd"]),
                "--name=default",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            self.etcd_log,
        )
        self._wait("etcd", lambda: port_is_open(self.etcd_client_port), self.etcd, self.etcd_log, 30)

        pki = self._path("pki")
        self.apiserver = self._spawn(
            [
                str(self.binaries["kube-apiserver"]),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                f"--client-ca-file={pki / 'client-ca.crt'}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--service-cluster-ip-range=10.0.0.0/24",
                # No controller-manager creates ServiceAccounts or their tokens: admitting pods would fail.
                *([] if self.service_accounts else ["--disable-admission-plugins=ServiceAccount"]),
                f"--service-account-issuer={self.url}/",
                f"--service-account-key-file={pki / 'service-account.pub'}",
                f"--service-account-signing-key-file={pki / 'service-account.key'}",
                # The endpoints of the `kubernetes` Service would be 127.0.0.1, which validation refuses.
                "--endpoint-reconciler-type=none",
                *self.extra_apiserver_flags,
            ],
            self.apiserver_log,
        )
        self._wait("kube-apiserver", self._ready, self.apiserver, self.apiserver_log, self.startup_timeout)

    def _wait(
        self,
        name: str,
        ready: Callable[[], bool],
        process: subprocess.Popen[bytes],
        log: Path,
        timeout: float,
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                if "address already in use" in _tail(log, 200):
                    raise _PortTaken(f"{name}: address already in use")
                raise RuntimeError(
                    f"{name} exited with code {process.returncode} while starting.\n{self._logs()}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} was not ready within {timeout:.0f}s.\n{self._logs()}")
            time.sleep(0.1)

    def _logs(self) -> str:
        return "".join(
            f"--- last lines of {path}:\n{_tail(path)}\n" for path in (self.etcd_log, self.apiserver_log)
        )

    def _ready(self) -> bool:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_cert))
            self._ssl.load_cert_chain(*(str(path) for path in self.admin_cert))
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", context=self._ssl, timeout=5) as response:
                body: bytes = response.read()
                return response.status == 200 and body.strip() == b"ok"
        except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
            return False

    def _stop_servers(self) -> None:
        # The apiserver first: etcd going away under it would fill its log with retries.
        for attribute, name in (("apiserver", "kube-apiserver"), ("etcd", "etcd")):
            process: subprocess.Popen[bytes] | None = getattr(self, attribute)
            if process is not None:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(self.stop_timeout)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
                self.exit_codes[name] = process.returncode
                setattr(self, attribute, None)
        deadline = time.monotonic() + 5
        while any(port_is_open(port) for port in self.ports) and time.monotonic() < deadline:
            time.sleep(0.05)

    # -- identities and clients ----------------------------------------------------------------------------

    def _write_kubeconfig(self, path: Path, user: str, cert: Path, key: Path) -> None:
        def data(file: Path) -> str:
            return base64.b64encode(file.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "streamgroup-test",
                    "cluster": {"server": self.url, "certificate-authority-data": data(self.ca_cert)},
                }
            ],
            "users": [
                {"name": user, "user": {"client-certificate-data": data(cert), "client-key-data": data(key)}}
            ],
            "contexts": [{"name": user, "context": {"cluster": "streamgroup-test", "user": user}}],
            "current-context": user,
        }
        # JSON is YAML: kubectl, helm and the Python client all read it.
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)

    def identity(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig for a client certificate with CN=user and O=each group; RBAC decides what it may do.

        The API server knows users only by what the client CA signed, so this mints a new, unprivileged
        identity (it belongs to system:authenticated, nothing more unless roles are bound to it).
        """
        if self._pki is None:
            raise RuntimeError("the control plane is not started")
        key = (user, *groups)
        if key in self._identities:
            return self._identities[key]
        name = f"user-{len(self._identities) + 1}"
        cert, private_key = self._pki.client(name, user, groups, issuer="client-ca")
        path = self._path(f"{name}.kubeconfig")
        self._write_kubeconfig(path, user, cert, private_key)
        self._identities[key] = path
        return path

    def api_client(self, kubeconfig: Path | None = None) -> ApiClient:
        """A kubernetes Python ApiClient for the admin, or for the identity of `kubeconfig`."""
        from kubernetes import config

        client: ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.kubeconfig)
        )
        return client

    def kubectl_command(self, kubeconfig: Path | None = None) -> list[str]:
        return [str(self.binaries["kubectl"]), f"--kubeconfig={kubeconfig or self.kubeconfig}"]

    def helm_command(self, kubeconfig: Path | None = None) -> list[str]:
        return [str(self.binaries["helm"]), f"--kubeconfig={kubeconfig or self.kubeconfig}"]

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """os.environ plus KUBECONFIG, and helm's state kept inside the temp dir rather than in ~."""
        return {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
            "HELM_CACHE_HOME": str(self._path("helm", "cache")),
            "HELM_CONFIG_HOME": str(self._path("helm", "config")),
            "HELM_DATA_HOME": str(self._path("helm", "data")),
        }


class _PortTaken(RuntimeError):
    pass


# -- command line ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _signals_raise_keyboard_interrupt() -> Iterator[None]:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starting us in the background would otherwise have it ignored.
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.kube", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start etcd + kube-apiserver and wait for Ctrl-C or SIGTERM")
    up.add_argument(
        "--bin-dir",
        type=Path,
        help="where the binaries are (default: $STREAMGROUP_BIN_DIR or ~/.cache/streamgroup/bin)",
    )
    up.add_argument("--kubeconfig", type=Path, help="also copy the admin kubeconfig here")
    args = parser.parse_args(argv)

    try:
        control_plane = ControlPlane(args.bin_dir)
    except BinariesMissing as error:
        print(error, file=sys.stderr)
        return 1
    with _signals_raise_keyboard_interrupt():
        try:
            with control_plane:
                kubeconfig = control_plane.kubeconfig
                if args.kubeconfig is not None:
                    shutil.copyfile(kubeconfig, args.kubeconfig)
                    args.kubeconfig.chmod(0o600)
                    kubeconfig = args.kubeconfig
                print(f"control plane ready at {control_plane.url} (etcd {control_plane.etcd_url})")
                print(f"logs: {control_plane.apiserver_log} {control_plane.etcd_log}")
                print(f"export KUBECONFIG={kubeconfig}")
                print("Ctrl-C or SIGTERM stops it.", flush=True)
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
