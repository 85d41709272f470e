#!/usr/bin/env bash
# Sets up (see hack/setup.sh) and runs the main job locally: redis-server, the sample app,
# the sidecar and a producer, with the result printed. Argument: entries per stream (300).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
exec .venv/bin/python hack/demo.py "$@"
