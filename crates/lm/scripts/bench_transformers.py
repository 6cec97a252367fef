#!/usr/bin/env python3
"""The transformers side of `examples/bench_generate.rs`: builds (once) random models of
SmolLM-135M's shape and a tiny one, then times transformers 5.24 on torch 2.11 (CPU,
the same thread count as the Rust side): prefill tokens/s and greedy generation
tokens/s with the KV cache at batch 1 and 16. Writes the timings, the exact prompts
and the generated ids as JSON, so the Rust side runs the same work and can compare.

With a fourth argument, a GGUF file of a real model (SmolLM2-135M-Instruct), that model
is timed too, loaded by transformers' GGUF loader (dequantized to f32); its entry records
the file's path so the Rust side loads the same file.

usage: bench_transformers.py MODELS_DIR OUT.json THREADS [MODEL.gguf]
"""

import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

SHAPES = {
    "smollm-135m-shape": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                              num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                              rope_theta=10000.0, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 rope_theta=10000.0, tie_word_embeddings=True),
}
PREFILL_TOKENS = 128
PROMPT_TOKENS = 16
NEW_TOKENS = 32
BATCHES = [1, 16]
REPEATS = 3


def median_seconds(run):
    run()
    samples = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return sorted(samples)[len(samples) // 2]


def main():
    models_dir, out, threads = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(threads)
    report = {"threads": threads, "models": {}}
    models = list(SHAPES.items())
    if len(sys.argv) > 4:
        models.append(("smollm2-135m-instruct-gguf", {"gguf": Path(sys.argv[4])}))
    for index, (name, shape) in enumerate(models):
        if "gguf" in shape:
            gguf_file = shape["gguf"].resolve()
            model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                         dtype=torch.float32).eval()
            vocab = model.config.vocab_size
        else:
            directory = models_dir / name
            if not (directory / "config.json").is_file():
                torch.manual_seed(index)
                config = AutoConfig.for_model("llama", bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                              initializer_range=0.02, **shape)
                AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(directory)
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
            vocab = shape["vocab_size"]
        generator = torch.Generator().manual_seed(7)
        prefill = torch.randint(3, vocab, (1, PREFILL_TOKENS), generator=generator)
        entry = {"prefill_ids": prefill.tolist(), "generation": {}}
        if "gguf" in shape:
            entry["path"] = str(gguf_file)
        with torch.no_grad():
            seconds = median_seconds(lambda: model(input_ids=prefill))
            entry["prefill_tokens_per_second"] = PREFILL_TOKENS / seconds
            for batch in BATCHES:
                prompts = torch.randint(3, vocab, (batch, PROMPT_TOKENS), generator=generator)
                mask = torch.ones_like(prompts)
                generate = lambda: model.generate(input_ids=prompts, attention_mask=mask,
                                                  max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                                  do_sample=False, pad_token_id=0)
                seconds = median_seconds(generate)
                tokens = generate()[:, PROMPT_TOKENS:]
                entry["generation"][str(batch)] = {
                    "prompts": prompts.tolist(),
                    "generated": tokens.tolist(),
                    "tokens_per_second": batch * NEW_TOKENS / seconds,
                }
        report["models"][name] = entry
        print(f"{name}: prefill {entry['prefill_tokens_per_second']:.0f} tok/s, "
              + ", ".join(f"batch {b}: {entry['generation'][str(b)]['tokens_per_second']:.1f} tok/s" for b in BATCHES),
              file=sys.stderr)
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
