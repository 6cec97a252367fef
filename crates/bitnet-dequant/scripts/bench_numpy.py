#!/usr/bin/env python3
"""The numpy side of `examples/bench_dequant.rs`: times the PyPI `gguf` package's
dequantization (TQ1_0, TQ2_0) and numpy transcriptions of transformers'
`unpack_weights` (HF packed) and bitnet.cpp's I2_S layout, on the bytes the Rust
benchmark wrote. Prints the median seconds per format as JSON.

usage: bench_numpy.py DIR ROWS COLS REPEATS
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

GAMMA = np.float32(1.5546875)


def hf_packed(raw, rows, cols):
    packed = raw.reshape(rows // 4, cols)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(4, 1, 1)
    codes = ((packed[None, :, :] >> shifts) & 3).reshape(rows, cols)
    return (codes.astype(np.float32) - 1) * GAMMA


def i2_s(raw, rows, cols):
    n = rows * cols
    scale = raw[n // 4 : n // 4 + 4].view(np.float32)[0]
    blocks = raw[: n // 4].reshape(-1, 1, 32)
    shifts = np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)
    codes = ((blocks >> shifts) & 3).reshape(rows, cols)
    return (codes.astype(np.float32) - 1) * scale


def main():
    folder, rows, cols, repeats = Path(sys.argv[1]), *map(int, sys.argv[2:5])
    decoders = {
        "hf_packed": lambda raw: hf_packed(raw, rows, cols),
        "tq1_0": lambda raw: quants.dequantize(raw.reshape(rows, -1), Q.TQ1_0),
        "tq2_0": lambda raw: quants.dequantize(raw.reshape(rows, -1), Q.TQ2_0),
        "i2_s": lambda raw: i2_s(raw, rows, cols),
    }
    times, outputs = {}, {}
    for name, decode in decoders.items():
        raw = np.fromfile(folder / f"{name}.bin", dtype=np.uint8)
        outputs[name] = decode(raw)
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            decode(raw)
            samples.append(time.perf_counter() - started)
        times[name] = sorted(samples)[len(samples) // 2]
    # Every path decoded the same tensor: their outputs must agree exactly.
    reference = outputs["tq2_0"]
    times["consistent"] = all(np.array_equal(v.reshape(reference.shape), reference) for v in outputs.values())
    print(json.dumps(times))


if __name__ == "__main__":
    main()
