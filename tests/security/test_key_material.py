"""TLS material: read where it is mounted, never written anywhere, and rotated without a restart.

The sidecar reads its CA, client certificate and key from files mounted from a Secret, laid out as
the kubelet lays them out (each name a link into ``..data``, a link to a timestamped folder that an
update replaces in one rename). What users rely on: nothing lands in the sidecar's temporary folder
or next to the mounted files, and when the Secret is renewed (a new CA, a new client certificate,
the server switched over while delivering) the next connections use the new files, with no restart
and nothing lost. The operator's side (keys from Secrets through the API, kept in memory) is tested
on the real API server in ``tests/kube/test_operating.py::TestTLS``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from tests.support.apps import RecordingApp
from tests.support.redis_server import RedisServer, make_tls
from tests.support.sidecar_process import SidecarProcess

FILES = ("ca.crt", "client.crt", "client.key")


def mount(secret: Path, target: Path) -> None:
    """``secret``'s client files as the kubelet mounts a Secret volume: ``target/NAME -> ..data/NAME``,
    ``..data -> ..<version>``; called again, it swaps ``..data`` atomically, as a Secret update does."""
    target.mkdir(exist_ok=True)
    version = target / f"..{len(list(target.glob('..2*'))) + 2026}"
    version.mkdir()
    for name in FILES:
        shutil.copy(secret / name, version / name)
        (version / name).chmod(0o444)
    link = target / "..data_tmp"
    link.symlink_to(version.name)
    os.replace(link, target / "..data")
    for name in FILES:
        if not (target / name).is_symlink():
            (target / name).symlink_to(f"..data/{name}")


def snapshot(folder: Path) -> dict[str, float]:
    return {str(path.relative_to(folder)): path.lstat().st_mtime for path in folder.rglob("*")}


async def until(check: object, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)


class TestRotation:
    async def test_a_renewed_secret_is_used_by_new_connections_while_delivering_with_no_restart_and_no_file_written(
        self, tmp_path: Path, app: RecordingApp
    ) -> None:
        first, second = make_tls(tmp_path / "first", "redis.test"), make_tls(tmp_path / "second", "redis.test")
        mounted, scratch = tmp_path / "mounted", tmp_path / "tmp"
        scratch.mkdir()
        mount(first, mounted)
        server = RedisServer(tls=first).start()
        sidecar = SidecarProcess({
            "SG_REDIS_URL": f"rediss://127.0.0.1:{server.port}/0", "SG_REDIS_TLS_SERVER_NAME": "redis.test",
            "SG_REDIS_TLS_CA_FILE": str(mounted / "ca.crt"), "SG_REDIS_TLS_CERT_FILE": str(mounted / "client.crt"),
            "SG_REDIS_TLS_KEY_FILE": str(mounted / "client.key"), "SG_STREAMS": "orders", "SG_GROUP": "billing",
            "SG_CONSUMER": "c1", "SG_APP_URL": app.url, "SG_START_FROM": "0", "SG_READ_BLOCK": "500ms",
            "SG_LOG_LEVEL": "info", "TMPDIR": str(scratch),
        })
        admin = server.client()
        try:
            admin.xgroup_create("orders", "billing", id="0", mkstream=True)
            for n in range(50):
                admin.xadd("orders", {"n": str(n)})
            sidecar.start()
            await asyncio.to_thread(sidecar.wait_ready, 30)
            await until(lambda: len(app.succeeded()) >= 50, what="the first 50 delivered")
            pid = sidecar.process.pid if sidecar.process else None
            before = snapshot(mounted)

            # The Secret is renewed: a new CA signs the server's certificate and the client's. The server
            # switches at once (CONFIG SET reloads its files), the kubelet swaps the mounted files, and
            # every existing connection is cut: the sidecar's next ones must use the new files.
            mount(second, mounted)
            admin.execute_command("CONFIG", "SET", "tls-cert-file", str(second / "server.crt"),
                                  "tls-key-file", str(second / "server.key"),
                                  "tls-ca-cert-file", str(second / "ca.crt"))
            server.tls = second
            admin = server.client()
            admin.client_kill_filter(_type="normal", skipme=True)
            for n in range(50, 100):
                admin.xadd("orders", {"n": str(n)})
            await until(lambda: len({r.key for r in app.succeeded()}) >= 100, what="the next 50 delivered")
            await until(lambda: admin.xpending("orders", "billing")["pending"] == 0, what="nothing pending")
            assert sidecar.process is not None and sidecar.process.pid == pid and sidecar.process.poll() is None
            await asyncio.to_thread(sidecar.wait_ready, 30)
            # The sidecar wrote nothing next to the mounted files (only the kubelet's swap changed them)
            # and nothing in its temporary folder.
            after = snapshot(mounted)
            assert {k for k in after if not k.startswith("..")} == set(FILES)
            assert {k: v for k, v in after.items() if k in before and k.startswith("..2026")} == \
                   {k: v for k, v in before.items() if k.startswith("..2026")}
            assert list(scratch.iterdir()) == []
            assert tempfile.gettempdir() != str(scratch)  # the test's own temporary files go elsewhere
        except BaseException:
            print(sidecar.logs()[-4000:])
            raise
        finally:
            sidecar.terminate()
            await asyncio.to_thread(sidecar.wait, 30)
            sidecar.cleanup()
            server.cleanup()
