#!/usr/bin/env bash
# Per-layer decode speed of Raven against llama.cpp, alternated in one run (this host's bandwidth
# drifts ±25% within minutes, so only side-by-side pairs mean anything).
#
#   tools/bench_vs_llamacpp.sh RAVEN_GGUF LAYERS LLAMA_GGUF LLAMA_LAYERS [ROUNDS] [STEPS]
#
# RAVEN_GGUF: a Raven model (e.g. `raven synth --hf` + `raven convert --type q4_0` of a family's
# shape); LAYERS: the layers one core iteration / loop step runs (Ouro-1.4B 24, Recurrent-Llama
# core 6). LLAMA_GGUF: a llama-architecture GGUF of the same layer shapes with a tiny vocabulary
# (so its head costs nothing), LLAMA_LAYERS its layer count. llama-bench from $LLAMA_BENCH
# (default target/llamacpp-cmp/bin/llama-bench). Prints, per round, Raven's ms per core iteration
# and its ratio to the paired read-bandwidth bound, and llama.cpp's ms per token, both per layer.
set -euo pipefail
cd "$(dirname "$0")/.."
RG=$1 RL=$2 LG=$3 LL=$4 ROUNDS=${5:-5} STEPS=${6:-4}
LB=${LLAMA_BENCH:-target/llamacpp-cmp/bin/llama-bench}
R=target/release/raven
printf 'round\traven ms/iter\titer/bound(paired)\traven ms/layer\tllama.cpp ms/token\tllama.cpp ms/layer\tllama.cpp(repack 0) ms/layer\n'
for i in $(seq 1 "$ROUNDS"); do
    rj=$($R bench -m "$RG" -p 8 -n 8 --steps "$STEPS" -t 2 -o json 2>/dev/null)
    l1=$($LB -m "$LG" -p 0 -n 16 -t 2 -r 2 -o json 2>/dev/null)
    l2=$($LB -m "$LG" -p 0 -n 16 -t 2 -r 2 --repack 0 -o json 2>/dev/null)
    python3 - "$rj" "$l1" "$l2" "$RL" "$LL" "$i" <<'PY'
import json, sys
rj, l1, l2, rl, ll, i = sys.argv[1:]
r = json.loads(rj)
row = r["rows"][0] if isinstance(r, dict) and "rows" in r else (r[0] if isinstance(r, list) else r)
ms = row["ms_per_core_iteration"]
ratio = row.get("iteration_over_paired_bound_median")
def lms(s):
    j = json.loads(s)
    ts = [x for x in j if x.get("n_gen", 0) > 0][0]["avg_ts"]
    return 1000.0 / ts
a, b = lms(l1), lms(l2)
print(f"{i}\t{ms:.2f}\t{ratio:.3f}\t{ms/int(rl):.3f}\t{a:.2f}\t{a/int(ll):.3f}\t{b/int(ll):.3f}")
PY
done
