#!/usr/bin/env python3
"""Greedy parity of transformers against our `lm` on the default model.

    cargo xtask default-model-parity            # makes the venv, runs this script
    python crates/default-model/scripts/transformers_parity.py assets/default-model

Loads the packed checkpoint with transformers' BitNetForCausalLM (AutoModelForCausalLM)
and AutoTokenizer, then for every held-out prompt of `parity_sample.json` (written by
`make-default-model` with our `lm`'s greedy answers, stop token included):
  * checks that AutoTokenizer gives the same prompt token ids as our tokenizer;
  * decodes greedily with transformers (same stop tokens, same token budget) and
    compares the new token ids with ours.
Prints one line per mismatch and a JSON summary; exits 1 unless every answer matches.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> int:
    model_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "assets/default-model")
    sample = json.loads((model_dir / "parity_sample.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    stops = set(sample["stop_token_ids"])
    budget = sample["max_new_tokens"]

    same_tokens = same_answers = 0
    items = sample["items"]
    for item in items:
        ids = tokenizer(item["prompt"], add_special_tokens=True)["input_ids"]
        if ids == item["prompt_ids"]:
            same_tokens += 1
        else:
            print(f"tokens differ for {item['prompt']!r}: {ids} vs {item['prompt_ids']}")
        input_ids = torch.tensor([item["prompt_ids"]])
        with torch.no_grad():
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=budget,
                do_sample=False,
                eos_token_id=sorted(stops),
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[0, input_ids.shape[1]:].tolist()
        # Up to and including the first stop token, as ours are recorded.
        for i, token in enumerate(new):
            if token in stops:
                new = new[: i + 1]
                break
        if new == item["answer_ids"]:
            same_answers += 1
        else:
            text = tokenizer.decode(new, skip_special_tokens=True)
            print(f"answer differs for {item['prompt']!r}: transformers {text!r}, lm {item['answer']!r}")

    summary = {
        "model": str(model_dir),
        "prompts": len(items),
        "same_prompt_tokens": same_tokens,
        "same_greedy_answers": same_answers,
        "transformers_class": type(model).__name__,
        "tokenizer_class": type(tokenizer).__name__,
    }
    print(json.dumps(summary, indent=2))
    return 0 if same_answers == len(items) and same_tokens == len(items) else 1


if __name__ == "__main__":
    sys.exit(main())
