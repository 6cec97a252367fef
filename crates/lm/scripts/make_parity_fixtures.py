#!/usr/bin/env python3
"""Tiny random models of each supported architecture, saved in Hugging Face format with
the logits and greedy continuations transformers computes for fixed inputs: the parity
fixtures of lm's tests.

    python3 -m venv /tmp/tf && /tmp/tf/bin/pip install torch==2.11.0 transformers==5.24.0
    /tmp/tf/bin/python crates/lm/scripts/make_parity_fixtures.py

Writes tests/fixtures/<arch>/ (config.json, model.safetensors) and
tests/fixtures/<arch>/expected.safetensors (input_ids, attention_mask, logits, greedy).
The BitNet model is packed from its random latent weights (absmean ternarization,
transformers' own pack_weights, weight_scale = gamma, linear_class autobitlinear) and
its expected outputs come from transformers loading that packed checkpoint.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
COMMON = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    initializer_range=0.3,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
ARCHITECTURES = {
    "llama": dict(
        model_type="llama",
        rope_theta=10000.0,
        tie_word_embeddings=True,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=16),
    ),
    "qwen2": dict(model_type="qwen2", rope_theta=1000000.0, tie_word_embeddings=False),
    "mistral": dict(model_type="mistral", rope_theta=10000.0, sliding_window=4, tie_word_embeddings=False),
    "bitnet": dict(model_type="bitnet", rope_theta=500000.0, hidden_act="relu2", tie_word_embeddings=True),
}
# Two rows; the second is left-padded by three.
INPUT_IDS = torch.tensor([[5, 9, 14, 3, 27, 33, 8, 19], [0, 0, 0, 12, 40, 7, 21, 30]])
ATTENTION_MASK = torch.tensor([[1] * 8, [0, 0, 0, 1, 1, 1, 1, 1]])
NEW_TOKENS = 6
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pack_bitnet(directory: Path):
    """Rewrites a float BitNet checkpoint as a packed one (offline, autobitlinear)."""
    from transformers.integrations.bitnet import pack_weights

    tensors = load_file(directory / "model.safetensors")
    packed = {}
    for name, weight in tensors.items():
        if name.endswith(".weight") and name.split(".")[-2] in LINEAR:
            w = weight.float()
            gamma = w.abs().mean().clamp(min=1e-5)
            codes = (w / gamma).round().clamp(-1, 1).to(torch.int8)
            packed[name] = pack_weights(codes.clone())
            packed[name + "_scale"] = gamma.reshape(1).to(torch.float32)
        else:
            packed[name] = weight
    save_file(packed, directory / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": "offline",
        "modules_to_not_convert": ["lm_head"],
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def main():
    for index, (name, extra) in enumerate(ARCHITECTURES.items()):
        torch.manual_seed(1000 + index)
        config = AutoConfig.for_model(**{**COMMON, **extra})
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        directory = OUT / name
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory, safe_serialization=True)
        if name == "bitnet":
            pack_bitnet(directory)
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK).logits.float()
            greedy = model.generate(
                input_ids=INPUT_IDS,
                attention_mask=ATTENTION_MASK,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )[:, INPUT_IDS.shape[1]:]
        save_file(
            {
                "input_ids": INPUT_IDS.contiguous(),
                "attention_mask": ATTENTION_MASK.contiguous(),
                "logits": logits.contiguous(),
                "greedy": greedy.contiguous(),
            },
            directory / "expected.safetensors",
        )
        size = sum(p.stat().st_size for p in directory.iterdir())
        print(f"{name}: {size} bytes, logits std {logits.std():.3f}, greedy {greedy.tolist()}")


if __name__ == "__main__":
    main()
