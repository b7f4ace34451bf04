#!/usr/bin/env bash
# A stand-in for the python:3.11-slim base image, made from Debian's own packages, for machines
# that reach a Debian mirror but no container registry (an air-gapped CI, a corporate network
# whose proxy blocks Docker Hub). Debian bookworm's python3 is 3.11, the Python the image's
# default torch wheel is built for.
#
#   deploy/docker/debian-base.sh            prints the tag of the base, building it if missing
#   docker build -f deploy/docker/Dockerfile --build-arg BASE_IMAGE="$(deploy/docker/debian-base.sh)" .
#
# Needs root, debootstrap and a running Docker daemon. The tag carries a digest of this script
# and its inputs, so an unchanged base is reused from the daemon's image store (seconds), and a
# change to any input builds a new one (a few minutes: ~60 packages from the mirror).
# Variables: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SUITE (bookworm),
# DOCKER (the docker command), BASE_REPOSITORY (the image name, default reranker-serve-base).
set -euo pipefail

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${DEBIAN_SUITE:-bookworm}
docker=${DOCKER:-docker}
repository=${BASE_REPOSITORY:-reranker-serve-base}
# What the Dockerfile needs of its base: python (with venv and pip's bundled wheel) under the
# name `python`, useradd/groupadd (passwd, in minbase), and the CA bundle for pip's downloads.
packages=python3,python3-venv,python-is-python3,ca-certificates

digest=$(printf '%s\n' "$mirror" "$suite" "$packages" | cat - "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
tag="$repository:$suite-$digest"
if "$docker" image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi

command -v debootstrap >/dev/null || { echo "debian-base.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
root=$(mktemp -d "${TMPDIR:-/tmp}/reranker-base.XXXXXX")
trap 'rm -rf "$root"' EXIT
log="$root.log"
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$root/fs" "$mirror" >"$log" 2>&1; then
  echo "debian-base.sh: debootstrap failed; the end of $log:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
rm -f "$log"
# What the official slim images also leave out: package caches and lists, docs, man pages.
rm -rf "$root/fs"/var/cache/apt/archives/*.deb "$root/fs"/var/lib/apt/lists/* "$root/fs"/usr/share/doc/* \
  "$root/fs"/usr/share/man/* "$root/fs"/usr/share/info/* "$root/fs"/var/log/*.log
tar --numeric-owner -C "$root/fs" -c . \
  | "$docker" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
      --message "debootstrap $suite $packages from $mirror" - "$tag" >/dev/null
echo "$tag"
