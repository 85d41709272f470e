# Sourced by hack/image.sh, tests/support/images.py and bench/image.py: how podman runs on a machine like this one.
# - runc, not crun (set in the containers.conf): crun refuses cgroup v1 with a hybrid `unified` mount;
# - host networking: builds reach PyPI through the host's network, containers reach loopback servers;
# - no rlimit raised: the machine may not raise a hard limit, so podman's default ulimits are emptied in a
#   containers.conf of our own and every build or run gives limits the machine already has.
cache=${XDG_CACHE_HOME:-$HOME/.cache}/streamgroup
mkdir -p "$cache"
# Written every time (a stale copy would not say what this script says), atomically (runs may overlap).
printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' >"$cache/containers.conf.$$"
mv -f "$cache/containers.conf.$$" "$cache/containers.conf"
export CONTAINERS_CONF=$cache/containers.conf
nofile=$(ulimit -Hn)
# Lower than the current process limit: podman refused the limit equal to the current one.
nproc=1000
SG_PODMAN_FLAGS=(--network host --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
export SG_PODMAN_FLAGS
