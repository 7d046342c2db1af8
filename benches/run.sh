#!/usr/bin/env bash
# One command for the side-by-side benchmark (see benches/README.md): installs the tools,
# builds regcache (release), runs benches/bench.py.  Stops by itself within BENCH_BUDGET
# seconds (default 870 = 14.5 min) of being started, install and build included.
set -euo pipefail
START=$(date +%s)
BUDGET=${BENCH_BUDGET:-870}
export BENCH_DEADLINE=$((START + BUDGET))
cd "$(dirname "$0")/.."

# never two benchmark runs at once on this machine
exec 9>/tmp/regcache-bench.lock
if ! flock -n 9; then
    echo "run.sh: another benchmark run holds /tmp/regcache-bench.lock; not starting" >&2
    exit 1
fi

left() { echo $((BENCH_DEADLINE - $(date +%s))); }

echo "== installing dependencies (tests/e2e's, plus wrk, hey, curl, a C compiler)"
timeout 600 scripts/install-test-deps.sh
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v hey >/dev/null || missing+=(hey)
command -v curl >/dev/null || missing+=(curl)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get install -y --no-install-recommends "${missing[@]}" \
        || { timeout 300 apt-get update && timeout 300 apt-get install -y --no-install-recommends "${missing[@]}"; }
fi

echo "== cargo build --release ($(left)s of the budget left)"
# leave at least 5 minutes for the benchmark itself
timeout --kill-after=10 $(( $(left) - 300 > 30 ? $(left) - 300 : 30 )) cargo build --locked --release

echo "== benchmark ($(left)s of the budget left)"
# bench.py watches BENCH_DEADLINE itself; timeout is the backstop (SIGTERM -> it tears down by PID)
exec timeout --kill-after=20 "$(( $(left) > 10 ? $(left) : 10 ))" python3 benches/bench.py "$@"
