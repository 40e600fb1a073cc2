"""Checks that our PyTorch Huginn matches the official implementation, and that a checkpoint
directory has exactly the layout of the fixture checkpoint (tests/fixtures/tiny-huginn).

    python check_format.py                      # model vs fixture reference outputs only
    python check_format.py ../../models/demo/hf # ... plus the layout of that directory
    python check_format.py --layout-only DIR    # the layout only

Exit status 0 when everything agrees.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from huginn import ExitCriterion, load_hf

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "..", "tests", "fixtures", "tiny-huginn")
TOL = 1e-4

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def check_model_against_reference() -> None:
    model = load_hf(FIXTURE).eval()
    ref = load_file(os.path.join(FIXTURE, "reference.safetensors"))
    with open(os.path.join(FIXTURE, "reference.json")) as f:
        rj = json.load(f)
    V = model.cfg.vocab_size
    for case in rj["cases"]:
        ids = torch.tensor([rj["prompt_token_ids"][case["prompt"]]])
        name = case["name"]
        if case["kind"] == "forward":
            with torch.no_grad():
                logits, lat = model(ids, case["num_steps"], return_latents=True)
            d = (logits[0] - ref[name + ".logits"]).abs().max().item()
            dl = (lat[0] - ref[name + ".latents"]).abs().max().item()
            check(d <= TOL and dl <= TOL, f"{name}: max |dlogits| {d:.2e}, |dlatents| {dl:.2e}")
        elif case["kind"] == "greedy_decode" and case["cache_lookup_strategy"] == "full":
            # one-pass prefill, then each new token through the KV cache
            steps = case["num_steps"]
            with torch.no_grad():
                T = ids.shape[1]
                cache = model.prefill(ids[:, :-1], steps)
                rows = []
                toks = [ids[0, -1].item()] + case["new_tokens"][:-1]
                for t, tok in enumerate(toks):
                    last = None
                    for _, _, s, head in model.step_last(cache, torch.tensor([tok]), T - 1 + t, steps):
                        last = head
                    rows.append(last()[0])
            d = (torch.stack(rows) - ref[name + ".logits"]).abs().max().item()
            check(d <= TOL, f"{name}: max |dlogits| {d:.2e}")
        elif case["kind"] == "adaptive_exit" and case["cache_lookup_strategy"] == "full":
            crit_name, tau = case["criterion"].split(":")
            crit = ExitCriterion(crit_name, float(tau), V)
            cache: dict = {}
            steps_used, rows = [], []
            with torch.no_grad():
                for pos in range(ids.shape[1]):
                    crit.reset(1)
                    logits, n = None, 0
                    head = None
                    for n, s_prev, s, head in model.step_last(cache, ids[:, pos], pos, case["max_steps"]):
                        done, _, logits = crit.check(s_prev, s, head)
                        if done.all():
                            break
                    if logits is None:
                        logits = head()
                    steps_used.append(n)
                    rows.append(logits[0])
            d = (torch.stack(rows) - ref[name + ".logits"]).abs().max().item()
            same = steps_used == case["compute_steps"]
            check(same and d <= TOL, f"{name}: steps match {same}, max |dlogits| {d:.2e}")


def tensor_table(hf_dir: str) -> dict[str, tuple[list[int], str]]:
    with open(os.path.join(hf_dir, "model.safetensors.index.json")) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for fn in files:
        with safe_open(os.path.join(hf_dir, fn), "pt") as g:
            for k in g.keys():
                sl = g.get_slice(k)
                out[k] = (sl.get_shape(), sl.get_dtype())
    return out


def check_layout(hf_dir: str) -> None:
    fx_files = sorted(os.listdir(FIXTURE))
    files = sorted(os.listdir(hf_dir))
    want = [f for f in fx_files if not f.startswith("reference") and not f.startswith("model-")]
    check(all(f in files for f in want), f"files present: {want}")
    shards = [f for f in files if f.startswith("model-") and f.endswith(".safetensors")]
    check(len(shards) >= 2, f"sharded safetensors: {shards}")

    with open(os.path.join(FIXTURE, "config.json")) as f:
        fcfg = json.load(f)
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    check(sorted(fcfg) == sorted(cfg), "config.json has exactly the fixture's keys")
    check(cfg["model_type"] == "huginn_raven", "model_type huginn_raven")
    for k in fcfg:
        if k in cfg and type(fcfg[k]) is not type(cfg[k]):
            check(False, f"config.json key {k}: type {type(cfg[k]).__name__} vs {type(fcfg[k]).__name__}")
    check(sorted(fcfg["init_values"]) == sorted(cfg["init_values"]), "config.json init_values keys")

    with open(os.path.join(hf_dir, "model.safetensors.index.json")) as f:
        idx = json.load(f)
    tt = tensor_table(hf_dir)
    check(set(idx["weight_map"]) == set(tt), "index weight_map lists exactly the tensors in the shards")
    total = sum(int(torch.tensor(s).prod()) * 2 for s, _ in tt.values())
    check(idx["metadata"]["total_size"] == total, f"index total_size {idx['metadata']['total_size']} == {total}")
    with safe_open(os.path.join(hf_dir, shards[0]), "pt") as g:
        check(g.metadata() == {"format": "pt"}, "shard metadata {'format': 'pt'}")

    # Tensor names: same patterns as the fixture, with block counts from our config.
    ftt = tensor_table(FIXTURE)

    def pattern(name: str) -> str:
        parts = name.split(".")
        return ".".join("N" if p.isdigit() else p for p in parts)

    check({pattern(k) for k in ftt} == {pattern(k) for k in tt}, "tensor name patterns equal the fixture's")
    check(all(dt == "BF16" for _, dt in tt.values()), "all tensors bf16")
    h, H, Fi, V = cfg["n_embd"], cfg["n_heads"], cfg["intermediate_size"], cfg["vocab_size"]
    P, C, K = cfg["n_layers_in_prelude"], cfg["n_layers_in_recurrent_block"], cfg["n_layers_in_coda"]
    expect = {
        "transformer.wte.weight": [V, h],
        "transformer.adapter.weight": [h, 2 * h],
        "transformer.ln_f.weight": [h],
        "freqs_cis": [1, cfg["block_size"], 1, h // H // 2, 2],
    }
    for grp, n in (("prelude", P), ("core_block", C), ("coda", K)):
        for i in range(n):
            b = f"transformer.{grp}.{i}."
            expect[b + "attn.Wqkv.weight"] = [3 * h, h]
            expect[b + "attn.proj.weight"] = [h, h]
            expect[b + "attn.qk_bias"] = [2, 1, H, h // H]
            expect[b + "mlp.fc.weight"] = [2 * Fi, h]
            expect[b + "mlp.proj.weight"] = [h, Fi]
            for j in (1, 2, 3, 4):
                expect[b + f"norm_{j}.weight"] = [h]
    check(set(expect) == set(tt), "tensor names equal those implied by config.json")
    bad = [k for k in expect if k in tt and list(tt[k][0]) != expect[k]]
    check(not bad, f"tensor shapes as implied by config.json {bad}")

    # Tokenizer files.
    with open(os.path.join(FIXTURE, "tokenizer.json")) as f:
        ftok = json.load(f)
    with open(os.path.join(hf_dir, "tokenizer.json")) as f:
        tok = json.load(f)
    check(sorted(ftok) == sorted(tok), "tokenizer.json top-level keys")
    for k in ("pre_tokenizer", "post_processor", "decoder", "normalizer"):
        check(ftok[k] == tok[k], f"tokenizer.json {k} identical")
    check(sorted(ftok["model"]) == sorted(tok["model"]) and tok["model"]["type"] == "BPE", "tokenizer model BPE, same fields")
    n_tok = len(tok["model"]["vocab"]) + len(tok["added_tokens"])
    check(n_tok == V, f"vocab size {n_tok} == config vocab_size {V}")
    specials = {a["content"]: a["id"] for a in tok["added_tokens"]}
    for name in ("<|begin_text|>", "<|end_text|>", "<|begin_header|>", "<|end_header|>", "<|end_turn|>", "<|pad|>"):
        check(name in specials, f"special token {name}")
    check(
        all(sorted(a) == sorted(ftok["added_tokens"][0]) for a in tok["added_tokens"]),
        "added_tokens entries have the fixture's fields",
    )
    check(specials.get("<|begin_text|>") == cfg["bos_token_id"], "bos id matches config")
    check(specials.get("<|end_text|>") == cfg["eos_token_id"], "eos id matches config")
    check(specials.get("<|pad|>") == cfg["pad_token_id"], "pad id matches config")

    with open(os.path.join(FIXTURE, "tokenizer_config.json")) as f:
        ftc = json.load(f)
    with open(os.path.join(hf_dir, "tokenizer_config.json")) as f:
        tc = json.load(f)
    check(sorted(ftc) == sorted(tc), "tokenizer_config.json keys")
    check(tc["chat_template"] == ftc["chat_template"], "chat template identical to the fixture's")
    with open(os.path.join(FIXTURE, "generation_config.json")) as f:
        fgc = json.load(f)
    with open(os.path.join(hf_dir, "generation_config.json")) as f:
        gc = json.load(f)
    check(sorted(fgc) == sorted(gc), "generation_config.json keys")
    check(gc["eos_token_id"] == [specials["<|end_text|>"], specials["<|end_turn|>"]], "generation eos ids")

    # The checkpoint loads into our model and the tokenizer round-trips a chat prompt.
    load_hf(hf_dir)
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    text = "<|begin_text|><|begin_header|>user<|end_header|>\n\nhello<|end_turn|>"
    ids = t.encode(text).ids
    check(t.decode(ids, skip_special_tokens=False) == text, "tokenizer round-trips a chat prompt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--layout-only" not in sys.argv:
        check_model_against_reference()
    if args:
        check_layout(args[0])
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")
