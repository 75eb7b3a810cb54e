#!/usr/bin/env bash
# Runs every cargo-fuzz target of safhire for a bounded time, one after the
# other, one job each. Exits non-zero if any target crashes, times out, runs
# out of memory or fails to build.
#
#   FUZZ_SECONDS=30 fuzz/run-all.sh             # all targets, 30 s each
#   FUZZ_SECONDS=600 fuzz/run-all.sh extract    # some targets only
#
# Needs a nightly toolchain (`rustup toolchain install nightly`).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${FUZZ_SECONDS:-30}"
# One build job: the machine has two cores and fuzzing is not alone on it.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run-all.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked -j "$CARGO_BUILD_JOBS"
fi

all_targets=(wire_decode layout_conv layout_matvec decompose extract protocol_decode inputs_decode model_compile)
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=("${all_targets[@]}")
fi

failed=()
for t in "${targets[@]}"; do
    echo "=== fuzz target $t: ${seconds}s ===" >&2
    corpus="$here/corpus/$t"
    mkdir -p "$corpus"
    dirs=("$corpus")
    # Inputs that once crashed a target are replayed first (read-only).
    if [ -d "$here/regressions/$t" ]; then
        dirs+=("$here/regressions/$t")
    fi
    # Seeds and a dictionary generated from spec/wire-grammar.toml (WIRE-7),
    # for the targets that have them (read-only; new inputs go to corpus/).
    if [ -d "$here/seeds/$t" ]; then
        dirs+=("$here/seeds/$t")
    fi
    dict=()
    if [ -f "$here/dictionaries/$t.dict" ]; then
        dict=("-dict=$here/dictionaries/$t.dict")
    fi
    # -O: release build *without* cargo-fuzz's global -Cdebug-assertions
    # (tfhe would take 15+ min to build); Cargo.toml turns debug assertions
    # and overflow checks back on for safhire and the targets.
    if cargo +nightly fuzz run -O --fuzz-dir "$here" "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=60 -print_final_stats=1 \
        ${dict[@]+"${dict[@]}"}; then
        echo "=== $t: ok ===" >&2
    else
        echo "=== $t: FAILED (crash input, if any, in $here/artifacts/$t/) ===" >&2
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "run-all.sh: failing targets: ${failed[*]}" >&2
    exit 1
fi
echo "run-all.sh: all ${#targets[@]} targets ran ${seconds}s without a finding" >&2
