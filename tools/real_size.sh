#!/usr/bin/env bash
# Every user-facing command once on full-size Huginn-0125 files, as a user would run them:
# synth --hf (a random checkpoint in the published layout), convert to bf16 / q8_0 / q4_0
# (wall time and peak RSS), inspect, logits against the reference forward (r = 1 and 4, tokens
# 0 and 65535 included), run, chat with a piped message, bench, the C ABI (tests/c/padded.c
# linked against libraven.a), and the issue's case of a tokenizer smaller than the embedding.
#
# Not in CI: it writes about 30 GB (checkpoints of 7.1 GB, GGUFs of 7.1 / 3.8 / 2.2 GB) and
# takes 10-20 minutes on 2 cores.
#
#   tools/real_size.sh [WORKDIR]     (default /tmp/raven-real-size; removed files as it goes)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/raven-real-size}
mkdir -p "$W"
exec > >(tee "$W/real_size.log") 2>&1

step() { printf '\n=== %s\n' "$*"; }
timed() { /usr/bin/time -f "    -> %e s wall, %M KB peak RSS, exit %x" "$@"; }

step "build (release): the raven command and libraven.a"
cargo build --release -p raven-cli -p raven 2>&1 | tail -1
R=target/release/raven
grep -m1 'model name' /proc/cpuinfo | sed 's/^.*: /    CPU: /'
echo "    SIMD: $(grep -o -w 'avx2\|avx512f\|avx512_vnni\|asimddp\|i8mm' /proc/cpuinfo | sort -u | tr '\n' ' ')"
nproc | sed 's/^/    cores: /'

step "synth --hf: Huginn-0125's exact layout with random bf16 weights"
rm -rf "$W/hf"
timed $R synth --hf "$W/hf"
ls -l "$W/hf"

for ty in bf16 q8_0 q4_0; do
    step "convert --type $ty"
    timed $R convert "$W/hf" -o "$W/h-$ty.gguf" --type "$ty"
    ls -l "$W/h-$ty.gguf"
done

step "inspect (q4_0)"
$R inspect "$W/h-q4_0.gguf" > "$W/inspect.txt"
head -40 "$W/inspect.txt"

for r in 1 4; do
    step "logits --steps $r on the bf16 file: fast path against the reference forward"
    toks=0,1,31337,65535
    timed $R logits -m "$W/h-bf16.gguf" --tokens $toks --steps $r --init-scale 0 -o "$W/fast-r$r.safetensors"
    timed $R logits -m "$W/h-bf16.gguf" --tokens $toks --steps $r --init-scale 0 --reference -o "$W/ref-r$r.safetensors"
    python3 tools/compare_logits.py "$W/fast-r$r.safetensors" "$W/ref-r$r.safetensors"
done

for ty in bf16 q8_0 q4_0; do
    step "run ($ty)"
    timed $R run -m "$W/h-$ty.gguf" -p "hello there" -n 8 --steps 4
done

step "chat with a piped message (q4_0)"
printf 'What is the capital of Norway?\n' | timed $R chat -m "$W/h-q4_0.gguf" -n 8 --steps 4

step "bench (q4_0, 2 threads)"
timed $R bench -m "$W/h-q4_0.gguf" -p 8 -n 4 --steps 8 -t 2

step "C ABI: tests/c/padded.c against libraven.a, sampled and greedy generation"
cc -std=c11 -O1 -Wall -Wextra -Werror -Iinclude tests/c/padded.c target/release/libraven.a \
    -lpthread -ldl -lm -o "$W/c-generate"
timed "$W/c-generate" "$W/h-q4_0.gguf" "1,2,3" 65536

step "a tokenizer of 1024 ids on the 65536-row embedding (the issue's case), q4_0"
rm -f "$W/h-bf16.gguf" "$W/h-q8_0.gguf"
rm -rf "$W/hf-small-tok"
timed $R synth --hf "$W/hf-small-tok" --tokenizer tests/fixtures/tiny-huginn/tokenizer.json
timed $R convert "$W/hf-small-tok" -o "$W/h-small-tok-q4_0.gguf" --type q4_0
rm -rf "$W/hf-small-tok"
timed $R run -m "$W/h-small-tok-q4_0.gguf" -p "hello there" -n 16 --steps 2 --temp 1 --top-k 0 --top-p 1 --min-p 0 --ignore-eos
timed "$W/c-generate" "$W/h-small-tok-q4_0.gguf" "1,2,3" 1024

step "done: $W/real_size.log"
