#!/usr/bin/env python3
"""A tiny llama-architecture GGUF model and chat-template renderings, with what transformers
makes of them: the GGUF fixtures of lm's tests.

    python3 -m venv /tmp/tf && /tmp/tf/bin/pip install torch==2.11.0 transformers==5.24.0 \
        accelerate==1.15.0 gguf==0.19.0
    /tmp/tf/bin/python crates/lm/scripts/make_gguf_fixture.py

Writes tests/fixtures/gguf/:
  tiny.gguf      a random 2-layer llama (hidden 64, 4 heads, 2 key/value heads) written the
                 way llama.cpp's converter writes one: Q/K rows permuted for adjacent-pair
                 RoPE, weights in Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and F16 (quantized by the gguf
                 package), a byte-level BPE vocabulary of 300 tokens with merges and control
                 tokens, the `qwen2` pre-tokenizer, SmolLM2's chat template
  tiny-spm.gguf  the same weights with a SentencePiece-style vocabulary (byte tokens,
                 scores, no merges, BOS added by default)
  expected-spm.json  transformers' ids (with and without BOS), decodings and logits for it
  expected.json  from transformers loading tiny.gguf (`from_pretrained(dir, gguf_file=...)`):
                 its config, token ids of a corpus, the f32 logits of two prompts (the last
                 position in full, the first 16 of every position) and a greedy continuation
Writes tests/fixtures/chat_templates.json: SmolLM2's, a Llama 3 and a Qwen2.5 chat template
(as published with those models), each rendered by transformers' renderer for several
conversations, with and without the generation prompt.
"""

import json
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.utils.chat_template_utils import render_jinja_template

SEED = 20261204
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is 47+25?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hi there  "}],
    [
        {"role": "user", "content": "What is 47+25?"},
        {"role": "assistant", "content": "47 + 25 = 72"},
        {"role": "user", "content": "And \"72*2\" in 日本語?\n"},
    ],
    [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "tool", "content": "{\"sum\": 5}"},
        {"role": "tool", "content": "done"},
    ],
]

CORPUS = [
    "the cat sat on the mat",
    " the theme of these notes",
    "What is 12345 + 678?",
    "don't I'M",
    "<|im_start|>user\nHi<|im_end|>\n",
    "héllo 日本語  two  spaces\n\nnew",
    "tabs\tand\r\nlines   ",
]

TRAINING_TEXT = (
    "the cat sat on the mat. the theme of the thesis: these then those. "
    "there is the other one, in the inn, on and on. 12 + 34 = 46; 100 - 1 = 99. " * 4
)


def train_merges(text, count):
    spelling = bytes_to_unicode()
    words = Counter("".join(spelling[b] for b in word.encode()) for word in text.replace(" ", " \x00").split("\x00"))
    words = Counter({tuple(w): n for w, n in words.items() if w})
    merges = []
    for _ in range(count):
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        merged = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


SPM_EXTRA = ["<s>the</s>", "  leading", "x\u2581y", "tab\tcontrol\x01"]


def spm_vocabulary(text, size):
    """A SentencePiece-style BPE vocabulary of `size` tokens: <unk>, <s>, </s>, the 256
    byte tokens, merged pieces scored by rank and single characters scored below them."""
    words = Counter(tuple("\u2581" + w) for w in text.split(" ") if w)
    chars = sorted({c for w in words for c in w})
    pieces = []
    while len(pieces) + len(chars) < size - 259:
        pairs = Counter()
        for w, n in words.items():
            for pair in zip(w, w[1:]):
                pairs[pair] += n
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        pieces.append(best[0] + best[1])
        merged = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + chars
    types = [2, 3, 3] + [6] * 256 + [1] * (len(pieces) + len(chars))
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))] + [-1000.0 - i for i in range(len(chars))]
    assert len(tokens) == size, len(tokens)
    return tokens, types, scores


