#!/usr/bin/env python3
"""Writes the malformed-GGUF corpus of issue #8 to tests/fixtures/malformed/.

Every file starts from one micro Huginn model (h=8, 2 heads, F=16, V=64, one prelude, core and
coda block, f16 weights, about 6 KB) and has exactly one thing wrong, in one of four classes:
header, metadata, tensor-info and model-level. `base.gguf` is the valid control. The files are
written byte by byte with struct.pack (GGUF v3, little-endian, SPEC.md §3) so that defects no
well-behaved writer would produce can be expressed; the README.md beside them is generated too.

Run from the repository root: python3 tools/make_malformed_corpus.py
tools/tests/corpus.rs runs `raven logits` and `raven inspect` on every file.
"""

import os
import random
import struct
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "malformed")

# GGUF metadata value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
# ggml tensor types used here.
T_F32, T_F16, T_Q8_0, T_I32, T_F64 = 0, 1, 8, 26, 28
ALIGN = 32

# The micro model.
H, HEADS, FF, VOCAB, CTX = 8, 2, 16, 64, 64
P, C, K = 1, 1, 1


def gstr(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack("<Q", len(b)) + b


def scalar(ty, v):
    fmt = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f",
           BOOL: "B", U64: "Q", I64: "q", F64: "d"}[ty]
    return struct.pack("<" + fmt, v)


def arr(elem_ty, count, body):
    return struct.pack("<IQ", elem_ty, count) + body


class KV:
    """One metadata entry: raw key bytes, type id and raw value bytes."""

    def __init__(self, key, ty, payload):
        self.key = key.encode() if isinstance(key, str) else key
        self.ty = ty
        self.payload = payload

    def bytes(self):
        return gstr(self.key) + struct.pack("<I", self.ty) + self.payload


class Tensor:
    """One tensor: name, dims (ggml order), type, data; offset/n_dims overridable."""

    def __init__(self, name, dims, ty, data):
        self.name = name.encode() if isinstance(name, str) else name
        self.dims = list(dims)
        self.n_dims = None
        self.ty = ty
        self.data = data
        self.offset = None

    def info(self, offset):
        n = len(self.dims) if self.n_dims is None else self.n_dims
        b = gstr(self.name) + struct.pack("<I", n)
        b += b"".join(struct.pack("<Q", d & 0xFFFFFFFFFFFFFFFF) for d in self.dims)
        return b + struct.pack("<IQ", self.ty, self.offset if self.offset is not None else offset)


class File:
    def __init__(self):
        self.magic = b"GGUF"
        self.version = 3
        self.n_tensors = None
        self.n_kv = None
        self.kvs = []
        self.tensors = []

    # -- metadata helpers
    def find(self, key):
        for i, kv in enumerate(self.kvs):
            if kv.key == key.encode():
                return i
        raise KeyError(key)

    def set(self, key, ty, payload):
        try:
            self.kvs[self.find(key)] = KV(key, ty, payload)
        except KeyError:
            self.kvs.append(KV(key, ty, payload))
        return self

    def remove(self, key):
        del self.kvs[self.find(key)]
        return self

    def tensor(self, name):
        for t in self.tensors:
            if t.name == name.encode():
                return t
        raise KeyError(name)

    def remove_tensor(self, name):
        self.tensors.remove(self.tensor(name))
        return self

    # -- layout
    def offsets(self):
        offs, pos = [], 0
        for t in self.tensors:
            offs.append(pos)
            pos += len(t.data)
            pos = (pos + ALIGN - 1) // ALIGN * ALIGN
        return offs

    def header(self):
        b = self.magic + struct.pack("<I", self.version)
        b += struct.pack("<Q", len(self.tensors) if self.n_tensors is None else self.n_tensors)
        b += struct.pack("<Q", len(self.kvs) if self.n_kv is None else self.n_kv)
        for kv in self.kvs:
            b += kv.bytes()
        for t, off in zip(self.tensors, self.offsets()):
            b += t.info(off)
        return b

    def bytes(self):
        b = bytearray(self.header())
        b += b"\0" * (-len(b) % ALIGN)
        data_start = len(b)
        for t, off in zip(self.tensors, self.offsets()):
            b += b"\0" * (data_start + off - len(b))
            b += t.data
        b += b"\0" * (-len(b) % ALIGN)
        return bytes(b)


