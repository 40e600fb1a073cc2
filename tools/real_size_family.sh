#!/usr/bin/env bash
# Every user-facing command once on a full-size checkpoint of another family, as a user would run
# them: synth --hf (random weights in the published layout: names, shapes, dtype, sharding),
# convert to bf16 / q8_0 / q4_0 (wall time and peak RSS), inspect, logits against the readable
# reference forward, run, chat with a piped message, bench (2 threads), the gate exit (Ouro).
#
#   tools/real_size_family.sh SHAPE [WORKDIR]
#     SHAPE: ouro-1.4b, ouro-2.6b, recurrent-llama-3.2, recurrent-olmo-2
#
# Not in CI: a checkpoint of 2.9 GB (Ouro-1.4B, bf16) to 5.6 GB (the retrofitted models, f32)
# plus its GGUFs; 10-20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:?usage: tools/real_size_family.sh SHAPE [WORKDIR]}
W=${2:-/tmp/raven-real-size-$S}
mkdir -p "$W"
exec > >(tee "$W/real_size.log") 2>&1

step() { printf '\n=== %s\n' "$*"; }
timed() { /usr/bin/time -f "    -> %e s wall, %M KB peak RSS, exit %x" "$@"; }

step "build (release)"
cargo build --release -p raven-cli 2>&1 | tail -1
R=target/release/raven
grep -m1 'model name' /proc/cpuinfo | sed 's/^.*: /    CPU: /'
echo "    SIMD: $(grep -o -w 'avx2\|avx512f\|avx512_vnni\|asimddp\|i8mm' /proc/cpuinfo | sort -u | tr '\n' ' ')"

case "$S" in
    ouro-*) DTYPE=bf16; STEPS=4 ;;
    *) DTYPE=f32; STEPS=4 ;;
esac

step "synth --hf --shape $S ($DTYPE, the published layout)"
rm -rf "$W/hf"
timed $R synth --hf "$W/hf" --shape "$S" --dtype $DTYPE
ls -l "$W/hf"
python3 - "$W/hf" <<'PY'
import json, os, struct, sys
d = sys.argv[1]
n = 0
for f in sorted(os.listdir(d)):
    if f.endswith(".safetensors"):
        raw = open(os.path.join(d, f), "rb").read(8)
        h = json.loads(open(os.path.join(d, f), "rb").read(8 + struct.unpack("<Q", raw)[0])[8:])
        n += sum(1 for k in h if k != "__metadata__")
        print(f"    {f}: {sum(1 for k in h if k != '__metadata__')} tensors, metadata {h.get('__metadata__')}")
print(f"    {n} tensors")
PY

for ty in bf16 q8_0 q4_0; do
    step "convert --type $ty"
    timed $R convert "$W/hf" -o "$W/m-$ty.gguf" --type "$ty"
    ls -l "$W/m-$ty.gguf"
done
rm -rf "$W/hf"

step "inspect (q4_0)"
$R inspect "$W/m-q4_0.gguf" > "$W/inspect.txt"
grep -v '^  blk\.' "$W/inspect.txt" | tail -25

step "logits --steps 1 on the bf16 file: fast path against the reference forward"
toks=0,1,3000,12345
timed $R logits -m "$W/m-bf16.gguf" --tokens $toks --steps 1 --init-scale 0 -o "$W/fast.safetensors"
timed $R logits -m "$W/m-bf16.gguf" --tokens $toks --steps 1 --init-scale 0 --reference -o "$W/ref.safetensors"
python3 tools/compare_logits.py "$W/fast.safetensors" "$W/ref.safetensors"

for ty in bf16 q8_0 q4_0; do
    step "run ($ty)"
    timed $R run -m "$W/m-$ty.gguf" -p "hello there" -n 8 --steps $STEPS
done
rm -f "$W/m-bf16.gguf"

step "chat with a piped message (q4_0)"
printf 'What is the capital of Norway?\n' | timed $R chat -m "$W/m-q4_0.gguf" -n 8 --steps $STEPS

case "$S" in
    ouro-*)
        step "gate exit (q4_0): physical (later steps not computed) and the official read-out"
        timed $R run -m "$W/m-q4_0.gguf" -p "hello there" -n 8 --exit gate:0.5
        timed $R run -m "$W/m-q4_0.gguf" -p "hello there" -n 8 --exit gate-full:0.5
        ;;
esac

step "bench (q4_0, 2 threads)"
timed $R bench -m "$W/m-q4_0.gguf" -p 8 -n 4 --steps $STEPS -t 2

step "done: $W/real_size.log"
