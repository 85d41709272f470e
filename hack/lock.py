"""The image's Python dependencies, locked: every version pinned with the hashes of its files.

Three locks under requirements/, all installed by the Dockerfile with `pip install --require-hashes`:
- image.txt: the project's runtime dependencies and its `operator` extra (what the full image runs);
- sidecar.txt: the runtime dependencies alone (what the sidecar image runs: the sidecar imports nothing of
  the `operator` extra), resolved within image.txt's versions so both images run the same packages;
- build.txt: pip and the build backend of pyproject.toml (what installs and builds the project).

`bash hack/lock.sh` (this script without `--check`) resolves them again with uv, keeping the versions
already locked unless asked (`--upgrade`, `--upgrade-package NAME`: passed on to `uv pip compile`), and
stamps each with a fingerprint of the pyproject.toml inputs it was resolved from. It needs PyPI; uv is
installed once into ~/.cache/streamgroup/uv-<version>, outside the project's environment.

`python hack/lock.py --check` needs no network: each lock carries the fingerprint of today's inputs, pins
every requirement of them at a version they allow, and gives every package exactly one version and hashes
(tests/shipping/test_image.py runs the check, and proves on a replayed image build that the image holds
exactly the locked packages).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
UV_VERSION = "0.13.8"
# The Python of the Dockerfile's base image (tests/shipping/test_image.py checks they agree). The locks are
# universal (markers instead of one platform's choices) from this version up, so any 3.11 patch release on
# any architecture installs from them.
PYTHON_VERSION = "3.11"
IMAGE_EXTRAS = ("operator",)
STAMP = "# inputs: sha256:"


@dataclass(frozen=True)
class Pin:
    """One locked requirement: `name==version ; marker` and the hashes of its files."""

    requirement: Requirement
    hashes: tuple[str, ...]

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    @property
    def version(self) -> str | None:
        """The exact version, or None when the line does not pin one with `==`."""
        [*specifiers] = self.requirement.specifier
        if len(specifiers) == 1 and specifiers[0].operator == "==" and "*" not in specifiers[0].version:
            return specifiers[0].version
        return None


@dataclass(frozen=True)
class Lock:
    path: str  # relative to the repository
    description: str
    inputs: Callable[[dict[str, Any]], dict[str, Any]]  # pyproject -> the inputs its fingerprint is made of
    requirements: Callable[[dict[str, Any]], list[str]]  # pyproject -> what the lock must satisfy
    source: Callable[[dict[str, Any]], tuple[list[str], str | None]]  # pyproject -> uv's input args, its stdin
    # Another lock whose versions this one must keep (uv gets them as constraints).
    within: str | None = None


def _normalized(requirements: list[str]) -> list[str]:
    # Formatting and order do not change what is required, so they do not make a lock stale.
    return sorted(str(Requirement(text)) for text in requirements)


def _image_requirements(pyproject: dict[str, Any]) -> list[str]:
    project = pyproject["project"]
    extras = project.get("optional-dependencies", {})
    return [*project.get("dependencies", []), *(req for extra in IMAGE_EXTRAS for req in extras[extra])]


def _image_inputs(pyproject: dict[str, Any]) -> dict[str, Any]:
    project = pyproject["project"]
    extras = project.get("optional-dependencies", {})
    return {
        "python": PYTHON_VERSION,
        "requires-python": project.get("requires-python"),
        "dependencies": _normalized(project.get("dependencies", [])),
        "extras": {extra: _normalized(extras[extra]) for extra in IMAGE_EXTRAS},
    }


def _sidecar_inputs(pyproject: dict[str, Any]) -> dict[str, Any]:
    project = pyproject["project"]
    return {
        "python": PYTHON_VERSION,
        "requires-python": project.get("requires-python"),
        "dependencies": _normalized(project.get("dependencies", [])),
    }


def _build_requirements(pyproject: dict[str, Any]) -> list[str]:
    return [*pyproject["build-system"]["requires"], "pip"]


def _build_inputs(pyproject: dict[str, Any]) -> dict[str, Any]:
    return {"python": PYTHON_VERSION, "build": _normalized(_build_requirements(pyproject))}


LOCKS = (
    Lock(
        path="requirements/image.txt",
        description=f"the runtime dependencies of pyproject.toml and its {', '.join(IMAGE_EXTRAS)} extra",
        inputs=_image_inputs,
        requirements=_image_requirements,
        source=lambda _: (["pyproject.toml", *(arg for extra in IMAGE_EXTRAS for arg in ("--extra", extra))], None),
    ),
    Lock(
        path="requirements/sidecar.txt",
        description="the runtime dependencies of pyproject.toml alone (the sidecar image)",
        inputs=_sidecar_inputs,
        requirements=lambda pyproject: list(pyproject["project"].get("dependencies", [])),
        source=lambda _: (["pyproject.toml"], None),
        within="requirements/image.txt",
    ),
    Lock(
        path="requirements/build.txt",
        description="pip and the build backend of pyproject.toml ([build-system] requires)",
        inputs=_build_inputs,
        requirements=_build_requirements,
        source=lambda pyproject: (["-"], "".join(f"{req}\n" for req in _build_requirements(pyproject))),
    ),
)


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def parse(text: str) -> list[Pin]:
    """The requirements of a hashed requirements file (as uv and pip-compile write them)."""
    pins = []
    logical = ""
    for line in text.splitlines():
        stripped = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        if logical.strip():
            hashes = tuple(re.findall(r"--hash=(\S+)", logical))
            requirement = re.sub(r"--hash=\S+", "", logical).strip()
            pins.append(Pin(Requirement(requirement), hashes))
        logical = ""
    return pins


def stamped(text: str) -> str | None:
    """The fingerprint a lock was stamped with, if any."""
    for line in text.splitlines():
        if line.startswith(STAMP):
            return line.removeprefix(STAMP).strip()
    return None


def problems(lock: Lock, pyproject: dict[str, Any], text: str) -> list[str]:
    """What is wrong with a lock's text against pyproject (an empty list when it is current and complete)."""
    found = []
    if stamped(text) != fingerprint(lock.inputs(pyproject)):
        found.append(f"{lock.path} was not locked from today's pyproject.toml ({lock.description})")
    pins = parse(text)
    by_name: dict[str, list[Pin]] = {}
    for pin in pins:
        by_name.setdefault(pin.name, []).append(pin)
        if pin.version is None:
            found.append(f"{lock.path}: {pin.requirement} is not pinned to one version with ==")
        if not pin.hashes:
            found.append(f"{lock.path}: {pin.requirement} has no hashes")
    for name, same in by_name.items():
        if len(same) > 1 and any(pin.requirement.marker is None for pin in same):
            found.append(f"{lock.path}: {name} is locked more than once: {', '.join(str(p.requirement) for p in same)}")
    if lock.within is not None and (REPO / lock.within).exists():
        outer = {pin.name: pin.version for pin in parse((REPO / lock.within).read_text())}
        for pin in pins:
            if outer.get(pin.name) != pin.version:
                found.append(f"{lock.path}: {pin.name}=={pin.version} is not the version {lock.within} locks")
    for text_requirement in lock.requirements(pyproject):
        required = Requirement(text_requirement)
        candidates = by_name.get(canonicalize_name(required.name), [])
        if not candidates:
            found.append(f"{lock.path}: {required} is not locked")
            continue
        for pin in candidates:
            if pin.version is not None and not required.specifier.contains(Version(pin.version), prereleases=True):
                found.append(f"{lock.path}: {required} is locked at {pin.version}, which it does not allow")
    return found


