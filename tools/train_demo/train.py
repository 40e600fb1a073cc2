"""Trains the demo Huginn model on the chain-following task with the paper's recipe.

Per step: a recurrence count r drawn from the Poisson-lognormal distribution of the paper (mean
`--mean-recurrence`), gradients only through the last `--backprop-depth` iterations (truncated
backprop), a random initial state (truncated normal, std sqrt(2/(5h)), times sqrt(h)), loss on the
answer tokens only. Deterministic for a given --seed. Writes the checkpoint in the Hugging Face
Huginn layout (see huginn.save_hf) with tokenizer files.

    python train.py --out ../../models/demo/hf
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import torch
import torch.nn.functional as F

import task
from huginn import Huginn, HuginnConfig, load_hf, save_hf


def sample_recurrence(gen: torch.Generator, mean: int, backprop: int) -> tuple[int, int]:
    """The paper's sampler: rate ~ LogNormal(log(mean) - sigma^2/2, sigma), r = Poisson(rate) + 1.
    Returns (iterations without gradient, iterations with gradient)."""
    sigma = 0.5
    mu = math.log(mean) - sigma**2 / 2
    rate = torch.empty(1).log_normal_(mu, sigma, generator=gen)
    r = int(torch.poisson(rate, generator=gen).item()) + 1
    k = min(backprop, r)
    return r - k, k


class Batcher:
    """Encodes puzzles to id rows: prompt ids followed by the reply ids (answers one per line,
    then <|end_turn|>). All rows of one call have the same shape."""

    def __init__(self, tok):
        self.tok = tok
        self.end_turn = tok.token_to_id("<|end_turn|>")

    def encode(self, items: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-answer items -> (prompt+answer ids [B, T], answer ids [B])."""
        ids, reply = self.encode_multi([(p, [a]) for p, a in items])
        return ids[:, : ids.shape[1] - 1], reply[:, 0]

    def encode_multi(self, items: list[tuple[str, list[str]]], sep: str = "\n") -> tuple[torch.Tensor, torch.Tensor]:
        """-> (prompt + reply ids [B, T], reply ids [B, R]); the reply's first token is the
        first answer, predicted at the last prompt position. Answers are joined by `sep`."""
        prompts = self.tok.encode_batch([task.chat_prompt(p) for p, _ in items])
        replies = self.tok.encode_batch([sep.join(a) for _, a in items])
        rows, reps = [], []
        for p, r in zip(prompts, replies):
            rows.append(p.ids + r.ids + [self.end_turn])
            reps.append(r.ids + [self.end_turn])
        return torch.tensor(rows), torch.tensor(reps)


def write_tokenizer_files(tok, out: str, cfg: HuginnConfig) -> None:
    tok.save(os.path.join(out, "tokenizer.json"))
    tc = {
        "bos_token": "<|begin_text|>",
        "eos_token": "<|end_text|>",
        "pad_token": "<|pad|>",
        "chat_template": task.CHAT_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2)
        f.write("\n")
    gc = {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": [cfg.eos_token_id, tok.token_to_id("<|end_turn|>")],
        "pad_token_id": cfg.pad_token_id,
    }
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(gc, f, indent=2)
        f.write("\n")


MULTI = {"trace": task.make_trace, "rounds": task.make_rounds}


@torch.no_grad()
def quick_eval_multi(model, batcher, make, levels, steps_list, n, seed=12345):
    """Multi-token tasks: per (level, r), (whole reply right, first answer right, last answer
    right) rates, teacher-forced in one pass (equal to greedy decoding with a full cache: the
    reply is all right exactly when every teacher-forced prediction is)."""
    rng = random.Random(seed)
    out = {}
    model.eval()
    for lv in levels:
        rows, reply = batcher.encode_multi([make(rng, lv) for _ in range(n)], sep=" ")
        R = reply.shape[1]
        for r in steps_list:
            pred = model(rows[:, :-1], r)[:, -R:].argmax(-1)
            ok = pred == reply
            out[(lv, r)] = (ok.all(1).float().mean().item(), ok[:, 0].float().mean().item(), ok[:, -2].float().mean().item())
    model.train()
    return out


