"""Evaluates the multi-token demo checkpoint (models/demo-trace, `train.py --task trace`): the
reply is where the ball is after every swap, then <|end_turn|>.

    python eval_trace.py                 # models/demo-trace/hf: eval_set.jsonl + eval_pytorch.{json,md}

The evaluation set has the puzzles of models/demo/eval_set.jsonl (same seed and levels, and
make_trace draws exactly what make_puzzle draws), with the whole reply's token ids
(`answer_token_ids`, <|end_turn|> included) and the index of the single answer in it
(`answer_index`: the last answer, where the ball ends up). `raven eval-seq` decodes it with
every method; this script gives the reference accuracies by level x r in PyTorch.

Protocol: zero initial state; the prompt and the reply in one pass with r iterations for every
position (teacher forcing). A reply is right when every reply position predicts its token, which
is exactly when greedy decoding with r iterations per token and a `full` KV cache returns the
reply (the one-pass forward and cached decoding compute the same thing).
"""

from __future__ import annotations

import argparse
import json
import os
import random

import torch

import task
from huginn import load_hf

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "models", "demo-trace")
STEPS = [1, 2, 4, 8, 16, 32]


def make_eval_set(tok, levels: list[int], per_level: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    end_turn = tok.token_to_id("<|end_turn|>")
    items = []
    for lv in levels:
        for _ in range(per_level):
            puzzle, trace = task.make_trace(rng, lv)
            prompt = task.chat_prompt(puzzle)
            reply = task.reply_text(trace)
            ids = tok.encode(reply).ids
            assert len(ids) == lv, (reply, ids)
            items.append(
                {
                    "id": len(items),
                    "level": lv,
                    "puzzle": puzzle,
                    "prompt": prompt,
                    "answer": trace,
                    "reply": reply,
                    "prompt_token_ids": tok.encode(prompt).ids,
                    "answer_token_ids": ids + [end_turn],
                    "answer_index": lv - 1,
                    "answer_token_id": ids[-1],
                }
            )
    return items


@torch.no_grad()
def teacher_forced(model, items: list[dict], steps: int) -> list[list[int]]:
    """Per item, the argmax at every reply position (one pass, r iterations everywhere)."""
    out = []
    by_len: dict[tuple[int, int], list[int]] = {}
    for i, it in enumerate(items):
        by_len.setdefault((len(it["prompt_token_ids"]), len(it["answer_token_ids"])), []).append(i)
    preds: dict[int, list[int]] = {}
    for (_, r_len), idx in by_len.items():
        for b in range(0, len(idx), 256):
            part = idx[b : b + 256]
            rows = torch.tensor([items[i]["prompt_token_ids"] + items[i]["answer_token_ids"][:-1] for i in part])
            logits = model(rows, steps, init_scale=0.0)
            p = logits[:, -r_len:].argmax(-1)
            for j, i in enumerate(part):
                preds[i] = p[j].tolist()
    for i in range(len(items)):
        out.append(preds[i])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", default=os.path.join(OUT, "hf"))
    ap.add_argument("--out-dir", default=OUT)
    ap.add_argument("--per-level", type=int, default=200)
    ap.add_argument("--levels", default="1,2,3,4,6,8,10,12,16,20,24")
    ap.add_argument("--seed", type=int, default=20250207)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = task.build_tokenizer()
    levels = [int(x) for x in args.levels.split(",")]
    items = make_eval_set(tok, levels, args.per_level, args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "eval_set.jsonl"), "w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    model = load_hf(args.hf)
    model.eval()
    res = {}
    for r in STEPS:
        preds = teacher_forced(model, items, r)
        res[r] = preds
        print(f"r={r} done", flush=True)

    def rates(r, lv=None):
        sel = [i for i, it in enumerate(items) if lv is None or it["level"] == lv]
        whole = sum(res[r][i] == items[i]["answer_token_ids"] for i in sel) / len(sel)
        single = sum(res[r][i][items[i]["answer_index"]] == items[i]["answer_token_id"] for i in sel) / len(sel)
        return 100 * whole, 100 * single

    md = [
        f"PyTorch, teacher-forced one pass (= greedy decoding with a full cache), zero initial state, "
        f"{args.per_level} instances per level; levels above the curriculum's last were never trained on.",
        "",
        "Whole reply right (%) by level and core iterations r:",
        "",
        "| level | " + " | ".join(f"r={r}" for r in STEPS) + " |",
        "|---|" + "---|" * len(STEPS),
    ]
    for lv in levels + [None]:
        md.append(f"| {lv if lv else 'all'} | " + " | ".join(f"{rates(r, lv)[0]:.1f}" for r in STEPS) + " |")
    md += ["", "Single answer (the reply's last answer: where the ball ends up) right (%), teacher-forced: the "
           "answers before it are given, so above the trained length this is not what free decoding answers "
           "(`raven eval-seq` decodes freely):", "",
           "| level | " + " | ".join(f"r={r}" for r in STEPS) + " |", "|---|" + "---|" * len(STEPS)]
    for lv in levels + [None]:
        md.append(f"| {lv if lv else 'all'} | " + " | ".join(f"{rates(r, lv)[1]:.1f}" for r in STEPS) + " |")
    text = "\n".join(md) + "\n"
    print(text)
    with open(os.path.join(args.out_dir, "eval_pytorch.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out_dir, "eval_pytorch.json"), "w") as f:
        json.dump(
            {
                "checkpoint": os.path.relpath(args.hf, args.out_dir),
                "levels": levels,
                "per_level": args.per_level,
                "steps": STEPS,
                "whole": {str(r): {str(lv): rates(r, lv)[0] for lv in levels} for r in STEPS},
                "single": {str(r): {str(lv): rates(r, lv)[1] for lv in levels} for r in STEPS},
                "predictions": {str(r): res[r] for r in STEPS},
            },
            f,
        )
        f.write("\n")


if __name__ == "__main__":
    main()
