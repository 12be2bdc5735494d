#!/usr/bin/env bash
# Makes the Python 3.11 base images the Dockerfile accepts, from Debian packages
# only (no registry): debootstrap a minimal Debian, `docker import` it, and add
# Python 3.11 from Debian.
#   compute-node-base:bookworm      python3.11 and CA certificates (PYTHON_IMAGE)
#   compute-node-base:bookworm-dev  the same with venv/ensurepip and the Python headers (PYTHON_BUILD_IMAGE)
# Then, from the repository root (BuildKit: DOCKER_BUILDKIT=1 with a plain dockerd):
#   DOCKER_BUILDKIT=1 docker build --network host \
#     --build-arg PYTHON_IMAGE=compute-node-base:bookworm \
#     --build-arg PYTHON_BUILD_IMAGE=compute-node-base:bookworm-dev \
#     --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt -t compute-node .
# Needs root, debootstrap and a running dockerd. SUITE, MIRROR and TAG override the defaults.
set -euo pipefail

SUITE=${SUITE:-bookworm}  # bookworm's python3 is 3.11
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TAG=${TAG:-compute-node-base:$SUITE}

fail() { echo "make-base-image.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root (debootstrap needs it)"
command -v debootstrap >/dev/null || fail "no debootstrap: apt-get install debootstrap"
docker info >/dev/null 2>&1 || fail "no dockerd answers: start it (apt-get install docker.io; dockerd &)"

ROOTFS=$(mktemp -d)
trap 'rm -rf "$ROOTFS"' EXIT

ROOT_TAG="${TAG%%:*}-rootfs:${TAG#*:}"
echo "==> debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR"
# What a container never uses: package lists, caches, docs, man pages.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
# No daemons start inside an image build.
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS"/usr/sbin/policy-rc.d
chmod 0755 "$ROOTFS"/usr/sbin/policy-rc.d
# As Docker's official Debian images: apt keeps no .deb files or package caches
# in a layer (89 MB of them in the Python layer without this), and dpkg installs
# no documentation, man pages or translations.
cat >"$ROOTFS"/etc/apt/apt.conf.d/docker-clean <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
printf 'Acquire::Languages "none";\n' >"$ROOTFS"/etc/apt/apt.conf.d/docker-no-languages
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$ROOTFS"/etc/apt/apt.conf.d/docker-no-recommends
mkdir -p "$ROOTFS"/etc/dpkg/dpkg.cfg.d
cat >"$ROOTFS"/etc/dpkg/dpkg.cfg.d/docker-excludes <<'DPKG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
DPKG
find "$ROOTFS"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

echo "==> docker import $ROOT_TAG"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    - "$ROOT_TAG"

# Python from Debian with apt (it orders the packages' configuration, which
# debootstrap --include does not do for python3.11-venv).
echo "==> $TAG (Python 3.11)"
docker build --network host -t "$TAG" - <<DOCKERFILE
FROM $ROOT_TAG
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3.11 ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
CMD ["python3.11"]
DOCKERFILE

echo "==> $TAG-dev (with venv and the Python headers)"
docker build --network host -t "$TAG-dev" - <<DOCKERFILE
FROM $TAG
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3.11-venv python3.11-dev \\
 && rm -rf /var/lib/apt/lists/*
DOCKERFILE

docker run --rm --network host "$TAG" python3.11 -c 'import ssl, sqlite3; print("python", __import__("sys").version.split()[0])'
docker images "${TAG%%:*}"
