#!/usr/bin/env python3
"""Writes the fuzz seed corpora under fuzz/seeds/ and the base models of `logits_e2e`.

    python3 fuzz/make_seeds.py --raven <path to the raven binary>

Everything is deterministic. The seeds are committed; re-run this after a format change.

- checkpoint/: [u16 LE header][config.json][safetensors] inputs (see fuzz_targets/checkpoint.rs)
  of tiny Huginn checkpoints (h = 8 or 32), bf16 and f32.
- base/: tiny Huginn GGUF models (h = 32, vocabulary of 8) in q8_0, q4_0 and f32, converted by
  `raven convert` from such a checkpoint; `logits_e2e` embeds them and patches them.
- gguf_reader/: those models whole, the fixture converted to q8_0 and f32 cut after its tensor
  table (plus a little data), gguf/tests/data/gguf_py_writer.gguf and a gguf-py file with every
  metadata type and nested arrays.
- logits_e2e/: a few patch lists (empty, one patch, several).
- tokenizer/, chat_template/: texts, id lists and templates.
"""
import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "tiny-huginn")
SEEDS = os.path.join(HERE, "seeds")

# The tiny byte-level BPE tokenizer of fuzz_targets/checkpoint.rs (TINY_TOKENIZER): 8 ids.
TINY_TOKENIZER = open(os.path.join(HERE, "tiny_tokenizer.json")).read()


def config(h, heads, ff, vocab, prelude, core, coda, qk_bias=True, tied=True):
    return {
        "model_type": "huginn_raven",
        "n_embd": h,
        "n_heads": heads,
        "num_key_value_heads": heads,
        "intermediate_size": ff,
        "vocab_size": vocab,
        "padded_vocab_size": vocab,
        "n_layers_in_prelude": prelude,
        "n_layers_in_recurrent_block": core,
        "n_layers_in_coda": coda,
        "mean_recurrence": 4,
        "qk_bias": qk_bias,
        "tie_embeddings": tied,
        "rope_base": 50000.0,
        "norm_eps": 1e-6,
        "block_size": 16,
        "bos_token_id": 0,
        "eos_token_id": vocab - 1,
    }


