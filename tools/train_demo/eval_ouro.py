"""Evaluates the demo Ouro checkpoint: accuracy by level x loop steps T, and the exit gate.

    python eval_ouro.py                       # models/demo-ouro/hf -> eval_set.jsonl, eval_pytorch.{json,md}
    python eval_ouro.py --hf DIR --out-dir D  # another checkpoint

The eval set (models/demo-ouro/eval_set.jsonl) is generated from a fixed seed, distinct from the
training, stage-2 and validation seeds; each line has the ChatML prompt, its token ids, the answer
token id and the level, so `raven eval` can score exactly the same instances.

Protocols (greedy: the prediction is the argmax at the last prompt position; correct when it
equals `answer_token_id`; float32):
- fixed T: the whole prompt in one pass with T loop steps for every token (`total_ut_steps` = T),
  the logits of step T. These equal the T-th step's logits of a 4-step pass, which is how they
  are computed here.
- gate exit at q, official read-out: all 4 steps computed for every token; per position the
  read-out step is the first t with cumsum(p)_t >= q (p from the gate), and the prediction is
  lm_head of that step's hidden state at the last position. `steps` = that step + 1 at the
  answer position. An engine that stops the last token at its exit step after a full-depth
  prefill of the other tokens (raven's `--exit gate`) gives the same prediction and step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch

import ouro_task
from ouro import exit_distribution, exit_steps, load_hf

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.join(HERE, "..", "..", "models", "demo-ouro")
QS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def make_eval_set(tok, levels: list[int], per_level: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for lv in levels:
        for _ in range(per_level):
            puzzle, answer = ouro_task.make_puzzle(rng, lv)
            prompt = ouro_task.chat_prompt(puzzle)
            a = tok.encode(answer).ids
            if len(a) != 1:
                raise RuntimeError(f"answer {answer!r} is not one token")
            items.append(
                {
                    "id": len(items),
                    "level": lv,
                    "puzzle": puzzle,
                    "prompt": prompt,
                    "answer": answer,
                    "prompt_token_ids": tok.encode(prompt).ids,
                    "answer_token_id": a[0],
                }
            )
    return items


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", default=os.path.join(DEMO, "hf"))
    ap.add_argument("--out-dir", default=DEMO)
    ap.add_argument("--per-level", type=int, default=200)
    ap.add_argument("--levels", default="", help="comma-separated; default 1..max trained level, then +2 and +4")
    ap.add_argument("--seed", type=int, default=20251029)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(args.hf, "tokenizer.json"))
    model = load_hf(args.hf).eval()
    T = model.cfg.total_ut_steps
    q_cfg = model.cfg.early_exit_threshold
    with open(os.path.join(args.hf, "..", "train_log.json")) as f:
        tl = json.load(f)
    trained_max = tl["curriculum_reached"]
    levels = [int(x) for x in args.levels.split(",")] if args.levels else list(range(1, trained_max + 1)) + [trained_max + 2, trained_max + 4]
    trained = [l for l in levels if l <= trained_max]
    items = make_eval_set(tok, levels, args.per_level, args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "eval_set.jsonl"), "w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")

    qs = sorted(set(QS + [q_cfg]))
    lv = torch.tensor([it["level"] for it in items])
    ans = torch.tensor([it["answer_token_id"] for it in items])
    pred_T = torch.empty(T, len(items), dtype=torch.long)  # [T, N]
    gate = torch.empty(T, len(items))
    # Prompts of one level share a length: one batch per level.
    with torch.no_grad():
        for l in levels:
            sel = [it["id"] for it in items if it["level"] == l]
            ids = torch.tensor([items[i]["prompt_token_ids"] for i in sel])
            hs, g = model(ids)
            pred_T[:, sel] = model.logits(hs[:, :, -1]).argmax(-1)
            gate[:, sel] = g[:, :, -1]
    correct_T = pred_T == ans[None]

    def by_level(x: torch.Tensor) -> dict[str, float]:
        d = {str(l): x[lv == l].float().mean().item() for l in levels}
        d["all"] = x.float().mean().item()
        d["trained"] = x[lv <= trained_max].float().mean().item()
        return d

    result: dict = {
        "checkpoint": os.path.relpath(args.hf, args.out_dir),
        "eval_set": "eval_set.jsonl",
        "instances": len(items),
        "levels": levels,
        "trained_levels": list(range(1, trained_max + 1)),
        "decoding": "greedy: argmax at the last prompt position, float32",
        "fixed": {"steps": list(range(1, T + 1)), "accuracy": {}, "predictions": {}},
        "exit": {
            "read_out": "official: all steps computed, per position the first step with cumsum(p) >= q",
            "config_q": q_cfg,
            "policies": [],
        },
        "mean_exit_pdf_answer_position": {str(l): exit_distribution(gate[:, lv == l]).mean(1).tolist() for l in levels},
    }
    for t in range(T):
        result["fixed"]["accuracy"][str(t + 1)] = by_level(correct_T[t])
        result["fixed"]["predictions"][str(t + 1)] = pred_T[t].tolist()
    for q in qs:
        st = exit_steps(gate, q)
        ok = correct_T[st, torch.arange(len(items))]
        steps = (st + 1).float()
        entry = {
            "policy": f"gate:{q:g}",
            "q": q,
            "accuracy": by_level(ok),
            "mean_steps": by_level(steps),
            "predictions": pred_T[st, torch.arange(len(items))].tolist(),
            "steps": (st + 1).tolist(),
        }
        result["exit"]["policies"].append(entry)
    result["seconds"] = time.time() - t0
    write_outputs(result, args.out_dir)
    print(markdown(result))


def write_outputs(result: dict, out_dir: str) -> None:
    """eval_pytorch.json (one line per top-level key, per-instance lists kept compact) and
    eval_pytorch.md (the tables)."""
    with open(os.path.join(out_dir, "eval_pytorch.json"), "w") as f:
        f.write("{\n")
        keys = list(result)
        for i, k in enumerate(keys):
            sep = "," if i + 1 < len(keys) else ""
            f.write(f" {json.dumps(k)}: {json.dumps(result[k], separators=(',', ':'))}{sep}\n")
        f.write("}\n")
    with open(os.path.join(out_dir, "eval_pytorch.md"), "w") as f:
        f.write(markdown(result) + "\n")


def markdown(res: dict) -> str:
    levels = res["levels"]
    trained = set(res["trained_levels"])
    steps = res["fixed"]["steps"]
    T = max(steps)
    n = res["instances"] // len(levels)
    lines = [
        f"Accuracy (%) by level (number of swaps) and loop steps T; {n} instances per level; "
        f"levels above {max(trained)} were never trained on.",
        "",
        "| level | " + " | ".join(f"T={t}" for t in steps) + f" | gate q={res['exit']['config_q']:g} | mean steps |",
        "|---|" + "---|" * (len(steps) + 2),
    ]
    chosen = next(p for p in res["exit"]["policies"] if p["q"] == res["exit"]["config_q"])
    for key in [str(l) for l in levels] + ["trained", "all"]:
        if key.isdigit():
            label = key + ("" if int(key) in trained else " (untrained)")
        else:
            label = f"all trained (1..{max(trained)})" if key == "trained" else "all"
        cells = [pct(res["fixed"]["accuracy"][str(t)][key]) for t in steps]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {pct(chosen['accuracy'][key])} | {chosen['mean_steps'][key]:.2f} |")
    lines += [
        "",
        f"Gate exit (official read-out: all {T} steps computed, the gate's step read out at the answer "
        f"position); accuracy and mean steps over the trained levels (all levels in brackets); saved vs T={T}.",
        "",
        "| q | accuracy % | vs T=" + str(T) + " (points) | mean steps | saved | " + " | ".join(f"L{l} steps" for l in levels) + " |",
        "|---|---|---|---|---|" + "---|" * len(levels),
    ]
    base = res["fixed"]["accuracy"][str(T)]
    for p in res["exit"]["policies"]:
        mark = " (config)" if p["q"] == res["exit"]["config_q"] else ""
        cells = [f"{p['mean_steps'][str(l)]:.2f}" for l in levels]
        lines.append(
            f"| {p['q']:g}{mark} | {pct(p['accuracy']['trained'])} ({pct(p['accuracy']['all'])}) | "
            f"{100 * (p['accuracy']['trained'] - base['trained']):+.1f} ({100 * (p['accuracy']['all'] - base['all']):+.1f}) | "
            f"{p['mean_steps']['trained']:.2f} ({p['mean_steps']['all']:.2f}) | {pct(1 - p['mean_steps']['trained'] / T)}% | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
