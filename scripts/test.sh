#!/usr/bin/env bash
# The whole test suite: unit and integration tests (regcache in-process against a fake upstream),
# then the end-to-end tests that pull with real Docker, containerd and skopeo from a real
# `distribution` registry through regcache. Run as root on Debian: it installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies"
scripts/install-test-deps.sh

echo "== cargo test (unit + integration)"
cargo test --locked

echo "== cargo build --release (the binary the end-to-end tests run)"
cargo build --locked --release

echo "== fault soak, 60 s (tests/soak.rs; scripts/soak.sh 600 for the 10-minute form)"
scripts/soak.sh 60 20261207

echo "== end-to-end tests (real dockerd, containerd, skopeo, distribution, nginx)"
unset E2E_VIA  # always the full suite through regcache
REGCACHE_BIN="$PWD/target/release/regcache" python3 -m pytest -v tests/e2e
