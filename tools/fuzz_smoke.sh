#!/usr/bin/env bash
# A short fuzz run for CI: builds the cargo-fuzz targets of fuzz/ (stable toolchain with
# RUSTC_BOOTSTRAP=1, AddressSanitizer) and runs each for FUZZ_SECONDS (default 20) on its
# committed seed corpus fuzz/seeds/<target>/. Fails on the first crash, leak, timeout or
# out-of-memory, leaving the input under fuzz/artifacts/<target>/. See fuzz/README.md.
#
#   tools/fuzz_smoke.sh                 all targets
#   tools/fuzz_smoke.sh gguf_reader     some targets
#   FUZZ_SECONDS=60 tools/fuzz_smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${FUZZ_SECONDS:-20}"
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(gguf_reader checkpoint tokenizer chat_template logits_e2e)
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/fuzz/target}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "=== installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

echo "=== building fuzz targets (${targets[*]})"
for t in "${targets[@]}"; do
    cargo fuzz build -O "$t"
done

bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    echo "=== fuzz $t for ${secs}s"
    mkdir -p "$scratch/$t" "fuzz/artifacts/$t"
    extra=()
    [[ "$t" == logits_e2e ]] && extra+=(-max_len=400)
    # New inputs go to the scratch corpus; the committed seeds are only read.
    if ! "$bin/$t" "$scratch/$t" "fuzz/seeds/$t" -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=1024 -artifact_prefix="fuzz/artifacts/$t/" \
        -print_final_stats=1 "${extra[@]}" >"$scratch/$t.log" 2>&1; then
        tail -n 60 "$scratch/$t.log"
        echo "fuzz smoke: $t FAILED (input in fuzz/artifacts/$t/)"
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)|DONE' "$scratch/$t.log" || true
done
echo "fuzz smoke: ${#targets[@]} targets ran clean for ${secs}s each"
