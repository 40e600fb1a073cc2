#!/usr/bin/env bash
# Raven's whole test suite: formatting, lints, tests natively, with the scalar kernels forced,
# cross-compiled for aarch64 under qemu (a Pi 4's Cortex-A72 and a dotprod/i8mm core), the
# gguf-py cross-check, a short fuzz run of every fuzz target, and the mobile static libraries.
#
#   tools/test.sh --setup   installs what it needs first (apt, rustup targets, pip), then tests
#   tools/test.sh           tests only
#   RAVEN_TEST_QUICK=1      skips the aarch64, fuzz and mobile steps
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s  [%d:%02d elapsed]\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }

if [[ "${1:-}" == "--setup" ]]; then
    step "setup: apt packages, rust targets and components, python packages"
    need_apt=()
    command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
    command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
    command -v valgrind >/dev/null || need_apt+=(valgrind)
    command -v cc >/dev/null || need_apt+=(gcc)
    if ((${#need_apt[@]})); then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${need_apt[@]}" >/dev/null
    fi
    rustup component add clippy rustfmt >/dev/null 2>&1 || true
    rustup target add aarch64-unknown-linux-gnu aarch64-linux-android aarch64-apple-ios >/dev/null
    python3 -m pip install -q --disable-pip-version-check -r tools/requirements-test.txt
fi

export CARGO_TERM_COLOR=never

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "tests (native, run-time kernel selection)"
cargo test --workspace

step "tests with RAVEN_FORCE_SCALAR=1"
RAVEN_FORCE_SCALAR=1 cargo test --workspace

step "converter output read by gguf-py (tools/gguf_py_check.py)"
for f in tiny-huginn tiny-recurrent-llama tiny-recurrent-olmo tiny-ouro tiny-ouro/gqa; do
    python3 tools/gguf_py_check.py "tests/fixtures/$f"
done

step "Python bindings and the server: pip install ./python, raven serve driven by openai, curl and a load test"
cargo build --release -p raven-cli
python3 -m pip install -q --disable-pip-version-check --force-reinstall --no-deps ./python
(cd python/tests && RAVEN_BIN="$PWD/../../target/release/raven" python3 -m pytest -q -p no:cacheprovider .)

if [[ -z "${RAVEN_TEST_QUICK:-}" ]]; then
    step "clippy for aarch64 (the NEON and dotprod kernels)"
    cargo clippy -p raven-quant --all-targets --target aarch64-unknown-linux-gnu -- -D warnings
    for cpu in cortex-a72 max; do
        step "tests for aarch64 under qemu -cpu $cpu"
        # raven-cli's tests spawn the `raven` binary, which an emulated test cannot exec without
        # binfmt_misc (absent in containers); the CLI only wires the libraries tested here. The
        # Python module needs an aarch64 interpreter to link against.
        # The real-width conversion test (tests/real_scale.rs) writes and converts 2.5 GB: a
        # minute natively, most of an hour emulated; it tests no kernel the others miss.
        RAVEN_TEST_SKIP_REAL_WIDTH=1 \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu $cpu" \
            cargo test --workspace --exclude raven-cli --exclude raven-python --target aarch64-unknown-linux-gnu
    done
    step "fuzz smoke: every cargo-fuzz target on its seeds (tools/fuzz_smoke.sh)"
    FUZZ_SECONDS="${FUZZ_SECONDS:-20}" tools/fuzz_smoke.sh
    for target in aarch64-linux-android aarch64-apple-ios; do
        step "static library for $target"
        cargo rustc -p raven --lib --release --target "$target" --crate-type staticlib
        ls -la "target/$target/release/libraven.a"
    done
fi
step "all checks passed"