@torch.no_grad()
def quick_eval(model, batcher, levels, steps_list, n, seed=12345):
    rng = random.Random(seed)
    out = {}
    model.eval()
    for lv in levels:
        ids, ans = batcher.encode([task.make_puzzle(rng, lv) for _ in range(n)])
        for r in steps_list:
            logits = model(ids[:, :-1], r)
            out[(lv, r)] = (logits[:, -1].argmax(-1) == ans).float().mean().item()
    model.train()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="", help="default: models/demo/hf (--task single), models/demo-trace/hf (others)")
    ap.add_argument("--task", default="single", choices=["single", "trace", "rounds"],
                    help="single: the answer (models/demo); trace: where the ball is after every swap "
                    "(models/demo-trace); rounds: after each of 4 rounds of the swap list (a tried variant)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=128)
    ap.add_argument("--prelude", type=int, default=1)
    ap.add_argument("--core", type=int, default=2)
    ap.add_argument("--coda", type=int, default=1)
    ap.add_argument("--mean-recurrence", type=int, default=12)
    ap.add_argument("--backprop-depth", type=int, default=4)
    ap.add_argument("--max-level", type=int, default=12, help="hardest level (number of swaps) trained on")
    ap.add_argument("--start-level", type=int, default=1, help="curriculum: first hardest level")
    ap.add_argument("--init-from", default="", help="HF checkpoint directory to continue from")
    ap.add_argument("--stop-at", type=int, default=2668, help="stop after this many steps (schedule unchanged); 0: run all")
    ap.add_argument("--curriculum-threshold", type=float, default=0.6)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--time-budget", type=float, default=0, help="seconds; stop early after this (0: none)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest while others use the cores")
    ap.add_argument("--compile", action="store_true", help="torch.compile the core block (little gain here)")
    ap.add_argument("--bench", type=int, default=0, help="only time this many steps")
    args = ap.parse_args()
    if not args.out:
        sub = "demo" if args.task == "single" else "demo-trace"
        args.out = os.path.join(os.path.dirname(__file__), "..", "..", "models", sub, "hf")
    multi = MULTI.get(args.task)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    tok = task.build_tokenizer()
    batcher = Batcher(tok)
    cfg = HuginnConfig(
        n_embd=args.n_embd,
        n_heads=args.n_heads,
        intermediate_size=args.intermediate,
        vocab_size=tok.get_vocab_size(),
        n_layers_in_prelude=args.prelude,
        n_layers_in_recurrent_block=args.core,
        n_layers_in_coda=args.coda,
        mean_recurrence=args.mean_recurrence,
        mean_backprop_depth=args.backprop_depth,
        block_size=256,
        bos_token_id=tok.token_to_id("<|begin_text|>"),
        eos_token_id=tok.token_to_id("<|end_text|>"),
        pad_token_id=tok.token_to_id("<|pad|>"),
    )
    model = Huginn(cfg)
    model.init_weights(gen)
    if args.init_from:
        # Continue from an earlier checkpoint of this script (same shape); optimizer state restarts.
        model.load_state_dict(load_hf(args.init_from).state_dict())
    n_params = sum(p.numel() for p in model.parameters())
    if args.compile:
        model.core = torch.compile(model.core, dynamic=True)
    print(f"config {cfg}\nparameters {n_params:,}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n.endswith("qk_bias")]
    decay = [p for p in decay if all(p is not q for q in no_decay)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))

    cur_max = args.start_level
    acc_ema = 0.0
    t0 = time.time()
    losses = []
    log = []
    total = args.bench or args.steps
    for step in range(total):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        # One level per step (prompts of a level share one length); curriculum 1..cur_max.
        level = rng.randint(1, cur_max)
        if multi is None:
            rows, reply = batcher.encode_multi([(p, [a]) for p, a in (task.make_puzzle(rng, level) for _ in range(args.batch))])
        else:
            rows, reply = batcher.encode_multi([multi(rng, level) for _ in range(args.batch)], sep=" ")
        R = reply.shape[1]
        ids = rows[:, :-1]
        ans = reply[:, 0]
        n_free, n_grad = sample_recurrence(gen, args.mean_recurrence, args.backprop_depth)
        logits = model(ids, n_free + n_grad, n_grad=n_grad, init_scale=1.0, generator=gen)
        out = logits[:, -R:]
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), reply.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        # Curriculum: admit the next level once the current hardest is answered well.
        if level == cur_max:
            if multi is None:
                hit = (out[:, 0].argmax(-1) == ans).float().mean().item()
            else:  # the whole reply right
                hit = (out.argmax(-1) == reply).all(1).float().mean().item()
            acc_ema = 0.9 * acc_ema + 0.1 * hit
        if cur_max < args.max_level and acc_ema > args.curriculum_threshold:
            cur_max += 1
            acc_ema = 0.0
            print(f"step {step + 1}: curriculum now levels 1..{cur_max}", flush=True)
        elapsed = time.time() - t0
        if args.bench:
            print(f"step {step} r={n_free + n_grad} loss {loss.item():.3f} {elapsed:.1f}s", flush=True)
            continue
        if (step + 1) % 50 == 0:
            print(
                f"step {step + 1} loss {sum(losses[-50:]) / 50:.4f} lr {lr_at(step):.2e} levels 1..{cur_max} {elapsed / 60:.1f} min",
                flush=True,
            )
        last = step + 1 == (args.stop_at or args.steps) or (args.time_budget > 0 and elapsed > args.time_budget)
        if (step + 1) % args.eval_every == 0 or last:
            eval_levels = [1, args.max_level // 2, args.max_level, args.max_level + 4]
            if multi is None:
                acc = quick_eval(model, batcher, eval_levels, [1, 4, 8, 16, 32], 128)
                rows = {f"L{lv}": " ".join(f"{acc[(lv, r)]:.2f}" for r in (1, 4, 8, 16, 32)) for lv in eval_levels}
            else:  # whole reply / first answer / last answer
                full = quick_eval_multi(model, batcher, multi, eval_levels, [1, 4, 8, 16, 32], 128)
                acc = {k: v[0] for k, v in full.items()}
                rows = {f"L{lv}": " ".join(f"{full[(lv, r)][0]:.2f}/{full[(lv, r)][1]:.2f}/{full[(lv, r)][2]:.2f}" for r in (1, 4, 8, 16, 32)) for lv in eval_levels}
            print(f"  eval r=1,4,8,16,32: {rows}", flush=True)
            log.append({"step": step + 1, "minutes": elapsed / 60, "loss": sum(losses[-50:]) / 50,
                        "acc": {f"{k[0]}/{k[1]}": v for k, v in acc.items()}})
        if last:
            break
    if args.bench:
        return

    os.makedirs(args.out, exist_ok=True)
    save_hf(model, args.out)
    write_tokenizer_files(tok, args.out, cfg)
    with open(os.path.join(args.out, "..", "train_log.json"), "w") as f:
        json.dump(
            {
                "args": vars(args),
                "parameters": n_params,
                "steps_done": step + 1,
                "curriculum_reached": cur_max,
                "minutes": (time.time() - t0) / 60,
                "log": log,
            },
            f,
            indent=1,
        )
    print(f"saved to {args.out} after {(time.time() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