def f32s(xs):
    return b"".join(struct.pack("<f", x) for x in xs)


def f16s(xs):
    return b"".join(struct.pack("<e", x) for x in xs)


def base():
    """The valid micro model."""
    rng = random.Random(8)
    f = File()
    s = lambda k, ty, v: f.kvs.append(KV(k, ty, scalar(ty, v)))
    f.kvs.append(KV("general.architecture", STR, gstr("huginn")))
    f.kvs.append(KV("general.name", STR, gstr("micro-huginn")))
    s("general.file_type", U32, 1)
    s("general.quantization_version", U32, 2)
    s("huginn.context_length", U32, CTX)
    s("huginn.embedding_length", U32, H)
    s("huginn.feed_forward_length", U32, FF)
    s("huginn.attention.head_count", U32, HEADS)
    s("huginn.attention.head_count_kv", U32, HEADS)
    s("huginn.attention.layer_norm_rms_epsilon", F32, 1e-6)
    s("huginn.rope.freq_base", F32, 50000.0)
    s("huginn.block_count", U32, P + C + K)
    s("huginn.prelude_block_count", U32, P)
    s("huginn.core_block_count", U32, C)
    s("huginn.coda_block_count", U32, K)
    s("huginn.mean_recurrence", U32, 2)
    s("huginn.attention.qk_bias", BOOL, 1)
    s("huginn.embedding_scale", F32, H ** 0.5)
    s("huginn.state_init_std", F32, (2 / (5 * H)) ** 0.5)
    s("tokenizer.ggml.bos_token_id", U32, 1)
    s("tokenizer.ggml.eos_token_id", U32, 2)

    def mat(name, cols, rows):
        f.tensors.append(Tensor(name, [cols, rows], T_F16, f16s(rng.gauss(0, 0.3) for _ in range(cols * rows))))

    def vec(name, std):
        xs = [1.0 if std == 0 else rng.gauss(0, std) for _ in range(H)]
        f.tensors.append(Tensor(name, [H], T_F32, f32s(xs)))

    mat("token_embd.weight", H, VOCAB)
    vec("output_norm.weight", 0)
    mat("adapter.weight", 2 * H, H)
    for b in range(P + C + K):
        n = lambda x: f"blk.{b}.{x}"
        vec(n("attn_norm.weight"), 0)
        mat(n("attn_qkv.weight"), H, 3 * H)
        vec(n("attn_q.bias"), 0.1)
        vec(n("attn_k.bias"), 0.1)
        mat(n("attn_output.weight"), H, H)
        vec(n("attn_post_norm.weight"), 0)
        vec(n("ffn_norm.weight"), 0)
        mat(n("ffn_gate.weight"), H, FF)
        mat(n("ffn_up.weight"), H, FF)
        mat(n("ffn_down.weight"), FF, H)
        vec(n("ffn_post_norm.weight"), 0)
    return f


CORPUS = []  # (file name, class, what is wrong, bytes)


def add(name, cls, what, data):
    if isinstance(data, File):
        data = data.bytes()
    CORPUS.append((f"{cls}-{name}.gguf", cls, what, data))


