"""Evaluates the demo checkpoint: accuracy by difficulty level x iterations, and by exit policy.

    python eval.py                       # models/demo/hf, writes eval_set.jsonl + eval_pytorch.json
    python eval.py --hf DIR --out-dir D  # another checkpoint

The test set (models/demo/eval_set.jsonl) is generated from a fixed seed, disjoint in seed from
training; each line has the chat-formatted prompt, its token ids, the answer and the level, so the
Rust `raven eval` scores exactly the same instances.

Protocols (greedy: the prediction is the argmax at the last prompt position; an instance is
correct when it equals the answer token):

- fixed r: the whole prompt in one pass with r core iterations for every token.
- exit policy: the prompt except its last token in one pass with `max_steps` (32) iterations
  (KV cache `full`), then the last prompt token decoded alone through the cache with the exit
  criterion checked after every iteration (SPEC §2 semantics: from the first iteration; previous
  values start from the initial state / uniform distribution). The iteration count reported is that
  of the answer-producing token. With the `none` policy this equals fixed r = max_steps.
- initial state: zero (init_scale 0, deterministic: what the Rust comparison uses) unless stated;
  the `seeded` section uses init_scale 1 with a torch seed, for reference only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch

import task
from huginn import ExitCriterion, load_hf

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.join(HERE, "..", "..", "models", "demo")
STEPS = [1, 2, 4, 8, 16, 32]
POLICIES = [
    ("none", None),
    ("latent-diff", 0.03),
    ("latent-diff", 0.01),
    ("latent-diff", 0.005),
    ("kl", 1e-3),
    ("kl", 5e-4),
    ("kl", 1e-4),
    ("entropy-diff", 1e-3),
    ("cosine", 1e-3),
    ("cosine", 1e-4),
    ("argmax-stability", 5),
]


def make_eval_set(tok, levels: list[int], per_level: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for lv in levels:
        for _ in range(per_level):
            puzzle, answer = task.make_puzzle(rng, lv)
            prompt = task.chat_prompt(puzzle)
            items.append(
                {
                    "id": len(items),
                    "level": lv,
                    "puzzle": puzzle,
                    "prompt": prompt,
                    "answer": answer,
                    "prompt_token_ids": tok.encode(prompt).ids,
                    "answer_token_id": tok.encode(answer).ids[0],
                }
            )
    return items


@torch.no_grad()
def predict_fixed(model, ids: torch.Tensor, steps: int, init_scale: float, gen, batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, ids.shape[0], batch):
        logits = model(ids[i : i + batch], steps, init_scale=init_scale, generator=gen)
        out.append(logits[:, -1].argmax(-1))
    return torch.cat(out)


@torch.no_grad()
def predict_exit(model, cache: dict, last: torch.Tensor, pos: int, crit: ExitCriterion, max_steps: int):
    """Decodes the last prompt token (last [B] at position pos) through a copy of the prefill
    cache with an exit criterion. Returns (predicted token [B], iterations used [B])."""
    cache = dict(cache)  # entries are replaced, never written in place: a shallow copy suffices
    B = last.shape[0]
    crit.reset(B)
    done = torch.zeros(B, dtype=torch.bool)
    steps = torch.full((B,), max_steps)
    pred = torch.zeros(B, dtype=torch.long)
    for n, s_prev, s, head in model.step_last(cache, last, pos, max_steps):
        exit_now, _, logits = crit.check(s_prev, s, head)
        if logits is None:
            logits = head()
        new = exit_now & ~done
        if n == max_steps:
            new = ~done
        pred[new] = logits[new].argmax(-1)
        steps[new & exit_now] = n
        done |= new
        if done.all():
            break
    return pred, steps


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", default=os.path.join(DEMO, "hf"))
    ap.add_argument("--out-dir", default=DEMO)
    ap.add_argument("--per-level", type=int, default=200)
    ap.add_argument("--levels", default="1,2,3,4,6,8,10,12,16,20,24")
    ap.add_argument("--seed", type=int, default=20250207)
    ap.add_argument("--max-steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-seeded", action="store_true", help="skip the random-initial-state table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(args.hf, "tokenizer.json"))
    model = load_hf(args.hf).eval()
    with open(os.path.join(args.hf, "..", "train_log.json")) as f:
        tl = json.load(f)
        trained_max = tl.get("curriculum_reached", tl["args"]["max_level"])
    levels = [int(x) for x in args.levels.split(",")]
    items = make_eval_set(tok, levels, args.per_level, args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "eval_set.jsonl"), "w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")

    # Prompts of one level share a length: evaluate level by level.
    groups = {}
    for it in items:
        groups.setdefault(it["level"], []).append(it)
    order = torch.tensor([it["id"] for l in levels for it in groups[l]])
    lv = torch.tensor([it["level"] for it in items])
    ans = torch.tensor([it["answer_token_id"] for it in items])

    def gather(per_level: dict[int, torch.Tensor]) -> torch.Tensor:
        out = torch.empty(len(items), dtype=torch.long)
        out[order] = torch.cat([per_level[l] for l in levels])
        return out

    def by_level(correct: torch.Tensor) -> dict[str, float]:
        return {str(l): correct[lv == l].float().mean().item() for l in levels}

    result: dict = {
        "checkpoint": os.path.relpath(args.hf, args.out_dir),
        "eval_set": "eval_set.jsonl",
        "instances": len(items),
        "levels": levels,
        "trained_levels": list(range(1, trained_max + 1)),
        "init_state": "zero (init_scale 0)",
        "decoding": "greedy: argmax at the last prompt position",
        "fixed": {"steps": STEPS, "accuracy": {}, "predictions": {}},
        "exit": {"max_steps": args.max_steps, "policies": []},
    }

    fixed = {r: {} for r in STEPS}
    exits = {p: ({}, {}) for p in POLICIES}
    for l in levels:
        ids = torch.tensor([it["prompt_token_ids"] for it in groups[l]])
        for r in STEPS:
            fixed[r][l] = predict_fixed(model, ids, r, 0.0, None)
        cache = model.prefill(ids[:, :-1], args.max_steps)
        for p in POLICIES:
            crit = ExitCriterion(p[0], p[1], model.cfg.vocab_size)
            pred, used = predict_exit(model, cache, ids[:, -1], ids.shape[1] - 1, crit, args.max_steps)
            exits[p][0][l], exits[p][1][l] = pred, used
        acc = " ".join(f"r{r}:{pct((fixed[r][l] == ans[lv == l]).float().mean().item())}" for r in STEPS)
        print(f"level {l}: {acc}  ({time.time() - t0:.0f}s)", flush=True)

    # Accuracy by level x iterations.
    for r in STEPS:
        pred = gather(fixed[r])
        result["fixed"]["accuracy"][str(r)] = {"all": (pred == ans).float().mean().item(), **by_level(pred == ans)}
        result["fixed"]["predictions"][str(r)] = pred.tolist()

    # Exit policies.
    for name, tau in POLICIES:
        pred, used = gather(exits[(name, tau)][0]), gather(exits[(name, tau)][1])
        ok = pred == ans
        entry = {
            "policy": name if tau is None else f"{name}:{tau:g}",
            "accuracy": ok.float().mean().item(),
            "mean_steps": used.float().mean().item(),
            "by_level": {
                str(l): {"accuracy": ok[lv == l].float().mean().item(), "mean_steps": used[lv == l].float().mean().item()}
                for l in levels
            },
            "predictions": pred.tolist(),
            "steps": used.tolist(),
        }
        result["exit"]["policies"].append(entry)
        print(f"exit {entry['policy']}: acc {pct(entry['accuracy'])}% mean steps {entry['mean_steps']:.2f}", flush=True)

    # Consistency: the `none` policy decodes the last token through the cache for max_steps; it
    # must choose what the one-pass forward with r = max_steps chooses.
    none = next(p for p in result["exit"]["policies"] if p["policy"] == "none")
    if str(args.max_steps) in result["fixed"]["predictions"]:
        same = sum(a == b for a, b in zip(none["predictions"], result["fixed"]["predictions"][str(args.max_steps)]))
        print(f"cached decoding vs one pass at r={args.max_steps}: {same}/{len(items)} predictions agree")

    if not args.no_seeded:
        gen = torch.Generator().manual_seed(args.seed)
        seeded = {"init_state": f"random (init_scale 1, torch seed {args.seed}, levels in order)", "accuracy": {}}
        for r in STEPS:
            per = {}
            for l in levels:
                ids = torch.tensor([it["prompt_token_ids"] for it in groups[l]])
                per[l] = predict_fixed(model, ids, r, 1.0, gen)
            pred = gather(per)
            seeded["accuracy"][str(r)] = {"all": (pred == ans).float().mean().item(), **by_level(pred == ans)}
        result["seeded"] = seeded

    result["seconds"] = time.time() - t0
    write_outputs(result, args.out_dir)
    print()
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
    lines = []
    lines.append(f"Accuracy (%) by level (number of swaps) and core iterations r; zero initial state; {res['instances'] // len(levels)} instances per level; levels above {max(trained)} were never trained on.")
    lines.append("")
    lines.append("| level | " + " | ".join(f"r={r}" for r in res["fixed"]["steps"]) + " |")
    lines.append("|---|" + "---|" * len(res["fixed"]["steps"]))
    for l in levels:
        mark = "" if l in trained else " (untrained)"
        cells = [pct(res["fixed"]["accuracy"][str(r)][str(l)]) for r in res["fixed"]["steps"]]
        lines.append(f"| {l}{mark} | " + " | ".join(cells) + " |")
    cells = [pct(res["fixed"]["accuracy"][str(r)]["all"]) for r in res["fixed"]["steps"]]
    lines.append("| all | " + " | ".join(cells) + " |")
    if "seeded" in res:
        cells = [pct(res["seeded"]["accuracy"][str(r)]["all"]) for r in res["fixed"]["steps"]]
        lines.append("| all, random init state | " + " | ".join(cells) + " |")
    lines.append("")
    mx = res["exit"]["max_steps"]
    lines.append(f"Exit policies (at most {mx} iterations; mean iterations of the answer token; zero initial state).")
    lines.append("")
    lines.append("| policy | accuracy % | mean iterations | saved vs " + str(mx) + " | " + " | ".join(f"L{l} it." for l in levels) + " |")
    lines.append("|---|---|---|---|" + "---|" * len(levels))
    for p in res["exit"]["policies"]:
        saved = 1 - p["mean_steps"] / mx
        cells = [f"{p['by_level'][str(l)]['mean_steps']:.1f}" for l in levels]
        lines.append(
            f"| {p['policy']} | {pct(p['accuracy'])} | {p['mean_steps']:.2f} | {pct(saved)}% | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