def permute(w, n_head):
    # llama.cpp's LlamaModel.permute (convert_hf_to_gguf.py).
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def main():
    torch.manual_seed(SEED)
    out = OUT / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    spelling = bytes_to_unicode()
    control = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = train_merges(TRAINING_TEXT, 41)
    tokens = control + [spelling[b] for b in range(256)] + [a + b for a, b in merges]
    assert len(tokens) == 300, len(tokens)
    token_types = [3] * len(control) + [1] * (len(tokens) - len(control))

    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}

    def start(path):
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_name("lm tiny gguf fixture")
        writer.add_block_count(2)
        writer.add_context_length(256)
        writer.add_embedding_length(64)
        writer.add_feed_forward_length(128)
        writer.add_head_count(4)
        writer.add_head_count_kv(2)
        writer.add_rope_dimension_count(16)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        return writer

    def finish(writer):
        def put(name, values, qtype):
            values = np.ascontiguousarray(values, dtype=np.float32)
            if qtype == Q.F32:
                writer.add_tensor(name, values)
            elif qtype == Q.F16:
                writer.add_tensor(name, values.astype(np.float16))
            else:
                writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)

        put("token_embd.weight", state["model.embed_tokens.weight"], Q.Q8_0)
        for i in range(2):
            p = f"model.layers.{i}."
            put(f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"], Q.F32)
            put(f"blk.{i}.attn_q.weight", permute(state[p + "self_attn.q_proj.weight"], 4), Q.Q4_0)
            put(f"blk.{i}.attn_k.weight", permute(state[p + "self_attn.k_proj.weight"], 2), Q.Q5_1)
            put(f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"], Q.Q8_0)
            put(f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"], Q.Q4_1)
            put(f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"], Q.F32)
            put(f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"], Q.Q5_0)
            put(f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"], Q.Q5_1)
            put(f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"], Q.Q8_0)
        put("output_norm.weight", state["model.norm.weight"], Q.F32)
        put("output.weight", state["lm_head.weight"], Q.F16)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    path = out / "tiny.gguf"
    writer = start(path)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges([f"{a} {b}" for a, b in merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(SMOLLM2_TEMPLATE)
    finish(writer)

    # The same weights with a SentencePiece-style vocabulary: byte tokens, scores and no
    # merges (transformers derives them from the scores), add_bos_token left unset.
    spm_tokens, spm_types, spm_scores = spm_vocabulary(TRAINING_TEXT, len(tokens))
    spm_path = out / "tiny-spm.gguf"
    writer = start(spm_path)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(spm_tokens)
    writer.add_token_types(spm_types)
    writer.add_token_scores(spm_scores)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    finish(writer)
    spm = AutoTokenizer.from_pretrained(out, gguf_file=spm_path.name)
    spm_model = AutoModelForCausalLM.from_pretrained(out, gguf_file=spm_path.name, dtype=torch.float32).eval()
    spm_ids = {text: spm.encode(text, add_special_tokens=False) for text in CORPUS + SPM_EXTRA}
    spm_prompt = spm.encode(CORPUS[0])
    with torch.no_grad():
        full = spm_model(torch.tensor([spm_prompt])).logits[0]
    (out / "expected-spm.json").write_text(json.dumps({
        "ids": spm_ids,
        "with_bos": {text: spm.encode(text) for text in CORPUS[:3]},
        "decoded": {text: spm.decode(ids) for text, ids in spm_ids.items()},
        "prompt": spm_prompt,
        "logits": {"last": full[-1].tolist(), "head": full[:, :16].tolist()},
    }, indent=1))

    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=path.name)
    ids = {text: tokenizer.encode(text, add_special_tokens=False) for text in CORPUS}
    prompts = [ids[CORPUS[0]], ids[CORPUS[2]]]
    logits = []
    with torch.no_grad():
        for prompt in prompts:
            full = loaded(torch.tensor([prompt])).logits[0]
            logits.append({"last": full[-1].tolist(), "head": full[:, :16].tolist()})
        greedy = loaded.generate(torch.tensor([prompts[0]]), max_new_tokens=8, do_sample=False, min_new_tokens=8)[0][len(prompts[0]):].tolist()
    chat = tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)
    cfg = loaded.config
    (out / "expected.json").write_text(json.dumps({
        "config": {k: getattr(cfg, k) for k in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings", "rms_norm_eps", "max_position_embeddings"]},
        "ids": ids,
        "prompts": prompts,
        "logits": logits,
        "greedy": greedy,
        "chat": chat,
        "chat_ids": tokenizer.encode(chat, add_special_tokens=False),
    }, indent=1))

    cases = []
    specials = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    for name, template in [("smollm2", SMOLLM2_TEMPLATE), ("llama3", LLAMA3_TEMPLATE), ("qwen2.5", QWEN25_TEMPLATE)]:
        for conversation in CONVERSATIONS:
            for generation in (True, False):
                rendered, _ = render_jinja_template(
                    conversations=[conversation], chat_template=template,
                    add_generation_prompt=generation, **specials,
                )
                cases.append({"template": name, "messages": conversation, "add_generation_prompt": generation, "rendered": rendered[0]})
    (OUT / "chat_templates.json").write_text(json.dumps({
        "templates": {"smollm2": SMOLLM2_TEMPLATE, "llama3": LLAMA3_TEMPLATE, "qwen2.5": QWEN25_TEMPLATE},
        "specials": specials,
        "cases": cases,
    }, indent=1, ensure_ascii=False))
    for p in [path, out / "expected.json", OUT / "chat_templates.json"]:
        print(f"{p.relative_to(OUT)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
