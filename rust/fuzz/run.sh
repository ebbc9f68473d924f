#!/usr/bin/env bash
# `make fuzz`: every fuzz target for FUZZ_SECONDS under cargo-fuzz (libFuzzer, coverage-guided),
# then a summary line per target. Where cargo-fuzz cannot be installed or cannot build the
# targets with this toolchain, the long property-based run instead: the same target functions,
# VGPU_FUZZ_CASES=FUZZ_CASES cases per target and strategy (rust/fuzz-check).
#
# Toolchain: the targets are built with `--sanitizer none`, which cargo-fuzz compiles with the
# stable toolchain as it is (no nightly, no RUSTC_BOOTSTRAP): libFuzzer and the coverage
# instrumentation (-Cpasses=sancov-module) need no unstable flag; only the sanitizers do
# (-Zsanitizer), and the code under test is safe Rust, where AddressSanitizer finds little.
#
# New inputs go to rust/fuzz/target/corpus/<target>/ (not committed; the committed seeds in
# rust/fuzz/corpus/<target>/ are only read); a crash to rust/fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")/../.."
CARGO=${CARGO:-cargo}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_CASES=${FUZZ_CASES:-20000}
FUZZ_TARGETS=${FUZZ_TARGETS:-device_model_args plugin_args json_rpc_answer config plugin_answer mediator_frame prometheus}
dir=rust/fuzz

property_run() {
    local seed=${VGPU_FUZZ_SEED:-$(date +%s)}
    echo "fuzz: $1; the property-based run instead: VGPU_FUZZ_CASES=$FUZZ_CASES VGPU_FUZZ_SEED=$seed"
    VGPU_FUZZ_CASES=$FUZZ_CASES VGPU_FUZZ_SEED=$seed \
        "$CARGO" test -p vgpu-fuzz-check -- --nocapture
    exit 0
}

if ! "$CARGO" fuzz --version >/dev/null 2>&1; then
    "$CARGO" install --locked cargo-fuzz || property_run "cargo-fuzz could not be installed"
fi
"$CARGO" fuzz build --fuzz-dir "$dir" --sanitizer none ||
    property_run "cargo fuzz cannot build the targets with this toolchain"

failed=()
summary=()
for target in $FUZZ_TARGETS; do
    work=$dir/target/corpus/$target
    log=$dir/target/fuzz-$target.log
    mkdir -p "$work"
    echo "fuzz: $target for ${FUZZ_SECONDS}s (log: $log)"
    if ! "$CARGO" fuzz run --fuzz-dir "$dir" --sanitizer none "$target" "$work" "$dir/corpus/$target" \
        -- -max_total_time="$FUZZ_SECONDS" -dict="$PWD/$dir/dict/$target.dict" \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        failed+=("$target")
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    cov=$(sed -E -n 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -E -n 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -E -n 's/.* corp: ([0-9]+).*/\1/p' <<<"$last")
    summary+=("$(printf '%-18s %10s runs  cov %5s  ft %6s  corpus %5s' \
        "$target" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")")
done

echo "fuzz: ${FUZZ_SECONDS}s per target (cargo-fuzz $("$CARGO" fuzz --version | awk '{print $2}'), $(rustc --version))"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "fuzz: FAILED: ${failed[*]}; the inputs are in $dir/artifacts/<target>/"
    exit 1
fi
echo "fuzz: no target failed"