def header_cases():
    b = base().bytes()
    add("empty", "header", "an empty file (0 bytes)", b"")
    add("magic-only", "header", "only the 4-byte magic, then end of file", b[:4])
    add("truncated-13-bytes", "header", "cut 13 bytes in, inside the tensor count", b[:13])
    f = base(); f.magic = b"GGML"
    add("bad-magic", "header", "magic GGML instead of GGUF", f)
    f = base(); f.version = 1
    add("version-1", "header", "GGUF version 1 (32-bit counts, no longer supported)", f)
    f = base(); f.version = 99
    add("version-99", "header", "GGUF version 99", f)
    f = base(); f.version = 0x03000000
    add("big-endian", "header", "version 3 written big-endian (a big-endian GGUF)", f)
    f = base(); f.n_tensors = 1 << 63
    add("huge-tensor-count", "header", "tensor count 2^63", f)
    f = base(); f.n_tensors = len(f.tensors) + 1
    add("tensor-count-plus-one", "header", "tensor count one more than the table holds", f)
    f = base(); f.n_kv = 1 << 40
    add("huge-kv-count", "header", "key-value count 2^40", f)
    f = base(); f.n_kv = len(f.kvs) + 1
    add("kv-count-plus-one", "header", "key-value count one more than written (the tensor table is read as metadata)", f)


def meta_cases():
    def with_kv(key, ty, payload):
        f = base(); f.kvs.append(KV(key, ty, payload)); return f

    f = base(); f.kvs[1] = KV("general.name", STR, struct.pack("<Q", 1 << 33) + b"abc")
    add("huge-string-length", "metadata", "general.name claims a string of 2^33 bytes", f)
    f = base(); k = f.kvs[1]
    f.kvs[1] = KV(b"general.name", STR, k.payload)
    raw = bytearray(f.kvs[1].bytes()); raw[:8] = struct.pack("<Q", (1 << 64) - 4)
    f.kvs[1].bytes = lambda raw=bytes(raw): raw
    add("huge-key-length", "metadata", "the second key claims a length of 2^64 - 4 bytes", f)
    add("non-utf8-key", "metadata", "a key containing the byte 0xFF", with_kv(b"x.\xffkey", U8, b"\x01"))
    f = base(); f.kvs[1] = KV("general.name", STR, gstr(b"a\xc3\x28"))
    add("non-utf8-string-value", "metadata", "general.name is not UTF-8 (0xC3 0x28)", f)
    add("empty-key", "metadata", "a key of length 0", with_kv("", U8, b"\x01"))
    add("duplicate-key", "metadata", "huginn.block_count appears twice",
        with_kv("huginn.block_count", U32, scalar(U32, 9)))
    add("unknown-value-type-13", "metadata", "value type id 13", with_kv("x.weird", 13, b"\0" * 8))
    add("unknown-array-element-type", "metadata", "array of element type id 2^32 - 1",
        with_kv("x.arr", ARR, arr(0xFFFFFFFF, 1, b"\0" * 8)))
    add("huge-array-length", "metadata", "an f32 array claiming 2^61 elements",
        with_kv("x.scores", ARR, arr(F32, 1 << 61, b"\0" * 8)))
    add("token-array-millions", "metadata", "tokenizer.ggml.tokens claims 10^6 strings in a 6 KB file",
        with_kv("tokenizer.ggml.tokens", ARR, arr(STR, 1_000_000, gstr("a"))))
    body = arr(U8, 1, b"\x2a")
    for _ in range(4):
        body = arr(ARR, 1, body)
    add("nested-arrays-too-deep", "metadata", "arrays nested five deep", with_kv("x.deep", ARR, body))
    add("invalid-bool", "metadata", "a bool stored as the byte 2", with_kv("x.flag", BOOL, b"\x02"))
    add("alignment-0", "metadata", "general.alignment = 0", with_kv("general.alignment", U32, scalar(U32, 0)))
    add("alignment-48", "metadata", "general.alignment = 48, not a power of two",
        with_kv("general.alignment", U32, scalar(U32, 48)))
    add("alignment-u64", "metadata", "general.alignment stored as u64 (must be u32)",
        with_kv("general.alignment", U64, scalar(U64, 32)))
    f = base()
    cut = 24 + sum(len(kv.bytes()) for kv in f.kvs[:5]) - 2
    add("truncated-in-value", "metadata", "cut two bytes into the u32 value of huginn.context_length",
        f.bytes()[:cut])
    cut = 24 + sum(len(kv.bytes()) for kv in f.kvs[:3]) + 8 + 5
    add("truncated-in-key", "metadata", "cut five bytes into the fourth key", f.bytes()[:cut])
    f = base(); f.kvs[1] = KV("general.name", STR, struct.pack("<Q", 100) + b"short")
    add("string-past-end", "metadata", "general.name claims 100 bytes; the rest of the file is parsed as its text",
        f.header()[: 24 + len(f.kvs[0].bytes()) + 8 + 8 + 60])


