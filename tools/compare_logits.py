#!/usr/bin/env python3
"""Compares the `logits` of two `raven logits` outputs: max and mean |Δ|, the largest |logit|,
per row, and whether each row's argmax agrees. Standard library only (no numpy).

usage: tools/compare_logits.py A.safetensors B.safetensors [--tol X]   (exit 1 if max |Δ| > X)
"""
import json
import struct
import sys
from array import array


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    info = header["logits"]
    assert info["dtype"] == "F32", info
    a, b = info["data_offsets"]
    vals = array("f")
    vals.frombytes(data[8 + n + a : 8 + n + b])
    if sys.byteorder != "little":
        vals.byteswap()
    return info["shape"], vals


def main():
    args = sys.argv[1:]
    tol = None
    if "--tol" in args:
        i = args.index("--tol")
        tol = float(args[i + 1])
        del args[i : i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    (sa, a), (sb, b) = read(args[0]), read(args[1])
    if sa != sb:
        sys.exit(f"shapes differ: {sa} vs {sb}")
    rows, v = sa
    worst = 0.0
    for r in range(rows):
        ra, rb = a[r * v : (r + 1) * v], b[r * v : (r + 1) * v]
        d = [abs(x - y) for x, y in zip(ra, rb)]
        mx, mean = max(d), sum(d) / v
        big = max(max(abs(x) for x in ra), 1e-30)
        same = max(range(v), key=ra.__getitem__) == max(range(v), key=rb.__getitem__)
        print(
            f"row {r}: max |Δ| {mx:.3e}, mean |Δ| {mean:.3e}, max |logit| {big:.3f} "
            f"(max |Δ| / max |logit| {mx / big:.2e}), argmax {'same' if same else 'DIFFERENT'}"
        )
        worst = max(worst, mx)
    print(f"max |Δ| over {rows} rows × {v}: {worst:.3e}")
    if tol is not None and worst > tol:
        sys.exit(f"max |Δ| {worst:.3e} > {tol}")


main()
