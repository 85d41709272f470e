#!/usr/bin/env bash
# Starts a private Kubernetes control plane (etcd + kube-apiserver on 127.0.0.1, free ports) for poking at
# the operator by hand, builds the binaries first if needed, prints `export KUBECONFIG=...` and runs until
# Ctrl-C or SIGTERM, then stops both servers and removes their temp dir.
# Extra arguments go to `python -m tests.support.kube up`, e.g. `--kubeconfig /tmp/sg.kubeconfig`.
set -euo pipefail
cd "$(dirname "$0")/../.."

bash hack/control-plane/build.sh
python=.venv/bin/python
[ -x "$python" ] || python=python3
exec "$python" -m tests.support.kube up "$@"