def tensor_cases():
    f = base(); f.tensors[1].dims = [H, 1, 1, 1, 1]
    add("five-dims", "tensor-info", "output_norm.weight has 5 dimensions", f)
    f = base(); f.tensors[1].n_dims = 0xFFFFFFFF
    add("huge-dim-count", "tensor-info", "output_norm.weight claims 2^32 - 1 dimensions", f)
    f = base(); f.tensors[2].dims[1] = 0
    add("zero-dim", "tensor-info", "adapter.weight has a dimension of 0", f)
    f = base(); f.tensors[2].dims[0] = -16
    add("negative-dim", "tensor-info", "adapter.weight has dimension -16 (as i64)", f)
    for ty in (4, 5, 31):
        f = base(); f.tensors[2].ty = ty
        add(f"type-{ty}", "tensor-info", f"adapter.weight has tensor type id {ty} (removed or unknown)", f)
    f = base(); t = f.tensor("blk.0.attn_output.weight"); t.ty = T_Q8_0; t.data = b"\0" * 34 * H
    add("row-not-whole-blocks", "tensor-info", "blk.0.attn_output.weight is Q8_0 with rows of 8 (blocks are 32)", f)
    f = base(); offs = f.offsets(); f.tensors[3].offset = offs[3] + 4
    add("offset-misaligned", "tensor-info", "blk.0.attn_norm.weight at an offset 4 past a 32-byte boundary", f)
    f = base(); f.tensors[3].offset = 1 << 20
    add("offset-past-end", "tensor-info", "blk.0.attn_norm.weight at offset 1 MiB, past the end of the file", f)
    f = base(); f.tensors[3].offset = (1 << 64) - 32
    add("offset-overflow", "tensor-info", "blk.0.attn_norm.weight at offset 2^64 - 32 (offset + size overflows)", f)
    f = base(); offs = f.offsets(); f.tensors[3].offset = offs[2]
    add("overlapping", "tensor-info", "blk.0.attn_norm.weight overlaps adapter.weight", f)
    f = base(); f.tensors[4].name = f.tensors[3].name
    add("duplicate-name", "tensor-info", "two tensors named blk.0.attn_norm.weight", f)
    f = base(); f.tensors[4].name = b""
    add("empty-name", "tensor-info", "a tensor with an empty name", f)
    f = base(); f.tensors[4].name = b"blk.0.\x80"
    add("non-utf8-name", "tensor-info", "a tensor name containing the byte 0x80", f)
    f = base(); f.tensors[2].dims = [1 << 32, 1 << 32, 1 << 32]
    add("element-count-overflow", "tensor-info", "adapter.weight of 2^96 elements", f)
    f = base(); t = f.tensors[2]; t.dims = [1 << 31, 1 << 30]; t.ty = T_F64
    add("byte-count-overflow", "tensor-info", "adapter.weight of 2^61 f64 elements (2^64 bytes)", f)
    b = base().bytes()
    add("data-truncated", "tensor-info", "the file cut 132 bytes before the end of the tensor data", b[:-132])