def _uv() -> Path:
    """uv at the pinned version, in a venv of its own (not a dependency of the project)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "streamgroup" / f"uv-{UV_VERSION}"
    uv = venv / "bin" / "uv"
    if not uv.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}"],
                       check=True)
    return uv


def _header(lock: Lock, pyproject: dict[str, Any]) -> str:
    return (
        f"# The image's locked Python packages: {lock.description},\n"
        f"# each pinned with the hashes of its files, for CPython {PYTHON_VERSION}+ on any platform.\n"
        f"# Generated by `bash hack/lock.sh` (uv {UV_VERSION}); do not edit. The Dockerfile installs it with\n"
        "# pip install --require-hashes; `python hack/lock.py --check` says whether it is current.\n"
        f"{STAMP}{fingerprint(lock.inputs(pyproject))}\n"
    )


def write(uv_args: list[str]) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    uv = _uv()
    for lock in LOCKS:
        target = REPO / lock.path
        target.parent.mkdir(exist_ok=True)
        source, stdin = lock.source(pyproject)
        if lock.within is not None:
            pins = parse((REPO / lock.within).read_text())
            constraints = Path(tempfile.mkdtemp()) / "constraints.txt"
            constraints.write_text("".join(f"{pin.name}=={pin.version}\n" for pin in pins if pin.version))
            source = [*source, "--constraint", str(constraints)]
        # uv reads the versions already in the output file and keeps them unless told to upgrade.
        subprocess.run([str(uv), "pip", "compile", *source, "--output-file", lock.path, "--universal",
                        "--python-version", PYTHON_VERSION, "--generate-hashes", "--no-header", "--quiet",
                        *uv_args], input=stdin, text=True, cwd=REPO, check=True)
        if lock.within is not None:
            shutil.rmtree(constraints.parent)
        target.write_text(_header(lock, pyproject) + target.read_text())
        print(f"lock: wrote {lock.path} ({len(parse(target.read_text()))} packages)")


def check() -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    found = []
    for lock in LOCKS:
        path = REPO / lock.path
        found += problems(lock, pyproject, path.read_text()) if path.exists() else [f"{lock.path} is missing"]
    return found


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        found = check()
        for problem in found:
            print(problem, file=sys.stderr)
        if found:
            print("relock with: bash hack/lock.sh", file=sys.stderr)
        return 1 if found else 0
    write(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
