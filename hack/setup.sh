#!/usr/bin/env bash
# Installs what Streamgroup needs on a fresh Debian machine (redis-server, promtool; podman, runc and
# debootstrap, with which hack/image.sh builds the images the tests run; containerd, the CNI plugins and
# nsenter, with which tests/support/node.py runs a real kubelet's pods), then
# the Python environment in .venv with the project installed in editable mode.
# Idempotent: a second run only checks. Set SG_SKIP_APT=1 to never touch system packages.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v podman >/dev/null 2>&1 || missing+=(podman)
# podman's default runtime, crun, refuses cgroup v1 with a hybrid mount; hack/podman-env.sh picks runc.
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v containerd >/dev/null 2>&1 || missing+=(containerd)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || missing+=(containernetworking-plugins)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
if ((${#missing[@]})) && [ "${SG_SKIP_APT:-0}" != 1 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged services where it can; the project runs its own private instances.
  for service in redis-server prometheus containerd; do
    $sudo service "$service" stop >/dev/null 2>&1 || true
  done
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.streamgroup-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ hack/setup.sh -nt "$stamp" ]; then
  echo "setup: installing streamgroup and its test tools into .venv"
  log=.venv/pip-install.log
  if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e '.[dev,operator,bench,dapr-apps]'; } \
      >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "setup: pip install failed (full log: $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
echo "setup: ready ($(redis-server --version | cut -d' ' -f3), $(.venv/bin/python --version))"
