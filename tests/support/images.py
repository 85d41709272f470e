"""The project's images, built for real by hack/image.sh (podman, runc, a local Debian base), and run.

An image is tagged with a digest of everything its build reads (the Dockerfile, the locks, the project's
files, the build scripts, the base image's id), so a second test run on an unchanged tree reuses it and a
changed tree builds it again; a clean machine (CI) always builds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/debian-python:bookworm"
REPOSITORY = {"full": "localhost/streamgroup", "sidecar": "localhost/streamgroup-sidecar"}
# What the Dockerfile copies, and the scripts that drive the build.
INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "LICENSE", "requirements", "core", "sidecar",
          "operator", "cli", "hack/image.sh", "hack/podman-env.sh", "hack/sidecar_rootfs.py")
_SKIPPED = ("__pycache__", ".egg-info", ".pyc", ".mypy_cache", ".pytest_cache")


@dataclass(frozen=True)
class Podman:
    """podman as hack/podman-env.sh sets it up for this kind of machine: its environment and run flags."""

    env: dict[str, str]
    flags: tuple[str, ...]

    @classmethod
    def from_script(cls) -> Podman:
        # The script is the one source of these settings; its output is the config path then the flags.
        out = subprocess.run(["bash", "-c", 'source hack/podman-env.sh; echo "$CONTAINERS_CONF";'
                                            ' printf "%s\\n" "${SG_PODMAN_FLAGS[@]}"'],
                             cwd=REPO, capture_output=True, text=True, check=True, timeout=30).stdout.splitlines()
        return cls(env={**os.environ, "CONTAINERS_CONF": out[0]}, flags=tuple(out[1:]))

    def run(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def inspect(self, kind: str, name: str) -> dict[str, Any]:
        [found] = json.loads(self.run(kind, "inspect", name).stdout)
        return dict(found)


def inputs_digest(base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for name in INPUTS:
        path = REPO / name
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if file.is_file() and not any(part in relative for part in _SKIPPED):
                digest.update(relative.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_image(podman: Podman, target: str) -> str:
    """The image of a Dockerfile target for today's tree, built by hack/image.sh unless already there."""
    subprocess.run(["bash", "hack/image.sh", "--base-only"], cwd=REPO, env=podman.env, check=True,
                   capture_output=True, timeout=900)
    tag = f"{REPOSITORY[target]}:test-{inputs_digest(podman.inspect('image', BASE_IMAGE)['Id'])}"
    if podman.run("image", "exists", tag, check=False).returncode != 0:
        build = subprocess.run(["bash", "hack/image.sh", "--target", target, "--tag", tag], cwd=REPO, env=podman.env,
                               capture_output=True, text=True, timeout=1800)
        assert build.returncode == 0, f"hack/image.sh --target {target} failed:\n{build.stdout[-4000:]}" \
                                      f"{build.stderr[-4000:]}"
        # Earlier test builds of this target are dead weight; one still in use by a container stays.
        for line in podman.run("images", "--format", "{{.Repository}}:{{.Tag}}", REPOSITORY[target]).stdout.split():
            if line != tag and ":test-" in line:
                podman.run("rmi", line, check=False)
    return tag


@dataclass
class Container:
    """One detached container, removed (with its writable layer) by cleanup()."""

    podman: Podman
    image: str
    args: Sequence[str]
    options: Sequence[str] = ()
    name: str = ""
    started_at: float = field(default=0.0)

    def start(self) -> Container:
        self.started_at = time.monotonic()
        self.name = self.podman.run("run", "--detach", *self.podman.flags, *self.options, self.image,
                                    *self.args).stdout.strip()
        return self

    def state(self) -> dict[str, Any]:
        return dict(self.podman.inspect("container", self.name)["State"])

    def logs(self) -> str:
        result = self.podman.run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait_http_ok(self, url: str, timeout: float = 60.0) -> float:
        """Poll url until it answers 200; the seconds since start(). Fails early if the container exits."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as reply:
                    if reply.status == 200:
                        return time.monotonic() - self.started_at
            except OSError:
                pass
            if not self.state()["Running"]:
                raise AssertionError(f"{self.image} exited:\n{self.logs()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} not ok after {timeout}s:\n{self.logs()[-3000:]}")
            time.sleep(0.05)

    def stop(self, grace: int = 20) -> int:
        """SIGTERM, then the exit code (SIGKILL only after the grace period)."""
        self.podman.run("stop", "--time", str(grace), self.name, timeout=grace + 60)
        return int(self.state()["ExitCode"])

    def diff(self) -> list[str]:
        """What the container changed in its image's filesystem, as `podman diff` lists it."""
        return self.podman.run("diff", self.name).stdout.split("\n")[:-1]

    def cleanup(self) -> None:
        if self.name:
            self.podman.run("rm", "--force", "--time", "0", self.name, check=False)
