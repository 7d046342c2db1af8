#!/usr/bin/env bash
# One command for the side-by-side benchmark (see benches/README.md): installs the tools,
# builds regcache (release) and benches/delayer (the WAN link's latency), runs benches/bench.py.
# Stops by itself within BENCH_BUDGET seconds (default 1020 = 17 min) of being started, install
# and build included; removes the WAN link (network namespace, veth pair, NFQUEUE rule) at exit.
set -euo pipefail
START=$(date +%s)
BUDGET=${BENCH_BUDGET:-1020}
export BENCH_DEADLINE=$((START + BUDGET))
cd "$(dirname "$0")/.."

# never two benchmark runs at once on this machine
exec 9>/tmp/regcache-bench.lock
if ! flock -n 9; then
    echo "run.sh: another benchmark run holds /tmp/regcache-bench.lock; not starting" >&2
    exit 1
fi

left() { echo $((BENCH_DEADLINE - $(date +%s))); }

echo "== installing dependencies (tests/e2e's, plus wrk, hey, curl, a C compiler, iproute2, iptables, ping)"
timeout 600 scripts/install-test-deps.sh
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v hey >/dev/null || missing+=(hey)
command -v curl >/dev/null || missing+=(curl)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
# the WAN link of figures 13-17: ip/tc, the NFQUEUE rules, ping -U for its RTT
command -v ip >/dev/null && command -v tc >/dev/null || missing+=(iproute2)
command -v iptables >/dev/null || missing+=(iptables)
command -v ping >/dev/null || missing+=(iputils-ping)
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get install -y --no-install-recommends "${missing[@]}" \
        || { timeout 300 apt-get update && timeout 300 apt-get install -y --no-install-recommends "${missing[@]}"; }
fi

echo "== cargo build --release ($(left)s of the budget left)"
# leave at least 7.5 minutes for the benchmark itself
timeout --kill-after=10 $(( $(left) - 450 > 30 ? $(left) - 450 : 30 )) cargo build --locked --release
# its own workspace and Cargo.lock (benches/delayer): a small crate, seconds to build
timeout --kill-after=10 120 cargo build --locked --release --manifest-path benches/delayer/Cargo.toml \
    || echo "run.sh: benches/delayer did not build: figures 13-17 will fail (the others run)" >&2

# whatever happens to the run below, the WAN link goes with this script (bench.py removes it
# itself; this covers a SIGKILLed bench.py)
cleanup() { python3 benches/wan.py down || true; }
trap cleanup EXIT

echo "== benchmark ($(left)s of the budget left)"
# bench.py watches BENCH_DEADLINE itself; timeout is the backstop (SIGTERM -> it tears down by PID).
# In the background, so that a signal to this script is handled at once: passed on by PID.
timeout --kill-after=20 "$(( $(left) > 10 ? $(left) : 10 ))" python3 benches/bench.py "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true; wait "$child" || true; exit 143' TERM INT HUP
rc=0
wait "$child" || rc=$?
exit "$rc"
