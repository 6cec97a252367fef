#!/usr/bin/env python3
"""A tiny BPE tokenizer (64 tokens, like the parity models' vocabulary) and the ids and
texts transformers' AutoTokenizer gives for fixed strings: the tokenizer fixture of lm's
tests. Copies the tokenizer files into the llama and bitnet fixtures so they are complete models.

    /tmp/tf/bin/python crates/lm/scripts/make_tokenizer_fixture.py   # same venv as the parity script
"""

import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
CORPUS = [
    "the cat sat on the mat",
    "a dog and a cat ran to the park",
    "two plus three is five",
    "what is seven times six",
] * 50
TEXTS = ["the cat sat", "what is two plus three", "dog ran to the mat"]


def main():
    out = FIXTURES / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=64, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
        "add_bos_token": True, "tokenizer_class": "PreTrainedTokenizerFast",
    }, indent=2))
    reference = AutoTokenizer.from_pretrained(str(out))
    expected = []
    for text in TEXTS:
        ids = reference(text)["input_ids"]
        expected.append({
            "text": text,
            "ids": ids,
            "decoded": reference.decode(ids, skip_special_tokens=True),
        })
    (out / "expected.json").write_text(json.dumps(expected, indent=2))
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        for model in ["llama", "bitnet"]:
            shutil.copy(out / name, FIXTURES / model / name)
    print(json.dumps(expected))


if __name__ == "__main__":
    main()
