"""Trains the demo Ouro (LoopLM) model on the cup-swap task with Ouro's two-stage recipe.

Stage 1 (all weights; arXiv 2510.25741, entropy-regularised objective): every batch runs all T
loop steps; per reply token the gate gives the exit distribution p_t (lambda_t = sigmoid(gate_t),
p_t = lambda_t * S, S <- S (1 - lambda_t), p_{T-1} = S) and the loss is
    sum_t p_t * CE_t  -  beta * H(p)
averaged over the reply tokens (`answer`, `<|im_end|>`), CE_t the cross-entropy of lm_head at
step t. Curriculum over difficulty levels as in train.py. Init: matrices N(0, sqrt(2/(5h))),
embeddings N(0, `--embed-std` 1), branch-output norms (`*_layernorm_2`) `--post-norm-init` 0.25,
other norms 1, gate bias 0 (with all norms at 1 the model learned slowly and never used the loop:
see README_ouro.md).

Stage 2 (gate only, every other weight frozen): the paper's adaptive gate loss. Per reply token
and step t < T-1: the improvement still to come I_t = CE_t - min_{s > t} CE_s (stop-gradient),
the ideal continue probability w_t = sigmoid(k (I_t - gamma)), and binary cross-entropy between
lambda_t and the stop target 1 - w_t. (The paper uses the one-step improvement CE_{t-1} - CE_t;
the best later step is used here so that a step which alone does not help, before one that does,
is not taken as a reason to stop.) The LM being frozen, the hidden states and CE of a fixed set
of puzzles are computed once and the gate is fitted on them.

Finally the exit threshold q (config `early_exit_threshold`) is chosen on a validation set
(its own seed): among q >= `--q-min` (0.5), the q with the fewest mean steps at the answer
position whose accuracy is within `--q-max-loss` (0.5 points) of the T-th step's.

    python train_ouro.py      # defaults = the committed run -> ../../models/demo-ouro/hf
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

import ouro_task
from ouro import Ouro, OuroConfig, exit_distribution, exit_steps, load_hf, save_hf

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.join(HERE, "..", "..", "models", "demo-ouro")


class Batcher:
    """Puzzles -> (input ids [B, n], reply ids [B, 2]): the prompt followed by the reply
    `answer <|im_end|>` minus its last token; the reply is predicted at the last 2 positions."""

    def __init__(self, tok):
        self.tok = tok
        self.end = tok.token_to_id(ouro_task.REPLY_END)

    def encode(self, items: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = self.tok.encode_batch([ouro_task.chat_prompt(p) for p, _ in items])
        answers = self.tok.encode_batch([a for _, a in items])
        rows, reps = [], []
        for p, a in zip(prompts, answers):
            if len(a.ids) != 1:
                raise RuntimeError(f"answer is not one token: {a.tokens}")
            rows.append(p.ids + a.ids)
            reps.append(a.ids + [self.end])
        return torch.tensor(rows), torch.tensor(reps)


def reply_ce(model: Ouro, ids: torch.Tensor, reply: torch.Tensor, steps: int | None = None):
    """-> (CE [T, B, R], gate logits [T, B, R], hidden [T, B, R, h], argmax [T, B, R]) at the
    reply positions (the last R of ids)."""
    hs, g = model(ids, steps)
    R = reply.shape[1]
    hs, g = hs[:, :, -R:], g[:, :, -R:]
    logits = model.logits(hs)
    T, B = logits.shape[:2]
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), reply.unsqueeze(0).expand(T, -1, -1).reshape(-1), reduction="none"
    ).view(T, B, R)
    return ce, g, hs, logits.argmax(-1)


@torch.no_grad()
def quick_eval(model, batcher, levels, n, seed=12345):
    """Accuracy of the answer token at every step t (= T t+1 loops) and the gate's mean exit
    step at q = 0.5 per level."""
    rng = random.Random(seed)
    out = {}
    model.eval()
    for lv in levels:
        ids, reply = batcher.encode([ouro_task.make_puzzle(rng, lv) for _ in range(n)])
        ce, g, _, pred = reply_ce(model, ids, reply)
        hit = (pred[:, :, 0] == reply[None, :, 0]).float().mean(1)
        for t in range(hit.shape[0]):
            out[f"{lv}/{t + 1}"] = hit[t].item()
        out[f"{lv}/gate_steps"] = (exit_steps(g[:, :, 0], 0.5).float() + 1).mean().item()
        out[f"{lv}/p"] = [round(x, 3) for x in exit_distribution(g[:, :, 0]).mean(1).tolist()]
    model.train()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(DEMO, "hf"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--loops", type=int, default=4, help="T = total_ut_steps")
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--init-std", type=float, default=0.0, help="0: sqrt(2 / (5 h))")
    ap.add_argument("--max-level", type=int, default=8)
    ap.add_argument("--start-level", type=int, default=1)
    ap.add_argument("--curriculum-threshold", type=float, default=0.6)
    ap.add_argument("--embed-std", type=float, default=1.0, help="init std of embed_tokens")
    ap.add_argument("--post-norm-init", type=float, default=0.25, help="init of the *_layernorm_2 weights (branch-output norms)")
    ap.add_argument("--gate-bias-init", type=float, default=0.0, help="initial early_exit_gate bias")
    ap.add_argument("--hard-frac", type=float, default=0.0, help="fraction of steps on the current hardest level (else uniform)")
    ap.add_argument("--beta", type=float, default=0.05, help="entropy weight of stage 1")
    ap.add_argument("--steps", type=int, default=8000, help="stage-1 schedule length")
    ap.add_argument("--stop-at", type=int, default=0, help="stop stage 1 after this many steps (schedule unchanged); 0: run all")
    ap.add_argument("--time-budget", type=float, default=0, help="seconds for stage 1; stop early after this (0: none)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--gate-puzzles", type=int, default=256, help="stage 2: puzzles per level")
    ap.add_argument("--gate-steps", type=int, default=1000, help="stage 2: optimiser steps")
    ap.add_argument("--gate-lr", type=float, default=1e-2)
    ap.add_argument("--gate-k", type=float, default=50.0)
    ap.add_argument("--gate-gamma", type=float, default=0.05)
    ap.add_argument("--q-max-loss", type=float, default=0.005, help="accuracy loss allowed when choosing q")
    ap.add_argument("--q-min", type=float, default=0.5, help="smallest q considered")
    ap.add_argument("--val-per-level", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stage2-from", default="", help="skip stage 1: load this checkpoint and run stage 2 (gate) + q only")
    ap.add_argument("--bench", type=int, default=0, help="only time this many stage-1 steps")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    tok = ouro_task.build_tokenizer()
    batcher = Batcher(tok)
    cfg = OuroConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        rope_theta=args.rope_theta,
        max_position_embeddings=256,
        total_ut_steps=args.loops,
        initializer_range=args.init_std or math.sqrt(2.0 / (5.0 * args.hidden)),
    )
    model = Ouro(cfg)
    model.init_weights(gen)
    with torch.no_grad():
        model.model.early_exit_gate.bias.fill_(args.gate_bias_init)
        model.model.embed_tokens.weight.mul_(args.embed_std / cfg.initializer_range)
        for layer in model.model.layers:
            layer.input_layernorm_2.weight.fill_(args.post_norm_init)
            layer.post_attention_layernorm_2.weight.fill_(args.post_norm_init)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config {cfg}\nparameters {n_params:,}", flush=True)

    # ------------------------------------------------------------------ stage 1
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
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

    T = cfg.total_ut_steps
    cur_max = args.start_level
    acc_ema = 0.0
    t0 = time.time()
    hist = {"loss": [], "ce_last": [], "ent": []}
    log = []
    curriculum = []
    total = 0 if args.stage2_from else (args.bench or args.steps)
    if args.stage2_from:
        model.load_state_dict(load_hf(args.stage2_from).state_dict())
        step = -1
        cur_max = args.max_level
    eval_levels = sorted({1, max(1, args.max_level // 2), args.max_level, args.max_level + 2})
    for step in range(total):
        for g_ in opt.param_groups:
            g_["lr"] = lr_at(step)
        level = cur_max if rng.random() < args.hard_frac else rng.randint(1, cur_max)
        ids, reply = batcher.encode([ouro_task.make_puzzle(rng, level) for _ in range(args.batch)])
        ce, g, _, pred = reply_ce(model, ids, reply)
        p = exit_distribution(g)  # [T, B, R]
        ent = -(p * torch.log(p.clamp_min(1e-12))).sum(0)
        loss = (p * ce).sum(0).mean() - args.beta * ent.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hist["loss"].append(loss.item())
        hist["ce_last"].append(ce[-1].mean().item())
        hist["ent"].append(ent.mean().item())
        if level == cur_max:
            hit = (pred[-1, :, 0] == reply[:, 0]).float().mean().item()
            acc_ema = 0.9 * acc_ema + 0.1 * hit
        if cur_max < args.max_level and acc_ema > args.curriculum_threshold:
            cur_max += 1
            acc_ema = 0.0
            curriculum.append(step + 1)
            print(f"step {step + 1}: curriculum now levels 1..{cur_max}", flush=True)
        elapsed = time.time() - t0
        if args.bench:
            print(f"step {step} level {level} loss {loss.item():.3f} {elapsed:.1f}s", flush=True)
            continue
        if (step + 1) % 50 == 0:
            m = lambda k: sum(hist[k][-50:]) / 50  # noqa: E731
            print(
                f"step {step + 1} loss {m('loss'):.4f} ce@T {m('ce_last'):.4f} H(p) {m('ent'):.3f} "
                f"lr {lr_at(step):.2e} levels 1..{cur_max} {elapsed / 60:.1f} min",
                flush=True,
            )
        last = step + 1 == (args.stop_at or args.steps) or (args.time_budget > 0 and elapsed > args.time_budget)
        if (step + 1) % args.eval_every == 0 or last:
            acc = quick_eval(model, batcher, eval_levels, 128)
            rows = {
                f"L{lv}": " ".join(f"{acc[f'{lv}/{t}']:.2f}" for t in range(1, T + 1)) + f" gate {acc[f'{lv}/gate_steps']:.2f}"
                for lv in eval_levels
            }
            print(f"  eval acc T=1..{T}: {rows}", flush=True)
            log.append({"step": step + 1, "minutes": elapsed / 60, "loss": sum(hist["loss"][-50:]) / 50, "levels": cur_max, "acc": acc})
        if last:
            break
    if args.bench:
        return
    stage1_steps = step + 1
    stage1_minutes = (time.time() - t0) / 60

    # ------------------------------------------------------------------ stage 2 (gate only)
    t1 = time.time()
    # Stage 2 and the choice of q see exactly the weights that are saved (bf16).
    with torch.no_grad():
        for p_ in model.parameters():
            p_.copy_(p_.to(torch.bfloat16).float())
    for p_ in model.parameters():
        p_.requires_grad_(False)
    gate = model.model.early_exit_gate
    for p_ in gate.parameters():
        p_.requires_grad_(True)
    model.eval()

    def collect(seed: int, per_level: int):
        """Frozen LM: hidden states [T, N, R, h] and CE [T, N, R] of the reply tokens of
        per_level puzzles of every level 1..max_level, plus argmax [T, N, R], reply, level."""
        r = random.Random(seed)
        H, C, P, Y, LV = [], [], [], [], []
        with torch.no_grad():
            for lv in range(1, args.max_level + 1):
                for i in range(0, per_level, 128):
                    ids, reply = batcher.encode([ouro_task.make_puzzle(r, lv) for _ in range(min(128, per_level - i))])
                    ce, _, hs, pred = reply_ce(model, ids, reply)
                    H.append(hs)
                    C.append(ce)
                    P.append(pred)
                    Y.append(reply)
                    LV.append(torch.full((ids.shape[0],), lv))
        return torch.cat(H, 1), torch.cat(C, 1), torch.cat(P, 1), torch.cat(Y, 0), torch.cat(LV)

    hs, ce, _, _, _ = collect(args.seed + 1, args.gate_puzzles)
    best_later = torch.stack([ce[t + 1 :].min(0).values for t in range(T - 1)])  # [T-1, N, R]
    improve = ce[: T - 1] - best_later
    stop_target = 1.0 - torch.sigmoid(args.gate_k * (improve - args.gate_gamma))
    print(
        f"stage 2: {hs.shape[1]} puzzles, stop-target mean by step {[round(x, 3) for x in stop_target[:, :, 0].mean(1).tolist()]} (answer token)",
        flush=True,
    )
    gopt = torch.optim.Adam(gate.parameters(), lr=args.gate_lr)
    ggen = torch.Generator().manual_seed(args.seed + 2)
    N = hs.shape[1]
    gate_log = []
    for it in range(args.gate_steps):
        idx = torch.randint(0, N, (512,), generator=ggen)
        logit = gate(hs[: T - 1, idx]).squeeze(-1)  # [T-1, b, R]
        gl = F.binary_cross_entropy_with_logits(logit, stop_target[:, idx])
        gopt.zero_grad(set_to_none=True)
        gl.backward()
        gopt.step()
        if (it + 1) % 250 == 0:
            with torch.no_grad():
                full = F.binary_cross_entropy_with_logits(gate(hs[: T - 1]).squeeze(-1), stop_target).item()
            gate_log.append({"step": it + 1, "bce": full})
            print(f"  gate step {it + 1} bce {full:.4f}", flush=True)
    for p_ in model.parameters():
        p_.requires_grad_(True)

    with torch.no_grad():
        for p_ in gate.parameters():
            p_.copy_(p_.to(torch.bfloat16).float())

    # ------------------------------------------------------------------ q on a validation set
    vhs, vce, vpred, vreply, vlv = collect(args.seed + 3, args.val_per_level)
    with torch.no_grad():
        vg = gate(vhs).squeeze(-1)[:, :, 0]  # answer token [T, N]
    correct = vpred[:, :, 0] == vreply[None, :, 0]  # [T, N]
    acc_T = correct[-1].float().mean().item()
    sweep = []
    for q in [round(0.05 * i, 2) for i in range(1, 20)] + [0.99, 1.0]:
        st = exit_steps(vg, q)
        acc = correct[st, torch.arange(st.shape[0])].float().mean().item()
        sweep.append({"q": q, "accuracy": acc, "mean_steps": (st.float() + 1).mean().item()})
    ok = [s for s in sweep if s["accuracy"] >= acc_T - args.q_max_loss and s["q"] >= args.q_min]
    choice = min(ok, key=lambda s: (s["mean_steps"], -s["accuracy"], -s["q"]))
    print(f"validation: accuracy at T={T}: {acc_T:.4f}", flush=True)
    for s in sweep:
        print(f"  q {s['q']:.2f}: accuracy {s['accuracy']:.4f} mean steps {s['mean_steps']:.3f}", flush=True)
    print(f"chosen q = {choice['q']}", flush=True)
    model.cfg.early_exit_threshold = choice["q"]
    stage2_minutes = (time.time() - t1) / 60

    os.makedirs(args.out, exist_ok=True)
    save_hf(model, args.out)
    ouro_task.write_tokenizer_files(tok, args.out)
    with open(os.path.join(args.out, "..", "train_log.json"), "w") as f:
        json.dump(
            {
                "args": vars(args),
                "torch": torch.__version__,
                "parameters": n_params,
                "stage1_steps": stage1_steps,
                "stage1_minutes": stage1_minutes,
                "curriculum_reached": cur_max,
                "curriculum_steps": curriculum,
                "stage2_minutes": stage2_minutes,
                "minutes": (time.time() - t0) / 60,
                "log": log,
                "gate_log": gate_log,
                "validation": {"accuracy_at_T": acc_T, "q_sweep": sweep, "chosen_q": choice["q"]},
            },
            f,
            indent=1,
        )
    print(f"saved to {args.out} after {(time.time() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
