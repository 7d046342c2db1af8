#!/usr/bin/env bash
# The whole test suite: unit and integration tests (in-process fake upstream), then the end-to-end
# tests that pull with real Docker, containerd and skopeo from a real registry through regcache.
# Run as root on a fresh Debian machine: it installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (unit + integration)"
cargo test --locked 2>&1
