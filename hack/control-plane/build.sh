#!/usr/bin/env bash
# Builds the local Kubernetes control plane the operator tests run against: kube-apiserver, kubectl,
# etcd and helm, and the node and controllers the real-node tests run (kubelet, kube-controller-manager,
# kube-scheduler), compiled from their Go modules at the versions pinned in the go.mod files beside this
# script (kube/, etcd/, helm/).
#
# Why from source: the only network here is the package registries, so prebuilt release archives cannot
# be downloaded; the Go module proxy serves the sources instead, and go.sum pins every byte of them.
#
# Output goes to a cache outside the repository, ${STREAMGROUP_BIN_DIR:-$HOME/.cache/streamgroup/bin}.
# Module downloads and compiled packages go to the user's normal Go caches (GOMODCACHE, GOCACHE), so a
# second checkout does not recompile anything. Idempotent: a binary whose stamp (pinned version, go.mod,
# go.sum, sources, Go version, link flags) matches is left alone; `--force` rebuilds them all.
#
# A cold build on 2 cores takes 10 to 15 minutes (about 9 for the first four, measured; the kubelet
# alone about 2.5 more); a warm run about a second.
# Needs Go >= 1.26 on PATH or at /usr/local/go/bin/go (etcd 3.6.16 declares go 1.26).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin_dir=${STREAMGROUP_BIN_DIR:-$HOME/.cache/streamgroup/bin}
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h | --help)
      sed -n '2,15s/^# \{0,1\}//p' "$0"
      exit 0
      ;;
    *)
      echo "build.sh: unknown argument: $arg (only --force)" >&2
      exit 2
      ;;
  esac
done

go=$(command -v go || true)
if [ -z "$go" ] && [ -x /usr/local/go/bin/go ]; then
  go=/usr/local/go/bin/go
fi
if [ -z "$go" ]; then
  echo "build.sh: Go is not installed (need Go >= 1.26 on PATH or at /usr/local/go/bin/go)" >&2
  exit 1
fi

# -buildvcs=false: the wrapper modules live inside this git checkout; stamping its VCS state would make
# the binaries depend on uncommitted changes elsewhere in the tree (and fails on foreign-owned clones).
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
export CGO_ENABLED=${CGO_ENABLED:-0}

mkdir -p "$bin_dir"
# Two runs at once (CI and a developer's up.sh) would race on the same output files.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$bin_dir/.build.lock"
  flock 9
fi

echo "build.sh: $("$go" version), output $bin_dir"
echo "build.sh: GOMODCACHE=$("$go" env GOMODCACHE) GOCACHE=$("$go" env GOCACHE)"

# The version a wrapper module pins for one of its requirements.
pinned() { (cd "$here/$1" && "$go" list -m -f '{{.Version}}' "$2"); }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

total_start=$(now)

# build NAME MODULE_DIR PACKAGE VERSION LDFLAGS
build() {
  local name=$1 module=$2 package=$3 version=$4 ldflags=$5
  local out="$bin_dir/$name" stamp_file="$bin_dir/.$name.stamp" stamp
  stamp=$(
    {
      echo "$name $version"
      "$go" version
      echo "$ldflags"
      cat "$here/$module/go.mod" "$here/$module/go.sum"
      find "$here/$module" -name '*.go' -print0 | sort -z | xargs -0r cat
    } | sha256sum | cut -d' ' -f1
  )
  if [ "$force" = 0 ] && [ -x "$out" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
    echo "build.sh: $name $version is up to date, skipped"
    return
  fi
  local start
  start=$(now)
  echo "build.sh: building $name $version from $package ..."
  rm -f "$stamp_file"
  (cd "$here/$module" && "$go" build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$package")
  mv -f "$out.tmp" "$out"
  echo "$stamp" >"$stamp_file"
  echo "build.sh: built $name $version in $(elapsed "$start") ($(du -h "$out" | cut -f1))"
}

# kube-apiserver and kubectl: the version is set at link time, as Kubernetes' own build does, or they report
# v0.0.0-master and helm's kubeVersion checks (and the apiserver's emulation version) go wrong.
kube_version=$(pinned kube k8s.io/kubernetes)
kube_minor=$(echo "$kube_version" | cut -d. -f2)
kube_ldflags="-s -w"
for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $package.gitVersion=$kube_version -X $package.gitMajor=1 -X $package.gitMinor=$kube_minor"
  kube_ldflags+=" -X $package.gitTreeState=clean"
done
build kube-apiserver kube k8s.io/kubernetes/cmd/kube-apiserver "$kube_version" "$kube_ldflags"
build kubectl kube k8s.io/kubernetes/cmd/kubectl "$kube_version" "$kube_ldflags"
# The real node (tests/support/node.py): the same pinned module, so no version skew within the cluster.
build kube-controller-manager kube k8s.io/kubernetes/cmd/kube-controller-manager "$kube_version" "$kube_ldflags"
build kube-scheduler kube k8s.io/kubernetes/cmd/kube-scheduler "$kube_version" "$kube_ldflags"
build kubelet kube k8s.io/kubernetes/cmd/kubelet "$kube_version" "$kube_ldflags"

# etcd reports its version from a constant of go.etcd.io/etcd/api/v3; nothing to set.
etcd_version=$(pinned etcd go.etcd.io/etcd/server/v3)
build etcd etcd . "$etcd_version" "-s -w"

# helm: its own version, and the Kubernetes version it assumes when it has no cluster to ask (helm template,
# helm lint), taken from the client-go it links, as helm's Makefile does.
helm_version=$(pinned helm helm.sh/helm/v3)
helm_kube_minor=$(pinned helm k8s.io/client-go | cut -d. -f2)
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for package in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  helm_ldflags+=" -X $package.k8sVersionMajor=1 -X $package.k8sVersionMinor=$helm_kube_minor"
done
build helm helm helm.sh/helm/v3/cmd/helm "$helm_version" "$helm_ldflags"

# The test node's sandbox image (tests/support/node.py wraps it into an image): no dependencies, a second.
build pause pause . "go-$("$go" env GOVERSION)" "-s -w"

echo "build.sh: done in $(elapsed "$total_start"): kube-apiserver/kubectl/kubelet/kube-controller-manager/kube-scheduler $kube_version, etcd $etcd_version," \
  "helm $helm_version in $bin_dir"
