#!/usr/bin/env bash
# Sets everything up and runs the whole test suite: lint, types, then pytest against real
# redis-server instances (and, for the operator, a real kube-apiserver + etcd).
# Extra arguments go to pytest, e.g. `bash hack/test.sh -k delivering -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/setup.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: the suite is missing or a filter matched nothing" >&2
  exit 1
fi
exit "$code"
