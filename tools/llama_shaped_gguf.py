#!/usr/bin/env python3
"""A llama-architecture GGUF with the layer shapes of a Raven model, for llama.cpp comparisons.

    python3 tools/llama_shaped_gguf.py RAVEN_GGUF OUT_GGUF --layers N [--first K] [--vocab 512]

Copies N consecutive layers' Q4_0/Q8_0 weights (from blk.K) of RAVEN_GGUF (e.g. a `raven synth
--hf` + `raven convert --type q4_0` of Ouro-1.4B or Recurrent-Llama-3.2), splitting the fused
attn_qkv into attn_q / attn_k / attn_v and dropping what llama has not (Ouro's post-norms, the
adapter, the exit gate), with a VOCAB-row embedding and head (the first rows of the model's)
so that llama.cpp's head costs nothing. The weights are random in such files, so the per-layer
time is what is compared (tools/bench_vs_llamacpp.sh).
"""
import argparse

import numpy as np
import gguf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=512)
    a = ap.parse_args()
    r = gguf.GGUFReader(a.src)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()

    def field(key):
        f = r.fields[f"{arch}.{key}"]
        return f.parts[f.data[0]].tolist()[0]

    h = field("embedding_length")
    heads, kv = field("attention.head_count"), field("attention.head_count_kv")
    hd = field("attention.key_length")
    t = {x.name: x for x in r.tensors}
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_context_length(4096)
    w.add_embedding_length(h)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(field("feed_forward_length"))
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(a.vocab)])
    w.add_token_scores([0.0] * a.vocab)
    w.add_token_types([gguf.TokenType.NORMAL] * a.vocab)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def put(name, x, rows=None):
        """Tensor `x` (all rows, or the first `rows`) as it is stored."""
        data = np.asarray(x.data)
        if rows is not None:
            data = data[:rows]
        w.add_tensor(name, data, raw_dtype=x.tensor_type)

    put("token_embd.weight", t["token_embd.weight"], a.vocab)
    put("output_norm.weight", t["output_norm.weight"])
    put("output.weight", t["output.weight"], a.vocab)
    for i in range(a.layers):
        s = f"blk.{a.first + i}."
        d = f"blk.{i}."
        put(d + "attn_norm.weight", t[s + "attn_norm.weight"])
        qkv = np.asarray(t[s + "attn_qkv.weight"].data)
        ty = t[s + "attn_qkv.weight"].tensor_type
        nq, nk = heads * hd, kv * hd
        w.add_tensor(d + "attn_q.weight", qkv[:nq], raw_dtype=ty)
        w.add_tensor(d + "attn_k.weight", qkv[nq:nq + nk], raw_dtype=ty)
        w.add_tensor(d + "attn_v.weight", qkv[nq + nk:nq + 2 * nk], raw_dtype=ty)
        for n in ["attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]:
            put(d + n + ".weight", t[s + n + ".weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out}: {a.layers} llama layers of {arch}'s shapes, vocabulary {a.vocab}")


if __name__ == "__main__":
    main()
