"""The container image: its build steps, replayed here (no Docker engine), make working commands
from exactly the locked packages.

The tests read the Dockerfile itself, so they check the steps the image really runs: the files the
build stage copies and its RUN lines, in order, with the venv path moved into a temporary folder.
The locks (requirements/, made by hack/lock.sh) are checked offline against pyproject.toml, and the
replayed build proves they hold every package the image needs and nothing else.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from importlib.metadata import Distribution, distributions
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
VENV_IN_IMAGE = "/opt/streamgroup"


def stages() -> dict[str, str]:
    """The Dockerfile's stages by name, each from its FROM line (without the word FROM) to the next."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    found = {}
    for stage in re.split(r"(?m)^FROM ", text)[1:]:
        words = stage.splitlines()[0].split()
        assert words[1:2] == ["AS"], f"every stage is named: FROM {stage.splitlines()[0]}"
        found[words[2]] = stage
    return found


def preamble() -> str:
    """What comes before the first FROM: the build arguments."""
    return re.split(r"(?m)^FROM ", (REPO / "Dockerfile").read_text())[0]


def load_locking() -> ModuleType:
    """hack/lock.py, which writes and checks the locks (hack/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("streamgroup_hack_lock", REPO / "hack" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


locking = load_locking()
LOCK = {lock.path: lock for lock in locking.LOCKS}


def pip_installs(stage: str) -> list[list[str]]:
    """The arguments of every `pip install` in a stage's RUN lines (`pip --python X install` too)."""
    commands = [command.split() for line in stage.splitlines() if line.startswith("RUN ")
                for command in line.removeprefix("RUN ").split("&&")]
    return [words[words.index("install") + 1:] for words in commands
            if "install" in words and words[0].endswith("/pip")]


def needed(installed: dict[str, Distribution], roots: Iterable[Requirement]) -> tuple[set[str], set[str]]:
    """The distributions the roots need, transitively, with markers evaluated for this interpreter (which
    made the venv), extras followed; and the names needed but not installed."""
    found: set[str] = set()
    missing: set[str] = set()
    seen: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(root.name), extra) for root in roots for extra in ("", *root.extras)]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        if name not in installed:
            missing.add(name)
            continue
        found.add(name)
        for text in installed[name].requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                todo += [(canonicalize_name(requirement.name), sub) for sub in ("", *requirement.extras)]
    return found, missing


