"""Private redis-server instances on loopback, one per test, started from Debian's binary.

No fakes: the sidecar's guarantees rest on Redis' own semantics (PEL, delivery counts,
XAUTOCLAIM's deleted IDs, lag), so the tests run against the real server.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from .ports import free_port, terminate, wait_closed


class RedisServer:
    def __init__(self, appendonly: bool = False, password: str | None = None, tls: Path | None = None) -> None:
        """``tls``: a folder with ca.crt, server.crt and server.key (see :func:`make_tls`); TLS-only then,
        and clients must present a certificate signed by that CA."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run hack/setup.sh (apt-get install redis-server)")
        self.binary = binary
        self.appendonly = appendonly
        self.password = password
        self.tls = tls
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sg-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        if self.tls:
            return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, ssl=True,
                               ssl_ca_certs=str(self.tls / "ca.crt"), ssl_check_hostname=False,
                               ssl_certfile=str(self.tls / "client.crt"), ssl_keyfile=str(self.tls / "client.key"))
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def start(self) -> RedisServer:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            args[args.index("--port") + 1] = "0"
            args += ["--tls-port", str(self.port), "--tls-cert-file", str(self.tls / "server.crt"),
                     "--tls-key-file", str(self.tls / "server.key"), "--tls-ca-cert-file", str(self.tls / "ca.crt"),
                     "--tls-auth-clients", "yes"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            try:
                if self.client().ping():
                    return self
            except redis.exceptions.AuthenticationError:
                return self
            except redis.exceptions.RedisError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING within 10s")

    def stop(self) -> None:
        terminate(self.process)
        self.process = None
        wait_closed(self.port)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def make_tls(folder: Path, server_name: str) -> Path:
    """A CA, a server certificate for ``server_name`` only (not for 127.0.0.1), and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=streamgroup-test-ca")
    for name, extension in (("server", f"subjectAltName=DNS:{server_name}"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        (folder / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return folder
