"""Shared fixtures of the Python suites: paths in the repository, the fixture converted once."""
import json
import os
import pathlib
import struct

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-huginn"
DEMO = ROOT / "models" / "demo" / "demo-q8_0.gguf"
RAVEN_BIN = pathlib.Path(os.environ.get("RAVEN_BIN", ROOT / "target" / "release" / "raven"))


def read_safetensors(path):
    """{name: (shape, list of floats or ints)} of a safetensors file (standard library only)."""
    from array import array

    data = pathlib.Path(path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        code = {"F32": "f", "I32": "i"}[info["dtype"]]
        vals = array(code)
        vals.frombytes(data[8 + n + a : 8 + n + b])
        out[name] = (info["shape"], vals)
    return out


@pytest.fixture(scope="session")
def reference():
    j = json.loads((FIXTURE / "reference.json").read_text())
    return j, read_safetensors(FIXTURE / "reference.safetensors")


@pytest.fixture(scope="session")
def tiny_f32(tmp_path_factory):
    import raven

    out = tmp_path_factory.mktemp("models") / "tiny-f32.gguf"
    raven.convert(str(FIXTURE), str(out), "f32")
    return out
