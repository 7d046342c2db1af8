#!/usr/bin/env bash
# The seeded fault soak (issue 22): the release binary of regcache in front of the fake upstream,
# eight clients pulling through it while one fault at a time is injected from the seed (regcache
# SIGKILLed, the upstream refusing, cutting bodies, sending wrong bytes, answering 429, hanging;
# SeaweedFS killed with a bucket (odd seeds, or SOAK_BUCKET=1); the disk full (a tmpfs: root)).
# Every answer is checked; a summary is printed; the exit status is non-zero on any violation,
# with the seed to replay it. See tests/soak.rs.
#
#   scripts/soak.sh [SECONDS] [SEED]     default: 600 s, a random seed (printed)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
seed=${2:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
echo "== soak: ${seconds} s, seed ${seed} (replay: scripts/soak.sh ${seconds} ${seed})"
SOAK_SECONDS="$seconds" SOAK_SEED="$seed" cargo test --release --locked --test soak
