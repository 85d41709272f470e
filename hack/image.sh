#!/usr/bin/env bash
# Builds the image without a Docker engine: Debian's podman (and runc) build the project's Dockerfile on a
# Python base made locally by debootstrap, so no container registry is needed, only the Debian mirror apt
# already uses and PyPI.
#
#   bash hack/image.sh [--target full|sidecar] [--tag NAME] [--base local|IMAGE] [--save FILE.tar] [--no-build]
#
# --target: `full` (the default; the operator, the CLI and the sidecar) or `sidecar` (the sidecar alone).
# --tag:    the image's name (default localhost/streamgroup:dev, or localhost/streamgroup:dev-sidecar).
# --base:   `local` (the default) builds and imports localhost/debian-python:bookworm once (cached under
#           ~/.cache/streamgroup/), any other value is passed as the Dockerfile's BASE_IMAGE.
# --save:   also writes the image as an OCI archive (`ctr -n k8s.io images import FILE.tar` loads it);
#           with --no-build, of the image already tagged, without building.
# `bash hack/image.sh --base-only` makes the base and stops. Needs root (hack/setup.sh installs podman,
# runc and debootstrap).
#
# Why each podman flag, for this kind of machine: crun refuses hybrid cgroups (runc does not); the build
# reaches PyPI from the host's network; nothing here may raise a hard rlimit, so podman's default ulimits
# are switched off in a containers.conf of our own and the limits given are ones the machine already has.
set -euo pipefail
cd "$(dirname "$0")/.."

target=full tag="" base=local save="" base_only=0 build=1
while (($#)); do
  case $1 in
    --target) target=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --save) save=$2; shift 2 ;;
    --base-only) base_only=1; shift ;;
    --no-build) build=0; shift ;;
    *) echo "image: unknown argument $1 (see the top of $0)" >&2; exit 2 ;;
  esac
done
case $target in
  full) tag=${tag:-localhost/streamgroup:dev} ;;
  sidecar) tag=${tag:-localhost/streamgroup:dev-sidecar} ;;
  *) echo "image: --target is full or sidecar, not $target" >&2; exit 2 ;;
esac

cache=${XDG_CACHE_HOME:-$HOME/.cache}/streamgroup
mkdir -p "$cache"
# shellcheck source=hack/podman-env.sh
source hack/podman-env.sh

base_image=$base
if [ "$base" = local ] && ((build)); then
  base_image=localhost/debian-python:bookworm
  if ! podman image exists "$base_image"; then
    tarball=$cache/debian-python-bookworm.tar
    if [ ! -s "$tarball" ]; then
      mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
      mirror=${mirror:-$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)}
      mirror=${mirror:-http://deb.debian.org/debian}
      rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
      trap 'rm -rf "$rootfs"' EXIT
      echo "image: debootstrap of bookworm from $mirror (about 40 s)"
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
        >"$cache/debootstrap.log" 2>&1 || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
      ln -sf python3 "$rootfs/usr/bin/python"
      # The package registries are reached through a CA that this machine's bundle trusts: the build needs it.
      cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
      # What an image never uses: downloaded packages, package lists, documentation and translations.
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/info/*
      tar -C "$rootfs" -cf "$tarball.part" .
      mv "$tarball.part" "$tarball"
      rm -rf "$rootfs"
      trap - EXIT
    fi
    podman import --quiet --change 'CMD ["python3"]' "$tarball" "$base_image" >/dev/null
  fi
  echo "image: base $base_image"
fi
((base_only)) && exit 0

if ((build)); then
  echo "image: building $tag (target $target) on $base_image"
  podman build "${SG_PODMAN_FLAGS[@]}" --build-arg "BASE_IMAGE=$base_image" --target "$target" -t "$tag" .
fi
if [ -n "$save" ]; then
  rm -f "$save"
  podman save --format oci-archive -o "$save" "$tag"
  echo "image: saved $tag to $save"
fi
