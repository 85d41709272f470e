#!/usr/bin/env bash
# Sets everything up and runs the whole test suite: lint, types, then pytest against real
# redis-server instances and, for the operator and the chart, a real kube-apiserver + etcd, and a
# real node (kubelet, containerd, kube-controller-manager, kube-scheduler: tests/node), built from their
# Go modules by hack/control-plane/build.sh (10 to 15 minutes on two cores the first time, cached after).
# Extra arguments go to pytest, e.g. `bash hack/test.sh -k delivering -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/setup.sh
echo "== control plane binaries (kube-apiserver, etcd, kubectl, helm)"
bash hack/control-plane/build.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== import contracts (core <- sidecar, operator, cli; no part imports another)"
.venv/bin/lint-imports
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
