#!/usr/bin/env bash
# Fuzz every parser of outside input: each cargo-fuzz target in fuzz/ runs for SECONDS (default
# 60), one at a time, from the seeds in fuzz/seeds/<target> and what earlier runs kept in
# fuzz/corpus/<target>. The targets check the properties of tests/properties/oracle.rs; a finding
# stops the script with the input in fuzz/artifacts/<target>/ (replay it with
# `cargo +<toolchain> fuzz run <target> <file>`), to be fixed with a regression case in
# tests/properties.
#
# With a nightly toolchain the targets are built with AddressSanitizer; without one, on stable,
# uninstrumented for memory errors (`-s none`; libFuzzer and the properties still run). Either
# way with debug assertions and overflow checks. cargo-fuzz is installed when missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS]  (seconds per target, default 60)" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=+nightly sanitizer=address
else
    toolchain=+stable sanitizer=none
fi
echo "== cargo $toolchain fuzz, sanitizer: $sanitizer"

# One build for every target; `run` then finds them built.
cargo "$toolchain" fuzz build --sanitizer "$sanitizer" --debug-assertions

targets=$(cargo "$toolchain" fuzz list)
for target in $targets; do
    echo "== $target: ${seconds}s"
    mkdir -p "corpus/$target" "seeds/$target"
    # -timeout: an input that takes seconds is a loop proportional to something it claims.
    # -rss_limit_mb / -malloc_limit_mb: so is an allocation of hundreds of megabytes.
    cargo "$toolchain" fuzz run --sanitizer "$sanitizer" --debug-assertions "$target" \
        "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=256 \
        -max_len=65536 -print_final_stats=1
done
echo "== every target ran ${seconds}s without a finding: $(echo $targets | wc -w) targets"
