#!/usr/bin/env python3
"""The real-model GGUF check's peer: what transformers makes of a GGUF file, compared with
what our `bitnet-dequant convert` wrote for it, and transformers' logits, token ids and chat
renderings written out for our Rust side to compare with.

    python gguf_parity.py MODEL.gguf OURS_DIR OUT.json

Checks here (exit 1 on any failure): every tensor of
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` equals ours bit for bit (f32),
and the config fields match. Written to OUT.json: token ids of a corpus, the chat template
rendered by `apply_chat_template` for several conversations, 200 test strings' token ids,
the f32 logits of three prompts (last position in full, the first 8 of every position)
and 32-token greedy continuations of 20 chat prompts.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

CORPUS = [
    "Hello world",
    " Hello world",
    "What is 12345 + 678?",
    "don't I'M",
    "<|im_start|>user\nHi<|im_end|>\n",
    "héllo 日本語  two  spaces\n\nnew",
    "tabs\tand\r\nwindows lines   trailing   ",
    "The answer is \\boxed{42}. Answer: 42",
]

FRAGMENTS = [
    "Hello", " world", "  ", "\n", "\n\n", "\t", "\r\n", "   ", "12345", "3.14", "-7", "1,000",
    "héllo", "日本語", "Ελληνικά", "русский", "emoji 😀🎉", "naïve café", "don't", "I'M", "we'll",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "def f(x):\n    return x*2",
    "{\"a\": [1, 2]}", "CALL calc(2**10)", "\\boxed{42}", "Answer: 72", "ALL CAPS", "snake_case_id",
    "https://example.com/a?b=c", "a.b.c", "...", "!!!", "?", "(x+y)*z", "max(47,52)=", "T&F|!T=",
]


def test_strings(count=200):
    """Seeded compositions of the fragments: unicode, whitespace runs, special tokens."""
    import random
    rng = random.Random(20261204)
    strings = list(CORPUS)
    while len(strings) < count:
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 6)))
        if text not in strings:
            strings.append(text)
    return strings


CHAT_PROMPTS = [
    "What is the capital of France?", "What is 47+25?", "Compute 15-7.", "What is 9*8?",
    "Is 3 greater than 5? Answer true or false.", "Reverse the word 'stone'.",
    "How many letters a are in 'banana'?", "Continue the sequence 2, 4, 6, 8,",
    "Write a haiku about the sea.", "Who wrote Hamlet?", "Translate 'thank you' to French.",
    "What is the largest planet?", "Give me a synonym for happy.", "What is 128+256?",
    "Sort 5, 2, 9.", "Name three primary colors.", "What does CPU stand for?",
    "Say hello in Japanese.", "What is the boiling point of water in Celsius?",
    "Explain gravity in one sentence.",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "What is 47+25?"},
        {"role": "assistant", "content": "47 + 25 = 72"},
        {"role": "user", "content": "And 72*2?"},
    ],
]

CONFIG_FIELDS = [
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "vocab_size",
    "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
]


def main():
    gguf_path, ours, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(2)
    failures = []
    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    our_config = json.loads((ours / "config.json").read_text())
    for field in CONFIG_FIELDS:
        theirs = getattr(config, field, None)
        if our_config.get(field) != theirs:
            failures.append(f"config {field}: ours {our_config.get(field)!r}, transformers {theirs!r}")
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    if our_config["rope_parameters"]["rope_theta"] != theta:
        failures.append(f"rope_theta: ours {our_config['rope_parameters']['rope_theta']}, transformers {theta}")

    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    model.eval()
    state = model.state_dict()
    our_tensors = {}
    for shard in sorted(ours.glob("*.safetensors")):
        our_tensors.update(load_file(shard))
    compared = 0
    for name, theirs in state.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        mine = our_tensors.get(name)
        if mine is None:
            failures.append(f"{name}: missing from ours")
            continue
        compared += 1
        if mine.shape != theirs.shape or not torch.equal(mine.view(torch.int32), theirs.float().contiguous().view(torch.int32)):
            failures.append(f"{name}: differs (max |d| {(mine - theirs).abs().max().item():.3g})")
    extra = sorted(set(our_tensors) - set(state))
    if extra:
        failures.append(f"ours has tensors transformers lacks: {extra[:5]}")

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    ids = {text: tokenizer.encode(text, add_special_tokens=False) for text in test_strings()}
    rendered = [
        tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        for conversation in CONVERSATIONS
    ]
    prompt = rendered[0]
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids])).logits[0].float()
        # Three prompts for the logit comparison: the chat prompt, raw text, a long turn.
        logit_prompts = [prompt_ids] + [tokenizer.encode(t, add_special_tokens=False) for t in (CORPUS[2], rendered[2])]
        logit_rows = [model(torch.tensor([p])).logits[0].float() for p in logit_prompts]
    generated = model.generate(torch.tensor([prompt_ids]), max_new_tokens=20, do_sample=False)[0][len(prompt_ids):].tolist()
    greedy_chats = []
    for question in CHAT_PROMPTS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
        chat_ids = tokenizer.encode(text, add_special_tokens=False)
        out_ids = model.generate(torch.tensor([chat_ids]), max_new_tokens=32, do_sample=False)[0][len(chat_ids):].tolist()
        greedy_chats.append({"question": question, "prompt": text, "prompt_ids": chat_ids, "greedy": out_ids})
    out.write_text(json.dumps({
        "tensors_compared": compared,
        "ids": ids,
        "conversations": CONVERSATIONS,
        "rendered": rendered,
        "prompt_ids": prompt_ids,
        "last_logits": logits[-1].tolist(),
        "head_logits": logits[:, :8].tolist(),
        "greedy": generated,
        "logit_prompts": [{"ids": p, "last": r[-1].tolist(), "head": r[:, :8].tolist()} for p, r in zip(logit_prompts, logit_rows)],
        "greedy_chats": greedy_chats,
        "greedy_text": tokenizer.decode(generated),
    }))
    print(f"transformers: {compared} tensors compared bit for bit, {len(failures)} failure(s)")
    for failure in failures[:20]:
        print("  " + failure)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
