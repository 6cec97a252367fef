#!/usr/bin/env python3
"""A numpy reference of SVF composition on the tiny Llama fixture of lm: for two seeded
random experts and a mixture, the adapted weights W' = U diag(s * f * r) V^T of every MLP
matrix, with the reference code's composition (f = sum_k alpha_k sigmoid(z_k),
r = sum s / sum (s * f)) and the paper's (f = sum_k alpha_k z_k, r = 1). numpy's SVD,
not libtorch's: W' does not depend on the sign conventions of the factors.

    /tmp/tf/bin/python crates/svf/scripts/make_composition_reference.py
"""

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

HERE = Path(__file__).resolve().parent.parent
MODEL = HERE.parent / "lm" / "tests" / "fixtures" / "llama" / "model.safetensors"
OUT = HERE / "tests" / "fixtures" / "composition.safetensors"
ALPHAS = np.array([0.3, 0.7])


def main():
    rng = np.random.default_rng(20261126)
    weights = load_file(str(MODEL))
    out = {"alphas": ALPHAS.astype(np.float32)}
    for name in sorted(weights):
        if ".mlp." not in name:
            continue
        w = weights[name].astype(np.float64)
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        layer = name[: -len(".weight")]
        zs = [rng.normal(0.1, 1.0, size=s.shape) for _ in range(2)]
        for k, z in enumerate(zs):
            out[f"{layer}.z{k}"] = z.astype(np.float32)
        z32 = [z.astype(np.float32).astype(np.float64) for z in zs]
        sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))
        f_ref = sum(a * sigmoid(z) for a, z in zip(ALPHAS.astype(np.float32), z32))
        f_paper = sum(a * z for a, z in zip(ALPHAS.astype(np.float32), z32))
        m_ref = s * f_ref * (s.sum() / (s * f_ref).sum())
        m_paper = s * f_paper
        out[f"{layer}.reference"] = ((u * m_ref) @ vt).astype(np.float32)
        out[f"{layer}.paper"] = ((u * m_paper) @ vt).astype(np.float32)
    save_file(out, str(OUT))
    print(f"{OUT}: {OUT.stat().st_size} bytes, {len(out)} tensors")


if __name__ == "__main__":
    main()