def model_cases():
    def m(name, what, fn):
        f = base(); fn(f); add(name, "model", what, f)

    def u32(key, v):
        return lambda f: f.set(key, U32, scalar(U32, v))

    m("arch-llama", "general.architecture = \"llama\"", lambda f: f.set("general.architecture", STR, gstr("llama")))
    m("arch-missing", "no general.architecture", lambda f: f.remove("general.architecture"))
    for k in ("context_length", "attention.head_count", "attention.layer_norm_rms_epsilon"):
        m(f"missing-{k.replace('.', '-').replace('_', '-')}", f"no huginn.{k}", lambda f, k=k: f.remove(f"huginn.{k}"))
    m("embedding-length-string", "huginn.embedding_length stored as the string \"8\"",
      lambda f: f.set("huginn.embedding_length", STR, gstr("8")))
    m("block-count-inconsistent", "huginn.block_count = 4, prelude + core + coda = 3", u32("huginn.block_count", 4))
    m("head-count-not-dividing-width", "huginn.attention.head_count = 3 (and _kv), width 8",
      lambda f: (u32("huginn.attention.head_count", 3)(f), u32("huginn.attention.head_count_kv", 3)(f)))
    m("odd-head-dim", "huginn.attention.head_count = 8: heads of width 1, RoPE needs pairs",
      lambda f: (u32("huginn.attention.head_count", 8)(f), u32("huginn.attention.head_count_kv", 8)(f)))
    m("head-count-zero", "huginn.attention.head_count = 0 (no head_count_kv)",
      lambda f: (u32("huginn.attention.head_count", 0)(f), f.remove("huginn.attention.head_count_kv")))
    m("head-count-kv-differs", "huginn.attention.head_count_kv = 1 (grouped-query attention)",
      u32("huginn.attention.head_count_kv", 1))
    m("core-blocks-zero", "huginn.core_block_count = 0",
      lambda f: (u32("huginn.core_block_count", 0)(f), u32("huginn.block_count", 2)(f)))
    m("coda-blocks-beyond-tensors", "huginn.coda_block_count = 2 (block_count 4) but no blk.3.* tensors",
      lambda f: (u32("huginn.coda_block_count", 2)(f), u32("huginn.block_count", 4)(f)))
    m("missing-tensor", "no blk.1.ffn_up.weight", lambda f: f.remove_tensor("blk.1.ffn_up.weight"))
    m("missing-embedding", "no token_embd.weight", lambda f: f.remove_tensor("token_embd.weight"))
    m("missing-qk-bias", "huginn.attention.qk_bias is true but blk.2.attn_k.bias is missing",
      lambda f: f.remove_tensor("blk.2.attn_k.bias"))

    def reshape(name, dims, ty=T_F16):
        def go(f):
            t = f.tensor(name); n = 1
            for d in dims:
                n *= d
            t.dims = dims; t.ty = ty
            t.data = b"\0" * (n * {T_F32: 4, T_F16: 2, T_I32: 4, T_F64: 8}[ty])
        return go

    m("wrong-shape-qkv", "blk.0.attn_qkv.weight is [8, 16] (ggml order), should be [8, 24]",
      reshape("blk.0.attn_qkv.weight", [H, 2 * H]))
    m("norm-wrong-length", "blk.0.ffn_norm.weight has 4 elements, width is 8",
      reshape("blk.0.ffn_norm.weight", [4], T_F32))
    m("untied-head-wrong-shape", "an output.weight of [8, 32] where the vocabulary is 64",
      lambda f: f.tensors.append(Tensor("output.weight", [H, 32], T_F16, b"\0" * (H * 32 * 2))))
    m("width-disagrees-with-tensors", "huginn.embedding_length = 16 (heads 2), tensors are 8 wide",
      u32("huginn.embedding_length", 16))
    m("weight-type-i32", "token_embd.weight stored as i32", reshape("token_embd.weight", [H, VOCAB], T_I32))
    m("weight-type-f64", "blk.0.ffn_gate.weight stored as f64", reshape("blk.0.ffn_gate.weight", [H, FF], T_F64))
    m("norm-type-i32", "output_norm.weight stored as i32", reshape("output_norm.weight", [H], T_I32))
    m("bos-out-of-range", "tokenizer.ggml.bos_token_id = 64 (vocabulary 0..64)", u32("tokenizer.ggml.bos_token_id", 64))
    m("eos-out-of-range", "tokenizer.ggml.eos_token_id = 2^32 - 1", u32("tokenizer.ggml.eos_token_id", 0xFFFFFFFF))
    m("bos-negative", "tokenizer.ggml.bos_token_id = -1 (i32)",
      lambda f: f.set("tokenizer.ggml.bos_token_id", I32, scalar(I32, -1)))
    m("eos-list-out-of-range", "huginn.eos_token_ids = [2, 5000]",
      lambda f: f.set("huginn.eos_token_ids", ARR, arr(U32, 2, scalar(U32, 2) + scalar(U32, 5000))))
    m("context-length-2-40", "huginn.context_length = 2^40 (u64)",
      lambda f: f.set("huginn.context_length", U64, scalar(U64, 1 << 40)))
    m("mean-recurrence-2-30", "huginn.mean_recurrence = 2^30", u32("huginn.mean_recurrence", 1 << 30))

    def huge_vocab(f):
        t = f.tensor("token_embd.weight"); t.dims = [H, 4_000_000]
    m("vocab-4m-rows", "token_embd.weight claims 4,000,000 rows (64 MB) in a 6 KB file", huge_vocab)
    m("eps-nan", "huginn.attention.layer_norm_rms_epsilon = NaN",
      lambda f: f.set("huginn.attention.layer_norm_rms_epsilon", F32, scalar(F32, float("nan"))))
    m("eps-inf", "huginn.attention.layer_norm_rms_epsilon = +inf",
      lambda f: f.set("huginn.attention.layer_norm_rms_epsilon", F32, scalar(F32, float("inf"))))
    m("rope-base-negative", "huginn.rope.freq_base = -1", lambda f: f.set("huginn.rope.freq_base", F32, scalar(F32, -1.0)))


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        if name.endswith(".gguf"):
            os.remove(os.path.join(OUT, name))
    with open(os.path.join(OUT, "base.gguf"), "wb") as fh:
        fh.write(base().bytes())
    header_cases(); meta_cases(); tensor_cases(); model_cases()
    names = [c[0] for c in CORPUS]
    assert len(set(names)) == len(names), "duplicate file names"
    for name, _, _, data in CORPUS:
        with open(os.path.join(OUT, name), "wb") as fh:
            fh.write(data)
    classes = {}
    for _, cls, _, _ in CORPUS:
        classes[cls] = classes.get(cls, 0) + 1
    lines = [
        "# Malformed GGUF corpus (issue #8)",
        "",
        "Generated by `tools/make_malformed_corpus.py` (run it from the repository root to rebuild;",
        "do not edit the files by hand). `base.gguf` is a valid micro Huginn model (h=8, 2 heads, F=16,",
        "V=64, one prelude, core and coda block, f16 weights): the control case, which must load and run.",
        "Every other file is `base.gguf` with one thing wrong. `tools/tests/corpus.rs` runs",
        "`raven logits` and `raven inspect` on each: exit code 1, a message starting `error:` that names",
        "the file, no panic, no output file.",
        "",
        "Files per class: " + ", ".join(f"{k} {v}" for k, v in classes.items()) + f"; {len(CORPUS)} in all.",
        "",
        "| file | class | what is wrong |",
        "|---|---|---|",
    ]
    for name, cls, what, data in CORPUS:
        lines.append(f"| `{name}` | {cls} | {what} ({len(data)} bytes) |")
    with open(os.path.join(OUT, "README.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {len(CORPUS)} malformed files + base.gguf to {os.path.normpath(OUT)}: {classes}")


if __name__ == "__main__":
    sys.exit(main())
