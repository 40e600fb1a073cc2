"""Proves `ouro.py` computes what the official Ouro code computes, and checks a checkpoint's layout.

    python check_ouro.py                        # the fixture cases only
    python check_ouro.py ../../models/demo-ouro/hf   # also that directory's files and layout

Against tests/fixtures/tiny-ouro/reference.safetensors (float32, official code) for both
checkpoints (main: MHA, two shards + index; gqa/: 2 KV heads, one model.safetensors):
- forward.p{0,1,2}: step_logits [T, L, V] (main) or the default output logits (gqa),
  step_hidden, gate_logits, gate_probs, exit_pdf, exit_cdf, default exit steps;
- early_exit.q{q}.p{P} (main): the threshold read-out's logits and exit steps;
- loops{n}.p{P} (main): T = n loops, default read-out logits and exit_pdf;
- decode.p* and early_exit_decode.* (both): every greedy row recomputed without a cache
  (the fixture's rows equal an uncached recomputation to 7e-6), logits, tokens and exit steps.
All within TOL = 1e-4.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ouro import exit_distribution, exit_steps, load_hf

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "..", "tests", "fixtures", "tiny-ouro")
TOL = 1e-4
failures: list[str] = []
n_checks = 0


def check(ok: bool, what: str) -> None:
    global n_checks
    n_checks += 1
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return (a.float() - b.float()).abs().max().item()


@torch.no_grad()
def check_fixture(d: str) -> None:
    label = os.path.relpath(d, FIXTURE) if d != FIXTURE else "main"
    model = load_hf(d).eval()
    ref = load_file(os.path.join(d, "reference.safetensors"))
    with open(os.path.join(d, "reference.json")) as f:
        rj = json.load(f)
    prompts = rj["prompt_token_ids"]
    T = model.cfg.total_ut_steps
    q_default = model.cfg.early_exit_threshold
    worst = 0.0

    def run(ids: list[int], steps: int | None = None):
        hs, g = model(torch.tensor([ids]), steps)
        return hs[:, 0], g[:, 0], model.logits(hs[:, 0])

    for case in rj["cases"]:
        name, kind = case["name"], case["kind"]
        if kind == "forward":
            hs, g, lg = run(prompts[case["prompt"]])
            pdf = exit_distribution(g)
            got = {
                "step_hidden": hs,
                "gate_logits": g,
                "gate_probs": torch.sigmoid(g),
                "exit_pdf": pdf,
                "exit_cdf": torch.cumsum(pdf, 0),
            }
            steps = exit_steps(g, q_default)
            if name + ".step_logits" in ref:
                got["step_logits"] = lg
            if name + ".logits" in ref:
                got["logits"] = lg[steps, torch.arange(lg.shape[1])]
            ds = {k: maxdiff(v, ref[f"{name}.{k}"]) for k, v in got.items()}
            worst = max(worst, *ds.values())
            same = steps.tolist() == case["default_exit_steps"]
            check(
                all(v <= TOL for v in ds.values()) and same,
                f"{label} {name}: " + ", ".join(f"{k} {v:.1e}" for k, v in ds.items()) + f"; default exit steps match {same}",
            )
        elif kind == "early_exit_forward":
            hs, g, lg = run(prompts[case["prompt"]])
            steps = exit_steps(g, case["exit_threshold"])
            out = lg[steps, torch.arange(lg.shape[1])]
            dl = maxdiff(out, ref[name + ".logits"])
            worst = max(worst, dl)
            same = steps.tolist() == case["exit_steps"]
            check(dl <= TOL and same, f"{label} {name}: logits {dl:.1e}; exit steps match {same}")
        elif kind == "fewer_loops":
            n = case["total_ut_steps"]
            hs, g, lg = run(prompts[case["prompt"]], n)
            steps = exit_steps(g, q_default)
            out = lg[steps, torch.arange(lg.shape[1])]
            dl = maxdiff(out, ref[name + ".logits"])
            dp = maxdiff(exit_distribution(g), ref[name + ".exit_pdf"])
            worst = max(worst, dl, dp)
            same = steps.tolist() == case["default_exit_steps"]
            check(dl <= TOL and dp <= TOL and same, f"{label} {name}: logits {dl:.1e}, exit_pdf {dp:.1e}; exit steps match {same}")
        elif kind in ("greedy_decode", "early_exit_decode"):
            n = case.get("total_ut_steps", T)
            q = case.get("exit_threshold", q_default)
            ids = list(prompts[case["prompt"]])
            rows, toks, used, gates = [], [], [], []
            for _ in case["new_tokens"]:
                hs, g, _ = run(ids, n)
                st = exit_steps(g[:, -1:], q)[0].item()
                logits = model.logits(hs[st, -1])
                rows.append(logits)
                gates.append(g[:, -1])
                used.append(st)
                toks.append(int(logits.argmax()))
                ids.append(case["new_tokens"][len(toks) - 1])  # teacher-forced on the reference tokens
            dl = maxdiff(torch.stack(rows), ref[name + ".logits"])
            dg = maxdiff(torch.stack(gates), ref[name + ".gate_logits"]) if name + ".gate_logits" in ref else 0.0
            worst = max(worst, dl, dg)
            same_tok = toks == case["new_tokens"]
            same_steps = used == case.get("exit_steps", used)
            check(
                dl <= TOL and dg <= TOL and same_tok and same_steps,
                f"{label} {name} (uncached recompute): logits {dl:.1e}, gate_logits {dg:.1e}; tokens match {same_tok}; exit steps match {same_steps}",
            )
        else:
            check(False, f"{label} {name}: unknown case kind {kind}")
    print(f"{label}: worst max |diff| {worst:.2e}")


def tensor_table(hf_dir: str) -> dict[str, tuple[list[int], str]]:
    idx = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for fn in files:
        with safe_open(os.path.join(hf_dir, fn), "pt") as g:
            for k in g.keys():
                sl = g.get_slice(k)
                out[k] = (sl.get_shape(), sl.get_dtype())
    return out


def check_layout(hf_dir: str) -> None:
    """A trained checkpoint against the single-file fixture layout (tiny-ouro/gqa)."""
    fx = os.path.join(FIXTURE, "gqa")
    files = sorted(os.listdir(hf_dir))
    want = [f for f in sorted(os.listdir(fx)) if not f.startswith("reference")]
    check(files == want, f"files exactly {want} (got {files})")

    with open(os.path.join(fx, "config.json")) as f:
        fcfg = json.load(f)
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    check(sorted(fcfg) == sorted(cfg), "config.json has exactly the fixture's keys")
    bad = [k for k in fcfg if k in cfg and type(fcfg[k]) is not type(cfg[k])]
    check(not bad, f"config.json value types equal the fixture's {bad}")
    same = {k: cfg[k] for k in ("model_type", "architectures", "auto_map", "hidden_act", "tie_word_embeddings", "torch_dtype", "rope_scaling", "use_sliding_window")}
    check(all(fcfg[k] == v for k, v in same.items()), f"config.json fixed values equal the fixture's {sorted(same)}")
    check(len(cfg["layer_types"]) == cfg["num_hidden_layers"], "layer_types has one entry per layer")
    check(0.0 < cfg["early_exit_threshold"] <= 1.0, f"early_exit_threshold {cfg['early_exit_threshold']}")

    with safe_open(os.path.join(hf_dir, "model.safetensors"), "pt") as g:
        check(g.metadata() == {"format": "pt"}, "model.safetensors metadata {'format': 'pt'} (as the fixture's gqa/)")
    tt = tensor_table(hf_dir)
    ftt = tensor_table(fx)

    def pattern(name: str) -> str:
        return ".".join("N" if p.isdigit() else p for p in name.split("."))

    check({pattern(k) for k in ftt} == {pattern(k) for k in tt}, "tensor name patterns equal the fixture's")
    check(all(dt == "BF16" for _, dt in tt.values()), "all tensors bf16")
    h, H, K, d = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    Fi, V, L = cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    expect = {
        "model.embed_tokens.weight": [V, h],
        "lm_head.weight": [V, h],
        "model.norm.weight": [h],
        "model.early_exit_gate.weight": [1, h],
        "model.early_exit_gate.bias": [1],
    }
    for i in range(L):
        b = f"model.layers.{i}."
        expect[b + "self_attn.q_proj.weight"] = [H * d, h]
        expect[b + "self_attn.k_proj.weight"] = [K * d, h]
        expect[b + "self_attn.v_proj.weight"] = [K * d, h]
        expect[b + "self_attn.o_proj.weight"] = [h, H * d]
        expect[b + "mlp.gate_proj.weight"] = [Fi, h]
        expect[b + "mlp.up_proj.weight"] = [Fi, h]
        expect[b + "mlp.down_proj.weight"] = [h, Fi]
        for n in ("input_layernorm", "input_layernorm_2", "post_attention_layernorm", "post_attention_layernorm_2"):
            expect[b + n + ".weight"] = [h]
    check(set(expect) == set(tt), "tensor names equal those implied by config.json")
    bad = [k for k in expect if k in tt and list(tt[k][0]) != expect[k]]
    check(not bad, f"tensor shapes as implied by config.json {bad}")

    # Tokenizer files.
    with open(os.path.join(fx, "tokenizer.json")) as f:
        ftok = json.load(f)
    with open(os.path.join(hf_dir, "tokenizer.json")) as f:
        tok = json.load(f)
    check(sorted(ftok) == sorted(tok), "tokenizer.json top-level keys")
    for k in ("pre_tokenizer", "post_processor", "decoder", "normalizer"):
        check(ftok[k] == tok[k], f"tokenizer.json {k} identical to the fixture's")
    check(sorted(ftok["model"]) == sorted(tok["model"]) and tok["model"]["type"] == "BPE", "tokenizer model BPE, same fields")
    n_tok = len(set(tok["model"]["vocab"].values()) | {a["id"] for a in tok["added_tokens"]})
    check(n_tok == V, f"vocab size {n_tok} == config vocab_size {V}")
    check(ftok["added_tokens"] == tok["added_tokens"], "added_tokens identical to the fixture's (ids 0..4)")
    specials = {a["content"]: a["id"] for a in tok["added_tokens"]}
    check(specials["<|endoftext|>"] == cfg["bos_token_id"] == cfg["eos_token_id"] == 0, "bos = eos = <|endoftext|> = 0")

    for fn in ("tokenizer_config.json", "special_tokens_map.json"):
        with open(os.path.join(fx, fn)) as f:
            a = json.load(f)
        with open(os.path.join(hf_dir, fn)) as f:
            b = json.load(f)
        check(sorted(a) == sorted(b), f"{fn} keys equal the fixture's")
        if fn == "special_tokens_map.json":
            check(a == b, f"{fn} identical to the fixture's")
    with open(os.path.join(hf_dir, "tokenizer_config.json")) as f:
        tc = json.load(f)
    with open(os.path.join(fx, "tokenizer_config.json")) as f:
        ftc = json.load(f)
    check(tc["chat_template"] == ftc["chat_template"], "chat template identical to the fixture's (ChatML)")
    check(tc["added_tokens_decoder"] == ftc["added_tokens_decoder"], "added_tokens_decoder identical")
    with open(os.path.join(hf_dir, "vocab.json")) as f:
        vj = json.load(f)
    check(vj == tok["model"]["vocab"], "vocab.json equals tokenizer.json's vocabulary")
    with open(os.path.join(hf_dir, "merges.txt")) as f:
        mlines = [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#version")]
    tm = [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]]
    check(mlines == tm, "merges.txt equals tokenizer.json's merges")

    # The checkpoint loads; the tokenizer renders and round-trips a chat prompt.
    model = load_hf(hf_dir)
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nBall: C. Swaps: AC DE<|im_end|>\n<|im_start|>assistant\n"
    enc = t.encode(text)
    check(t.decode(enc.ids, skip_special_tokens=False) == text, f"tokenizer round-trips a chat prompt ({len(enc.ids)} tokens)")
    check(max(enc.ids) < model.cfg.vocab_size, "token ids within the vocabulary")


def main() -> None:
    torch.set_num_threads(1)
    check_fixture(FIXTURE)
    check_fixture(os.path.join(FIXTURE, "gqa"))
    for d in sys.argv[1:]:
        check_layout(d)
    print(f"\n{n_checks - len(failures)}/{n_checks} checks passed")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
