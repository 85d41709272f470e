#!/usr/bin/env bash
# Locks the image's Python dependencies again (requirements/image.txt and requirements/build.txt) with uv,
# from pyproject.toml, keeping the versions already locked: see hack/lock.py. Needs PyPI.
# Arguments go to `uv pip compile`: `bash hack/lock.sh --upgrade` (everything to its newest allowed version)
# or `bash hack/lock.sh --upgrade-package aiohttp`. Then run tests/shipping/test_image.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python hack/lock.py "$@"
