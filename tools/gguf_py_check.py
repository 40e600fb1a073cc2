#!/usr/bin/env python3
"""Cross-checks Raven's GGUF files against gguf-py, the ecosystem's reference GGUF library.

  gguf_py_check.py HF_DIR [--raven PATH]
      Converts HF_DIR with `raven convert` to every --type, reads each file with gguf-py's
      GGUFReader, and checks every tensor against the checkpoint: f32/f16/bf16 values exactly,
      q8_0/q4_0 bytes exactly equal to gguf-py's own quantizer (ggml's reference) applied to the
      checkpoint's values. Also checks the SPEC §3 / docs/gguf.md metadata. Any family: Huginn,
      the retrofitted Llama / OLMo-2, Ouro (the mapping below is written from docs/gguf.md,
      independently of the Rust schema).

  gguf_py_check.py --write HF_DIR OUT.gguf
      Writes HF_DIR as an f32 GGUF with gguf-py's GGUFWriter following SPEC §3, so tests can
      check that Raven runs a file made by another tool.
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType as Q
from gguf import quants


def load_checkpoint(d):
    """All tensors of the shards as f32 (bf16 and f16 widened exactly)."""
    import struct
    tensors = {}
    for f in sorted(os.listdir(d)):
        if not (f.startswith("model") and f.endswith(".safetensors")):
            continue
        raw = open(os.path.join(d, f), "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            buf = raw[base + a:base + b]
            if info["dtype"] == "BF16":
                u = np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16
                arr = u.view(np.float32)
            elif info["dtype"] == "F16":
                arr = np.frombuffer(buf, dtype=np.float16).astype(np.float32)
            else:
                arr = np.frombuffer(buf, dtype=np.float32)
            tensors[name] = arr.reshape(info["shape"])
    return tensors


def family(cfg, ck):
    """The GGUF architecture docs/gguf.md gives a checkpoint."""
    if cfg.get("model_type") == "ouro":
        return "ouro"
    if "rope_theta" in cfg or "rope_scaling" in cfg or cfg.get("init_values", {}).get("embed_scale") == 1.0:
        return "recurrent-olmo2" if any(k.endswith(".attn.q_norm.weight") for k in ck) else "recurrent-llama"
    return "huginn"


def ouro_plan(cfg, ck):
    """docs/gguf.md, Ouro: q, k, v fused into attn_qkv; four norms per layer."""
    out = {"token_embd.weight": ck["model.embed_tokens.weight"], "output_norm.weight": ck["model.norm.weight"]}
    if not cfg.get("tie_word_embeddings", False):
        out["output.weight"] = ck["lm_head.weight"]
    out["exit_gate.weight"] = ck["model.early_exit_gate.weight"].reshape(-1)
    out["exit_gate.bias"] = ck["model.early_exit_gate.bias"].reshape(-1)
    for i in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{i}", f"blk.{i}"
        a = f"{p}.self_attn"
        out[f"{b}.attn_norm.weight"] = ck[f"{p}.input_layernorm.weight"]
        out[f"{b}.attn_qkv.weight"] = np.concatenate([ck[f"{a}.q_proj.weight"], ck[f"{a}.k_proj.weight"], ck[f"{a}.v_proj.weight"]])
        out[f"{b}.attn_output.weight"] = ck[f"{a}.o_proj.weight"]
        out[f"{b}.attn_post_norm.weight"] = ck[f"{p}.input_layernorm_2.weight"]
        out[f"{b}.ffn_norm.weight"] = ck[f"{p}.post_attention_layernorm.weight"]
        out[f"{b}.ffn_gate.weight"] = ck[f"{p}.mlp.gate_proj.weight"]
        out[f"{b}.ffn_up.weight"] = ck[f"{p}.mlp.up_proj.weight"]
        out[f"{b}.ffn_down.weight"] = ck[f"{p}.mlp.down_proj.weight"]
        out[f"{b}.ffn_post_norm.weight"] = ck[f"{p}.post_attention_layernorm_2.weight"]
    return out


def gguf_plan(cfg, ck):
    """GGUF name -> f32 array [rows, cols] (or [n]) following SPEC §3 and docs/gguf.md."""
    arch = family(cfg, ck)
    if arch == "ouro":
        return ouro_plan(cfg, ck)
    h, F = cfg["n_embd"], cfg["intermediate_size"]
    P, C, K = cfg["n_layers_in_prelude"], cfg["n_layers_in_recurrent_block"], cfg["n_layers_in_coda"]
    out = {"token_embd.weight": ck["transformer.wte.weight"], "output_norm.weight": ck["transformer.ln_f.weight"]}
    if not cfg.get("tie_embeddings", True):
        out["output.weight"] = ck["lm_head.weight"]
    out["adapter.weight"] = ck["transformer.adapter.weight"]
    n = 0
    for group, cnt in (("prelude", P), ("core_block", C), ("coda", K)):
        for i in range(cnt):
            p, b = f"transformer.{group}.{i}", f"blk.{n}"
            # Norm names by where they act: Huginn norm_1..4 = attn_norm, attn_post_norm (on the
            # sum), ffn_norm, ffn_post_norm; Llama norm_1, norm_2 = attn_norm, ffn_norm; OLMo-2
            # norm_1, norm_2 = attn_post_norm, ffn_post_norm (on the branch).
            n1, n2 = {"huginn": ("attn_norm", "attn_post_norm"), "recurrent-llama": ("attn_norm", "ffn_norm"),
                      "recurrent-olmo2": ("attn_post_norm", "ffn_post_norm")}[arch]
            out[f"{b}.{n1}.weight"] = ck[f"{p}.norm_1.weight"]
            out[f"{b}.{n2}.weight"] = ck[f"{p}.norm_2.weight"]
            out[f"{b}.attn_qkv.weight"] = ck[f"{p}.attn.Wqkv.weight"]
            if cfg.get("qk_bias"):
                qb = ck[f"{p}.attn.qk_bias"].reshape(2, h)
                out[f"{b}.attn_q.bias"] = qb[0]
                out[f"{b}.attn_k.bias"] = qb[1]
            if arch == "recurrent-olmo2":
                out[f"{b}.attn_q_norm.weight"] = ck[f"{p}.attn.q_norm.weight"]
                out[f"{b}.attn_k_norm.weight"] = ck[f"{p}.attn.k_norm.weight"]
            out[f"{b}.attn_output.weight"] = ck[f"{p}.attn.proj.weight"]
            if arch == "huginn":
                out[f"{b}.ffn_norm.weight"] = ck[f"{p}.norm_3.weight"]
                out[f"{b}.ffn_post_norm.weight"] = ck[f"{p}.norm_4.weight"]
            fc = ck[f"{p}.mlp.fc.weight"]
            out[f"{b}.ffn_gate.weight"] = fc[:F]
            out[f"{b}.ffn_up.weight"] = fc[F:]
            out[f"{b}.ffn_down.weight"] = ck[f"{p}.mlp.proj.weight"]
            n += 1
    return out


def write_with_gguf_py(hf_dir, out_path):
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    ck = load_checkpoint(hf_dir)
    h = cfg["n_embd"]
    w = GGUFWriter(out_path, "huginn")
    w.add_name("tiny-huginn-by-gguf-py")
    w.add_file_type(0)
    w.add_quantization_version(2)
    a = "huginn"
    w.add_uint32(f"{a}.context_length", cfg["block_size"])
    w.add_uint32(f"{a}.embedding_length", h)
    w.add_uint32(f"{a}.feed_forward_length", cfg["intermediate_size"])
    w.add_uint32(f"{a}.attention.head_count", cfg["n_heads"])
    w.add_uint32(f"{a}.attention.head_count_kv", cfg["n_heads"])
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", cfg["norm_eps"])
    w.add_float32(f"{a}.rope.freq_base", cfg["rope_base"])
    P, C, K = cfg["n_layers_in_prelude"], cfg["n_layers_in_recurrent_block"], cfg["n_layers_in_coda"]
    w.add_uint32(f"{a}.block_count", P + C + K)
    w.add_uint32(f"{a}.prelude_block_count", P)
    w.add_uint32(f"{a}.core_block_count", C)
    w.add_uint32(f"{a}.coda_block_count", K)
    w.add_uint32(f"{a}.mean_recurrence", cfg["mean_recurrence"])
    w.add_bool(f"{a}.attention.qk_bias", bool(cfg.get("qk_bias")))
    w.add_float32(f"{a}.embedding_scale", math.sqrt(h))
    w.add_float32(f"{a}.state_init_std", math.sqrt(2 / (5 * h)))
    w.add_string("tokenizer.huggingface.json", open(os.path.join(hf_dir, "tokenizer.json")).read())
    w.add_uint32("tokenizer.ggml.bos_token_id", cfg["bos_token_id"])
    w.add_uint32("tokenizer.ggml.eos_token_id", cfg["eos_token_id"])
    for name, arr in gguf_plan(cfg, ck).items():
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check(hf_dir, raven):
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    ck = load_checkpoint(hf_dir)
    plan = gguf_plan(cfg, ck)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for ty in ("f32", "f16", "bf16", "q8_0", "q4_0"):
            out = os.path.join(tmp, f"m-{ty}.gguf")
            subprocess.run([raven, "convert", hf_dir, "-o", out, "--type", ty], check=True, capture_output=True)
            r = GGUFReader(out)
            fields = {f.name: f for f in r.fields.values()}
            arch = family(cfg, ck)
            assert str(bytes(fields["general.architecture"].parts[-1]), "utf-8") == arch
            u = lambda k: int(fields[f"{arch}.{k}"].parts[-1][0])
            if arch == "ouro":
                assert u("embedding_length") == cfg["hidden_size"]
                assert u("block_count") == cfg["num_hidden_layers"]
                assert u("loop_count") == cfg["total_ut_steps"]
                assert u("attention.head_count_kv") == cfg["num_key_value_heads"]
                assert abs(float(fields["ouro.exit_gate.threshold"].parts[-1][0]) - cfg["early_exit_threshold"]) < 1e-6
            else:
                assert u("embedding_length") == cfg["n_embd"]
                assert u("block_count") == cfg["n_layers_in_prelude"] + cfg["n_layers_in_recurrent_block"] + cfg["n_layers_in_coda"]
                assert u("attention.head_count_kv") == cfg.get("num_key_value_heads", cfg["n_heads"])
            assert "tokenizer.huggingface.json" in fields and "tokenizer.ggml.tokens" in fields
            seen = set()
            for t in r.tensors:
                seen.add(t.name)
                want = plan[t.name].astype(np.float32)
                rows = want.reshape(-1, want.shape[-1]) if want.ndim > 1 else want.reshape(1, -1)
                qt = Q(int(t.tensor_type))
                data = np.asarray(t.data)
                if qt == Q.F32:
                    ok = np.array_equal(data.reshape(rows.shape), rows)
                elif qt == Q.F16:
                    ok = np.array_equal(data.reshape(rows.shape), rows.astype(np.float16))
                else:
                    # BF16 and quantized: the same bytes gguf-py's (ggml's reference) converter
                    # writes (bf16: nearest-even rounding, exact for a bf16 checkpoint).
                    ref = quants.quantize(rows, qt)
                    ok = np.array_equal(data.reshape(ref.shape).view(np.uint8), ref.view(np.uint8))
                if not ok:
                    print(f"MISMATCH {ty} {t.name} ({qt.name})")
                    failures += 1
            missing = set(plan) - seen
            if missing:
                print(f"{ty}: tensors missing: {sorted(missing)}")
                failures += 1
            print(f"{ty}: {len(r.tensors)} tensors read by gguf-py, values {'equal' if not failures else 'DIFFER'}")
    return failures


def main():
    args = sys.argv[1:]
    if args and args[0] == "--write":
        write_with_gguf_py(args[1], args[2])
        return 0
    raven = "target/debug/raven"
    if "--raven" in args:
        raven = args[args.index("--raven") + 1]
        args = [a for a in args if a not in ("--raven", raven)]
    if not os.path.exists(raven):
        subprocess.run(["cargo", "build", "-q", "-p", "raven-cli"], check=True)
    fails = check(args[0], raven)
    print("gguf-py check:", "OK" if fails == 0 else f"{fails} failure(s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
