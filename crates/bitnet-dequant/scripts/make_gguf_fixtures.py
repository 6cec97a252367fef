#!/usr/bin/env python3
"""Writes the GGUF fixtures of bitnet-dequant's tests with llama.cpp's own Python
implementation (the PyPI `gguf` package), so our reader and codecs are checked against
it, not against themselves.

    python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf==0.19.0
    /tmp/gguf-venv/bin/python crates/bitnet-dequant/scripts/make_gguf_fixtures.py

Outputs (in tests/fixtures/, a few tens of KB):
  ternary.gguf   tensors quantized by `gguf.quants.quantize` (TQ1_0, TQ2_0) and float
                 tensors (F32, F16, BF16), plus metadata of every value type
  expected.gguf  for each tensor X of ternary.gguf, F32 tensors `X.input` (what was
                 quantized) and `X.expected` (`gguf.quants.dequantize` of the stored bytes)
"""

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

SEED = 20261126
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def ternary(rng, rows, cols, gamma):
    return (rng.integers(-1, 2, size=(rows, cols)) * gamma).astype(np.float32)


def main():
    rng = np.random.default_rng(SEED)
    inputs = {
        # Ternary weights times a per-tensor gamma: TQ stores d = gamma in every block.
        "blk.0.ffn_up.weight": (ternary(rng, 4, 512, 0.0234375), Q.TQ2_0),
        "blk.0.ffn_down.weight": (ternary(rng, 3, 256, 1.5546875), Q.TQ1_0),
        # Arbitrary floats: the quantizers' rounding (half away from zero) and per-block
        # absmax scales are exercised, and ties are planted.
        "blk.1.attn_q.weight": (rng.normal(0, 0.02, size=(2, 512)).astype(np.float32), Q.TQ2_0),
        "blk.1.attn_k.weight": (rng.normal(0, 0.02, size=(2, 768)).astype(np.float32), Q.TQ1_0),
        "blk.2.ties.weight": (np.tile(np.array([0.5, -0.5, 1.0, 0.25], np.float32), 128).reshape(2, 256), Q.TQ2_0),
        "blk.2.ties_tq1.weight": (np.tile(np.array([-0.5, 0.5, 1.0, 0.0], np.float32), 64).reshape(1, 256), Q.TQ1_0),
        "blk.3.zeros.weight": (np.zeros((1, 256), np.float32), Q.TQ1_0),
        "token_embd.weight": (rng.normal(0, 1, size=(5, 7)).astype(np.float32), Q.F32),
        "output_norm.weight": (rng.normal(1, 0.1, size=(13,)).astype(np.float32), Q.F16),
        "blk.0.attn_norm.weight": (rng.normal(1, 0.1, size=(3, 11)).astype(np.float32), Q.BF16),
    }

    OUT.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(OUT / "ternary.gguf"), "llama")
    writer.add_name("bitnet-dequant test fixture")
    writer.add_uint32("test.u32", 7)
    writer.add_int32("test.i32", -7)
    writer.add_float32("test.f32", 0.25)
    writer.add_bool("test.bool", True)
    writer.add_uint64("test.u64", 1 << 40)
    writer.add_int8("test.i8", -3)
    writer.add_float64("test.f64", 1.0 / 3.0)
    writer.add_array("test.strings", ["a", "bb", "ccc"])
    writer.add_array("test.ints", [1, 2, 3])

    expected = gguf.GGUFWriter(str(OUT / "expected.gguf"), "llama")
    for name, (values, qtype) in inputs.items():
        stored = gguf.quants.quantize(values, qtype)
        writer.add_tensor(name, stored, raw_dtype=qtype)
        back = gguf.quants.dequantize(stored, qtype).astype(np.float32).reshape(values.shape)
        expected.add_tensor(name + ".input", values)
        expected.add_tensor(name + ".expected", back)

    for w in (writer, expected):
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    for path in sorted(OUT.glob("*.gguf")):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
