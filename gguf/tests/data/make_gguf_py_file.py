"""Writes a small GGUF with gguf-py's GGUFWriter, for raven-gguf's reader tests.

Usage: python3 make_gguf_py_file.py OUT.gguf [--sidecars]
With --sidecars, each tensor's raw bytes also go to OUT.gguf.<name>.bin.
The committed gguf_py_writer.gguf was made with gguf-py 0.19.0:
    python3 make_gguf_py_file.py gguf_py_writer.gguf
"""

import sys

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as T
from gguf import GGUFWriter
from gguf.quants import quantize

out = sys.argv[1]
w = GGUFWriter(out, "huginn")  # adds general.architecture = "huginn"
w.add_custom_alignment(64)
w.add_name("tiny-huginn")
w.add_uint8("x.u8", 250)
w.add_int8("x.i8", -7)
w.add_uint16("x.u16", 65000)
w.add_int16("x.i16", -32000)
w.add_uint32("huginn.block_count", 8)
w.add_int32("x.i32", -123456)
w.add_float32("huginn.rope.freq_base", 50000.0)
w.add_bool("huginn.attention.qk_bias", True)
w.add_uint64("x.u64", 2**63 + 5)
w.add_int64("x.i64", -(2**40))
w.add_float64("x.f64", 0.1)
w.add_array("tokenizer.ggml.tokens", ["<|begin_text|>", "Ġhello", "wörld"])
w.add_array("tokenizer.ggml.token_type", [3, 1, 1])
w.add_array("tokenizer.ggml.scores", [0.0, -1.5, -2.25])
w.add_key_value("x.u64s", [1, 2**64 - 1], T.ARRAY, sub_type=T.UINT64)
w.add_key_value("x.bools", [True, False], T.ARRAY, sub_type=T.BOOL)

f32 = np.arange(6, dtype=np.float32).reshape(2, 3)  # ggml dims [3, 2]
f16 = (np.arange(40, dtype=np.float32) / 8).astype(np.float16).reshape(5, 8)
i32 = np.array([[-1, 2, 3, 4]], dtype=np.int32)
q80 = quantize(np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64), Q.Q8_0)
bf16 = (np.arange(4, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
tensors = {
    "output_norm.weight": (f32, None),
    "blk.0.ffn_up.weight": (f16, None),
    "ids": (i32, None),
    "token_embd.weight": (q80, Q.Q8_0),
    "adapter.weight": (bf16, Q.BF16),
}
for name, (data, raw) in tensors.items():
    w.add_tensor(name, data, raw_dtype=raw)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

if "--sidecars" in sys.argv:
    for name, (data, _) in tensors.items():
        with open(f"{out}.{name}.bin", "wb") as f:
            f.write(data.tobytes())