def tensors(c, rng):
    h, f, v, heads = c["n_embd"], c["intermediate_size"], c["vocab_size"], c["n_heads"]
    out = {
        "transformer.wte.weight": rng.normal(0, 0.1, (v, h)),
        "transformer.ln_f.weight": 1 + rng.normal(0, 0.05, (h,)),
        "transformer.adapter.weight": rng.normal(0, 0.1, (h, 2 * h)),
    }
    if not c["tie_embeddings"]:
        out["lm_head.weight"] = rng.normal(0, 0.1, (v, h))
    for group, n in (
        ("prelude", c["n_layers_in_prelude"]),
        ("core_block", c["n_layers_in_recurrent_block"]),
        ("coda", c["n_layers_in_coda"]),
    ):
        for i in range(n):
            p = f"transformer.{group}.{i}"
            out[f"{p}.attn.Wqkv.weight"] = rng.normal(0, 0.1, (3 * h, h))
            if c["qk_bias"]:
                out[f"{p}.attn.qk_bias"] = rng.normal(0, 0.1, (2, 1, heads, h // heads))
            out[f"{p}.attn.proj.weight"] = rng.normal(0, 0.1, (h, h))
            out[f"{p}.mlp.fc.weight"] = rng.normal(0, 0.1, (2 * f, h))
            out[f"{p}.mlp.proj.weight"] = rng.normal(0, 0.1, (h, f))
            for k in range(1, 5):
                out[f"{p}.norm_{k}.weight"] = 1 + rng.normal(0, 0.05, (h,))
    return out


def safetensors(ts, dtype):
    header, blobs, off = {}, [], 0
    for name in sorted(ts):
        a = np.asarray(ts[name], dtype=np.float32)
        if dtype == "BF16":
            raw = (a.view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            raw = a.astype("<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    return struct.pack("<Q", len(hj)) + hj + b"".join(blobs)


def checkpoint_input(cfg_text, st, tiny_tokenizer):
    n = len(cfg_text)
    assert n < 0x8000
    return struct.pack("<H", n | (0x8000 if tiny_tokenizer else 0)) + cfg_text + st


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raven", required=True, help="the raven binary (for `raven convert`)")
    a = ap.parse_args()
    rng = np.random.default_rng(8)
    for d in ("checkpoint", "base", "gguf_reader", "logits_e2e", "tokenizer", "chat_template"):
        shutil.rmtree(os.path.join(SEEDS, d), ignore_errors=True)
        os.makedirs(os.path.join(SEEDS, d))

    # checkpoint/
    variants = [
        ("h8_bf16_tiny_tok", config(8, 2, 8, 8, 1, 1, 1), "BF16", True),
        ("h8_f32_untied_tiny_tok", config(8, 2, 8, 8, 1, 1, 1, tied=False), "F32", True),
        ("h8_nobias_fixture_tok", config(8, 2, 8, 1024, 0, 1, 0, qk_bias=False), "BF16", False),
        ("h32_bf16_tiny_tok", config(32, 2, 32, 8, 0, 1, 0), "BF16", True),
    ]
    for name, c, dt, tiny in variants:
        st = safetensors(tensors(c, rng), dt)
        cfg_text = json.dumps(c, indent=1).encode()
        write(os.path.join(SEEDS, "checkpoint", name), checkpoint_input(cfg_text, st, tiny))

    # base/: the logits_e2e models, converted by raven itself.
    c = config(32, 2, 32, 8, 1, 1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        ck = os.path.join(tmp, "ck")
        os.makedirs(ck)
        write(os.path.join(ck, "config.json"), json.dumps(c).encode())
        write(os.path.join(ck, "model.safetensors"), safetensors(tensors(c, rng), "F32"))
        write(os.path.join(ck, "tokenizer.json"), TINY_TOKENIZER.encode())
        for ty in ("q8_0", "q4_0", "f32"):
            out = os.path.join(SEEDS, "base", f"tiny_{ty}.gguf")
            subprocess.run([a.raven, "convert", ck, "-o", out, "--type", ty], check=True,
                           stdout=subprocess.DEVNULL)
        # The fixture, for gguf_reader: cut after the tensor table plus 4 KiB of data.
        for ty in ("q8_0", "f32"):
            out = os.path.join(tmp, f"fixture_{ty}.gguf")
            subprocess.run([a.raven, "convert", FIXTURE, "-o", out, "--type", ty], check=True,
                           stdout=subprocess.DEVNULL)
            import gguf
            r = gguf.GGUFReader(out)
            data = open(out, "rb").read()[: r.data_offset + 4096]
            write(os.path.join(SEEDS, "gguf_reader", f"fixture_{ty}_cut"), data)
            # And only the header and the first metadata entries.
            write(os.path.join(SEEDS, "gguf_reader", f"fixture_{ty}_head"), data[:2048])
    for ty in ("q8_0", "q4_0", "f32"):
        shutil.copy(os.path.join(SEEDS, "base", f"tiny_{ty}.gguf"),
                    os.path.join(SEEDS, "gguf_reader", f"tiny_{ty}"))
    shutil.copy(os.path.join(ROOT, "gguf", "tests", "data", "gguf_py_writer.gguf"),
                os.path.join(SEEDS, "gguf_reader", "gguf_py_writer"))
    every_type_file(os.path.join(SEEDS, "gguf_reader", "every_type"))

    # logits_e2e/: [base selector][flags] then (u32 LE offset, u8 value) patches.
    write(os.path.join(SEEDS, "logits_e2e", "q8_0_plain"), bytes([0, 0]))
    write(os.path.join(SEEDS, "logits_e2e", "q4_0_repack"), bytes([1, 1]))
    write(os.path.join(SEEDS, "logits_e2e", "f32_plain"), bytes([2, 0]))
    write(os.path.join(SEEDS, "logits_e2e", "q8_0_patched"),
          bytes([0, 1]) + struct.pack("<IB", 0x40, 0xFF) + struct.pack("<IB", 0x300, 0x07))

    # tokenizer/: [mode] then text / ids / json.
    write(os.path.join(SEEDS, "tokenizer", "encode"),
          b"\x00Hello <|begin_header|>world<|end_header|> caf\xc3\xa9 \xf0\x9f\xa6\x80 1234")
    ids = struct.pack("<8I", 1014, 72, 101, 300, 1018, 1023, 0xFFFFFFFF, 5000)
    write(os.path.join(SEEDS, "tokenizer", "decode"), b"\x01" + ids)
    write(os.path.join(SEEDS, "tokenizer", "json_tiny"), b"\x02" + TINY_TOKENIZER.encode())
    tok = json.load(open(os.path.join(FIXTURE, "tokenizer.json")))
    tok["model"]["vocab"] = dict(list(tok["model"]["vocab"].items())[:300])
    tok["model"]["merges"] = [m for m in tok["model"]["merges"][:40]
                              if all(p in tok["model"]["vocab"] for p in
                                     (m.split(" ") if isinstance(m, str) else m))]
    write(os.path.join(SEEDS, "tokenizer", "json_fixture_cut"),
          b"\x02" + json.dumps(tok, separators=(",", ":")).encode())

    # chat_template/: the fixture's template, a transformers-style one, broken ones.
    tcfg = json.load(open(os.path.join(FIXTURE, "tokenizer_config.json")))
    templates = {
        "fixture": tcfg["chat_template"],
        "chatml": "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] | trim"
                  " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
                  "{{ '<|im_start|>assistant\n' }}{% endif %}",
        "system_first": "{% if messages[0]['role'] == 'system' %}{% set s = messages[0]['content'] %}"
                        "{% set rest = messages[1:] %}{% else %}{% set rest = messages %}{% endif %}"
                        "{{ bos_token }}{% for m in rest %}{% if m.role == 'user' %}[INST] {{ m.content"
                        ".strip() }} [/INST]{% elif m['role'] == 'assistant' %}{{ m['content'] + "
                        "eos_token }}{% else %}{{ raise_exception('bad role ' ~ m.role) }}{% endif %}"
                        "{% endfor %}",
        "loop_macro": "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ n }}{% endif %}{% endmacro %}"
                      "{{ f(20) }}{% for i in range(100) %}{{ i|string|upper }}{% endfor %}"
                      "{{ messages|tojson }}{{ messages[0].content.split(' ')|join(',') }}",
        "unclosed": "{% for m in messages %}{{ m.content",
    }
    for name, t in templates.items():
        write(os.path.join(SEEDS, "chat_template", name), t.encode())
    return 0


def every_type_file(path):
    """A gguf-py file with every metadata type, nested arrays and tensors of several types."""
    import gguf
    w = gguf.GGUFWriter(path, "huginn")
    w.add_uint8("x.u8", 200)
    w.add_int8("x.i8", -5)
    w.add_uint16("x.u16", 60000)
    w.add_int16("x.i16", -30000)
    w.add_uint32("x.u32", 4000000000)
    w.add_int32("x.i32", -2000000000)
    w.add_float32("x.f32", 1.5)
    w.add_bool("x.bool", True)
    w.add_string("x.str", "héllo")
    w.add_uint64("x.u64", 2**63)
    w.add_int64("x.i64", -(2**62))
    w.add_float64("x.f64", -0.25)
    w.add_array("x.strs", ["a", "bb", ""])
    w.add_array("x.ints", [1, 2, 3])
    w.add_array("x.nested", [[1, 2], [3]])
    w.add_uint32("general.alignment", 64)
    w.add_tensor("t.f32", np.arange(6, dtype=np.float32).reshape(2, 3))
    w.add_tensor("t.f16", np.arange(5, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    sys.exit(main())