@pytest.fixture(scope="class")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build stage replayed: its COPY and RUN lines in order, the image's venv in a temporary folder."""
    build = stages()["build"]
    tmp_path = tmp_path_factory.mktemp("image")
    src = tmp_path / "src"
    src.mkdir()
    venv = tmp_path / "venv"
    for line in build.splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"]:
            *sources, _ = parts[1:]
            for source in sources:
                path = REPO / source
                if path.is_dir():
                    shutil.copytree(path, src / source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                else:
                    shutil.copy2(path, src / source)
        elif parts[:1] == ["RUN"]:
            # This interpreter makes the venv, so the markers evaluated here are the venv's.
            script = line.strip()[4:].replace(VENV_IN_IMAGE, str(venv)).replace("python -m venv",
                                                                                 f"{sys.executable} -m venv")
            result = subprocess.run(["bash", "-ec", script], cwd=src, capture_output=True, text=True, timeout=600,
                                    env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
            assert result.returncode == 0, script + "\n" + result.stdout[-3000:] + result.stderr[-3000:]
    return venv


class TestDockerfile:
    @pytest.mark.parametrize(("target", "copy"), [
        ("full", f"COPY --from=build {VENV_IN_IMAGE} {VENV_IN_IMAGE}"),
        # The sidecar: FROM scratch, one root filesystem holding the venv and what it runs on, nothing else.
        ("sidecar", "COPY --from=sidecar-build /rootfs /")])
    def test_each_image_runs_as_a_numeric_non_root_user_with_only_what_its_build_stage_made(
            self, target: str, copy: str) -> None:
        lines = [line.strip() for line in stages()[target].splitlines() if line.strip() and not line.startswith("#")]
        assert "USER 65532:65532" in lines
        assert not any(line.startswith("RUN") for line in lines), "no build tools or installs in the final stage"
        assert [line for line in lines if line.startswith("COPY")] == [copy]

    def test_a_plain_build_makes_the_full_image(self) -> None:
        assert list(stages())[-1] == "full", "docker build without --target builds the last stage"

    def test_the_sidecar_venv_is_filled_from_outside_so_it_holds_no_build_tools(self) -> None:
        stage = stages()["sidecar-build"]
        assert f"python -m venv --without-pip {VENV_IN_IMAGE}" in stage
        commands = [command.split() for line in stage.splitlines() if line.startswith("RUN ")
                    for command in line.removeprefix("RUN ").split("&&")]
        pips = [words for words in commands if words[0].endswith("/pip") and "install" in words]
        into_sidecar = [words[-1] for words in pips if words[1:3] == ["--python", f"{VENV_IN_IMAGE}/bin/python"]]
        elsewhere = [words[-1] for words in pips if "--python" not in words]
        assert into_sidecar == ["requirements/sidecar.txt", "/tmp/wheels/*.whl"]
        assert elsewhere == ["requirements/build.txt"], "pip and setuptools go into the tools' venv only"

    @pytest.mark.slow
    def test_replaying_the_build_steps_gives_working_sidecar_operator_and_cli_commands(self, image_venv: Path) -> None:
        venv = image_venv
        bin_dir = venv / "bin"
        help_text = subprocess.run([bin_dir / "streamgroup-sidecar", "--help"], capture_output=True, text=True,
                                   timeout=60)
        assert help_text.returncode == 0 and "--redis-url" in help_text.stdout
        cli = subprocess.run([bin_dir / "streamgroup", "--help"], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and "dead-letters" in cli.stdout
        operator = subprocess.run([bin_dir / "streamgroup-operator"], capture_output=True, text=True, timeout=60,
                                  env={"PATH": "/usr/bin:/bin", "SG_OPERATOR_PORT": "not-a-port"})
        assert operator.returncode == 2 and "SG_OPERATOR_PORT" in operator.stderr
        imports = subprocess.run([bin_dir / "python", "-c", "import kopf, kubernetes, hiredis, streamgroup_operator"],
                                 capture_output=True, text=True, timeout=60)
        assert imports.returncode == 0, imports.stderr
        [dist_info] = venv.glob("lib/python*/site-packages/streamgroup-*.dist-info")
        metadata = (dist_info / "METADATA").read_text()
        assert "License-Expression: Apache-2.0" in metadata.splitlines() and "License-File: LICENSE" in metadata
        assert (dist_info / "licenses" / "LICENSE").read_text() == (REPO / "LICENSE").read_text()

    @pytest.mark.slow
    def test_the_replayed_image_holds_exactly_the_locked_packages_and_everything_they_need(
            self, image_venv: Path) -> None:
        [site] = image_venv.glob("lib/python*/site-packages")
        installed = {canonicalize_name(dist.metadata["Name"]): dist for dist in distributions(path=[str(site)])}
        pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
        project = Requirement(f"streamgroup[{','.join(locking.IMAGE_EXTRAS)}]")
        for lock, roots in [("requirements/image.txt", [project]),
                            ("requirements/build.txt", [Requirement(text) for text in
                                                        LOCK["requirements/build.txt"].requirements(pyproject)])]:
            pins = [pin for pin in locking.parse((REPO / lock).read_text())
                    if pin.requirement.marker is None or pin.requirement.marker.evaluate({"extra": ""})]
            found, missing = needed(installed, roots)
            assert missing == set(), f"{lock} lacks what the image needs"
            assert found - {"streamgroup"} == {pin.name for pin in pins}, f"{lock} is not exactly what is needed"
            assert {name: installed[name].version for name in found - {"streamgroup"}} == {
                pin.name: pin.version for pin in pins}
        locked = {pin.name for lock in locking.LOCKS for pin in locking.parse((REPO / lock.path).read_text())}
        assert set(installed) - locked == {"streamgroup"}, "the venv holds only the locked packages and the project"


class TestLocks:
    """The locks of requirements/, made by hack/lock.sh: current with pyproject.toml, hashed, installed."""

    def test_the_locks_are_current_with_pyproject_and_pin_every_package_with_hashes(self) -> None:
        assert locking.check() == [], "relock with: bash hack/lock.sh"
        for lock in locking.LOCKS:
            pins = locking.parse((REPO / lock.path).read_text())
            assert pins and all(pin.version and pin.hashes for pin in pins)

    def test_the_check_finds_a_lock_made_from_another_pyproject_or_without_hashes(self) -> None:
        pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
        image = LOCK["requirements/image.txt"]
        text = (REPO / image.path).read_text()
        stale = "was not locked from today's pyproject.toml"

        reformatted = tomllib.loads((REPO / "pyproject.toml").read_text())
        reformatted["project"]["dependencies"] = [" ".join(req.split()) for req in
                                                  reversed(pyproject["project"]["dependencies"])]
        assert locking.problems(image, reformatted, text) == [], "order and spacing change no requirement"

        grown = tomllib.loads((REPO / "pyproject.toml").read_text())
        grown["project"]["optional-dependencies"]["operator"].append("left-pad>=1")
        assert [stale in found for found in locking.problems(image, grown, text)] == [True, False]
        assert locking.problems(image, grown, text)[1].endswith("left-pad>=1 is not locked")

        [aiohttp] = [pin for pin in locking.parse(text) if pin.name == "aiohttp"]
        narrowed = tomllib.loads((REPO / "pyproject.toml").read_text())
        narrowed["project"]["dependencies"] = [f"aiohttp>{aiohttp.version}" if req.startswith("aiohttp") else req
                                               for req in pyproject["project"]["dependencies"]]
        assert locking.problems(image, narrowed, text)[1:] == [
            f"{image.path}: aiohttp>{aiohttp.version} is locked at {aiohttp.version}, which it does not allow"]

        unhashed = re.sub(r"(?m)^(aiohttp==\S+) \\\n(\s+--hash=\S+ \\\n)*\s+--hash=\S+\n", r"\1\n", text)
        assert unhashed != text
        assert locking.problems(image, pyproject, unhashed) == [
            f"{image.path}: aiohttp=={aiohttp.version} has no hashes"]

    def test_the_locks_target_the_python_of_the_base_image(self) -> None:
        assert re.search(rf"(?m)^ARG BASE_IMAGE=python:{re.escape(locking.PYTHON_VERSION)}-\S+$", preamble())
        for name, stage in stages().items():
            # The sidecar image is FROM scratch, but its interpreter is the base's, copied by sidecar-build.
            assert stage.startswith("scratch AS " if name == "sidecar" else "${BASE_IMAGE} AS "), stage.splitlines()[0]

    def test_the_sidecar_lock_keeps_the_versions_of_the_image_lock(self) -> None:
        image = {pin.name: pin.version for pin in locking.parse((REPO / "requirements/image.txt").read_text())}
        sidecar = {pin.name: pin.version for pin in locking.parse((REPO / "requirements/sidecar.txt").read_text())}
        assert sidecar.items() <= image.items()
        assert not {"kubernetes", "kopf", "pip", "setuptools"} & set(sidecar)

    @pytest.mark.parametrize(("stage", "locks"), [("build", ["requirements/build.txt", "requirements/image.txt"]),
                                                  ("sidecar-build", ["requirements/build.txt",
                                                                     "requirements/sidecar.txt"])])
    def test_the_build_installs_its_locks_with_hashes_and_wheels_only_then_the_project_without_dependencies(
            self, stage: str, locks: list[str]) -> None:
        text = stages()[stage]
        installs = pip_installs(text)
        assert sorted(args[-1] for args in installs[:-1]) == locks
        assert installs[-1][-1] in (".", "/tmp/wheels/*.whl")
        for args in installs[:-1]:
            assert args[-2] == "-r" and "--require-hashes" in args, "every file checked against its locked hash"
            assert args[args.index("--only-binary") + 1] == ":all:", "no sdist built with unlocked build dependencies"
        assert "--no-deps" in installs[-1], "every dependency comes from the locks"
        assert "--no-build-isolation" in text, "the project is built by the locked setuptools"
        copied = [line.split()[1] for line in text.splitlines() if line.startswith("COPY ")]
        assert copied[0] == "requirements", "the locks alone first: their layer survives code changes"


class TestLicense:
    def test_the_license_file_is_the_apache_license_pyproject_declares(self) -> None:
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        assert (project["license"], project["license-files"]) == ("Apache-2.0", ["LICENSE"])
        text = (REPO / "LICENSE").read_text()
        assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
        assert "END OF TERMS AND CONDITIONS" in text and "http://www.apache.org/licenses/LICENSE-2.0" in text

    def test_the_image_builds_with_the_license_and_is_labelled_with_it(self) -> None:
        for build, runtime in [("build", "full"), ("sidecar-build", "sidecar")]:
            copied = {source for line in stages()[build].splitlines() if line.startswith("COPY ")
                      for source in line.split()[1:-1]}
            assert "LICENSE" in copied, "the build stage needs it: the package metadata names it"
            assert 'org.opencontainers.image.licenses="Apache-2.0"' in stages()[runtime]
