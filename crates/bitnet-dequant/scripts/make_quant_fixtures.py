#!/usr/bin/env python3
"""Writes the fixtures for llama.cpp's common block types (Q4_0 ... Q6_K) with llama.cpp's
own Python implementation (the PyPI `gguf` package), so our decoders are checked against
it bit for bit.

    python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf==0.19.0
    /tmp/gguf-venv/bin/python crates/bitnet-dequant/scripts/make_quant_fixtures.py

Outputs (in tests/fixtures/, about 200 KB):
  quants.gguf           one tensor per type. Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 are written by
                        `gguf.quants.quantize` from random floats (with planted ties and an
                        all-zero block); gguf-py has no quantizer for the K-quants, so those
                        are random bytes with finite random f16 values in the scale slots
                        (any other byte pattern is valid input).
  quants_expected.gguf  for each tensor X of quants.gguf, F32 `X.expected` (what
                        `gguf.quants.dequantize` makes of the stored bytes) and, for the
                        quantized ones, F32 `X.input` (what was quantized)
"""

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

SEED = 20261204
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

# (type, offsets of f16 scale fields inside a block) for the K-quants.
K_QUANTS = {
    Q.Q2_K: [80, 82],
    Q.Q3_K: [108],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
}


def random_k_blocks(rng, qtype, rows, blocks_per_row):
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows * blocks_per_row, type_size), dtype=np.uint8)
    for at in K_QUANTS[qtype]:
        # Finite f16 scales of both signs and several magnitudes, subnormals included.
        scales = (rng.normal(0, 1, size=rows * blocks_per_row) * 10.0 ** rng.integers(-7, 2, size=rows * blocks_per_row))
        data[:, at:at + 2] = scales.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return data.reshape(rows, blocks_per_row * type_size), (rows, blocks_per_row * block_size)


def main():
    rng = np.random.default_rng(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(OUT / "quants.gguf"), "llama")
    writer.add_name("bitnet-dequant quant-type fixture")
    expected = gguf.GGUFWriter(str(OUT / "quants_expected.gguf"), "llama")

    for qtype in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0):
        values = rng.normal(0, 0.05, size=(6, 96)).astype(np.float32)
        values[1, :32] = 0.0  # an all-zero block
        values[2, :32] = np.tile(np.array([0.5, -0.5, 1.0, 0.25, -1.0, 0.75, 0.0, 0.125], np.float32), 4)
        values[3] *= 100.0  # large magnitudes
        name = f"blk.0.{qtype.name.lower()}.weight"
        stored = gguf.quants.quantize(values, qtype)
        writer.add_tensor(name, stored, raw_dtype=qtype)
        back = gguf.quants.dequantize(stored, qtype).astype(np.float32).reshape(values.shape)
        expected.add_tensor(name + ".input", values)
        expected.add_tensor(name + ".expected", back)

    for qtype in K_QUANTS:
        stored, shape = random_k_blocks(rng, qtype, rows=3, blocks_per_row=2)
        name = f"blk.1.{qtype.name.lower()}.weight"
        writer.add_tensor(name, stored, raw_dtype=qtype)
        back = gguf.quants.dequantize(stored, qtype).astype(np.float32).reshape(shape)
        assert np.isfinite(back).all()
        expected.add_tensor(name + ".expected", back)

    for w in (writer, expected):
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    for name in ("quants.gguf", "quants_expected.gguf"):
        path = OUT / name
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
