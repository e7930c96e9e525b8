"""Tiny random-weight models for tests and benchmarks: every stage's tests run in seconds.

Each factory writes a real checkpoint folder (config, safetensors weights, a real
byte-level BPE tokenizer trained on the fly, and ``lamini.json``) that every
stage loads exactly as it would load a real student.
"""

from __future__ import annotations

import json
from pathlib import Path

from lamini_serve.checkpoint import write_metadata
from lamini_serve.models import Family
from lamini_serve.prompts import PromptFormat

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]  # ids 0..3
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:", "### Response:", "user", "assistant", "system",
    "Give three tips for staying healthy. Eat well, sleep enough and exercise every day.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea. The waves roll in and out, blue and deep.",
    "Translate 'good morning' into Spanish. Buenos dias.",
    "Classify the sentiment of this review: I loved it! Positive.",
    "Summarize the paragraph in one sentence. Explain how photosynthesis works.",
    "def add(a, b):\n    return a + b\n", "1. 2. 3. 4. 5. 6. 7. 8. 9. 10.",
    "The quick brown fox jumps over the lazy dog. Numbers 0123456789 and punctuation !?.,;:'\"()[]{}",
]


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer (GPT-2 style) trained on a small corpus, with ChatML specials."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


# Wider than the usual 0.02 so that random weights produce varied text instead of
# one repeated token: tests of streaming and batching need something to compare.
INIT_STD = 0.3
T5_INIT_FACTOR = 8.0


def _config(kind: str, vocab: int, eos: int, pad: int, bos: int, wide: bool = True, tied: bool = False,
            layers: int = 2):
    std, factor = (INIT_STD, T5_INIT_FACTOR) if wide else (0.02, 1.0)
    from transformers import GPT2Config, LlamaConfig, T5Config

    if kind == "llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, tie_word_embeddings=tied,
            initializer_range=std,
        )
    if kind == "gpt2":
        return GPT2Config(
            vocab_size=vocab, n_embd=64, n_layer=layers, n_head=4, n_positions=512,
            bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, initializer_range=std,
        )
    if kind == "t5":
        return T5Config(
            vocab_size=vocab, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
            num_heads=4, eos_token_id=eos, pad_token_id=pad, decoder_start_token_id=pad,
            initializer_factor=factor, tie_word_embeddings=False,
        )
    raise ValueError(f"unknown tiny model kind {kind!r}; use llama, gpt2 or t5")


# The prompt format each tiny model is saved with, as `lamini train` would record it.
DEFAULT_FORMATS = {"llama": PromptFormat.CHAT, "gpt2": PromptFormat.ALPACA, "t5": PromptFormat.RAW}


def make_tiny_model(
    kind: str,
    out: str | Path,
    *,
    seed: int = 0,
    prompt_format: PromptFormat | str | None = "default",
    tokenizer=None,
    wide_init: bool = True,
    tied: bool = False,
    layers: int = 2,
) -> Path:
    """Write a tiny random-weight checkpoint of `kind` (llama, gpt2, t5) to `out`.

    `prompt_format=None` writes no lamini.json (a plain transformers checkpoint).
    `wide_init=False` uses the usual small initialization (what training tests want).
    `tied=True` ties a llama's lm_head to its input embedding (as SmolLM2 does).
    `layers` sets a llama's or gpt2's block count (a teacher to cut students from wants more than 2).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    out = Path(out)
    tok = tokenizer or build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    cfg = _config(kind, len(tok), eos=ids["<|im_end|>"], pad=ids["<pad>"], bos=ids["<|im_start|>"], wide=wide_init, tied=tied,
                  layers=layers)
    torch.manual_seed(seed)
    family = Family.SEQ2SEQ if kind == "t5" else Family.CAUSAL
    cls = AutoModelForSeq2SeqLM if family is Family.SEQ2SEQ else AutoModelForCausalLM
    model = cls.from_config(cfg)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<pad>"]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if prompt_format == "default":
        prompt_format = DEFAULT_FORMATS[kind]
    if prompt_format is not None:
        write_metadata(out, family, PromptFormat(prompt_format), role="test", seed=seed)
    return out


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
