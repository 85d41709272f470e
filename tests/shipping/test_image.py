"""The container image: its build steps, replayed here (no Docker engine), make working commands.

The test reads the Dockerfile itself, so it checks the steps the image really runs: the files
the build stage copies and its RUN line, with the venv path moved into a temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_IN_IMAGE = "/opt/streamgroup"


def stages() -> list[str]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    return re.split(r"(?m)^FROM ", text)[1:]


class TestDockerfile:
    def test_the_runtime_stage_runs_as_a_numeric_non_root_user_with_only_the_built_venv(self) -> None:
        build, runtime = stages()
        assert " AS build" in build.splitlines()[0]
        lines = [line.strip() for line in runtime.splitlines() if line.strip() and not line.startswith("#")]
        assert "USER 65532:65532" in lines
        assert not any(line.startswith("RUN") for line in lines), "no build tools or installs in the final stage"
        assert f"COPY --from=build {VENV_IN_IMAGE} {VENV_IN_IMAGE}" in lines

    @pytest.mark.slow
    def test_replaying_the_build_steps_gives_working_sidecar_operator_and_cli_commands(self, tmp_path: Path) -> None:
        build, _ = stages()
        src = tmp_path / "src"
        src.mkdir()
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
        [run] = [line.strip()[4:] for line in build.splitlines() if line.strip().startswith("RUN ")]
        venv = tmp_path / "venv"
        script = run.replace(VENV_IN_IMAGE, str(venv)).replace("python -m venv", f"{shutil.which('python3')} -m venv")
        result = subprocess.run(["bash", "-ec", script], cwd=src, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
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


class TestLicense:
    def test_the_license_file_is_the_apache_license_pyproject_declares(self) -> None:
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        assert (project["license"], project["license-files"]) == ("Apache-2.0", ["LICENSE"])
        text = (REPO / "LICENSE").read_text()
        assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
        assert "END OF TERMS AND CONDITIONS" in text and "http://www.apache.org/licenses/LICENSE-2.0" in text

    def test_the_image_builds_with_the_license_and_is_labelled_with_it(self) -> None:
        build, runtime = stages()
        copied = {source for line in build.splitlines() if line.startswith("COPY ") for source in line.split()[1:-1]}
        assert "LICENSE" in copied, "the build stage needs it: the package metadata names it"
        assert 'org.opencontainers.image.licenses="Apache-2.0"' in runtime
