"""The chat templates lamini writes into alpaca/raw students render exactly what lamini's
own renderers render, under transformers 4.x (this environment) and 5.x (vLLM's)."""

from __future__ import annotations

import json
import subprocess

import pytest

from lamini_serve.chat_templates import template_for
from lamini_serve.models import Family, ModelSpec
from lamini_serve.prompts import PromptFormat

CONVERSATIONS = {
    "single": [{"role": "user", "content": "Give three tips for staying healthy."}],
    "multi_turn": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"},
        {"role": "assistant", "content": "Madrid."},
        {"role": "user", "content": "And of Italy?"},
    ],
    "system_first": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another."},
    ],
    "consecutive_users": [
        {"role": "user", "content": "Read this:"},
        {"role": "user", "content": "The sea is wet."},
        {"role": "assistant", "content": "Understood."},
        {"role": "user", "content": "One"},
        {"role": "user", "content": "Two"},
        {"role": "user", "content": "Three?"},
    ],
    "unicode": [
        {"role": "user", "content": "Traduis « bonjour » en 日本語 🙂 — s'il te plaît\n\twith tabs & {{ braces }} {% x %}"},
        {"role": "assistant", "content": "こんにちは \\n (a backslash) 'quotes' \"double\""},
        {"role": "user", "content": "Ünïcödé ✓"},
    ],
    "empty_assistant": [
        {"role": "user", "content": "Say nothing."},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": ""},
    ],
    "leading_assistant": [
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Count to three.\n\n"},
    ],
    "whitespace": [{"role": "user", "content": "  spaced  \n"}],
}

FORMATS = [PromptFormat.ALPACA, PromptFormat.RAW]


def _spec(fmt: PromptFormat) -> ModelSpec:
    return ModelSpec(name="t", path="t", family=Family.CAUSAL, prompt_format=fmt)


def _expected() -> dict:
    return {f"{fmt.value}/{name}": _spec(fmt).render(conv) for fmt in FORMATS for name, conv in CONVERSATIONS.items()}


def test_chat_keeps_the_models_own_template():
    assert template_for("chat") is None
    assert template_for(PromptFormat.ALPACA) and template_for("raw")


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.value)
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_template_renders_what_lamini_renders(tiny_tokenizer, fmt, name):
    tok = tiny_tokenizer
    old = tok.chat_template
    tok.chat_template = template_for(fmt)
    try:
        got = tok.apply_chat_template(CONVERSATIONS[name], tokenize=False, add_generation_prompt=True)
    finally:
        tok.chat_template = old
    assert got == _spec(fmt).render(CONVERSATIONS[name])


_TF5_SCRIPT = r"""
import json, sys
import transformers
from transformers import PreTrainedTokenizerFast
from tokenizers import Tokenizer, models
assert transformers.__version__.startswith("5."), transformers.__version__
job = json.load(sys.stdin)
tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))
out = {"version": transformers.__version__}
for key, item in job.items():
    tok.chat_template = item["template"]
    out[key] = tok.apply_chat_template(item["messages"], tokenize=False, add_generation_prompt=True)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_template_renders_the_same_under_transformers_5(tf5_python):
    job = {f"{fmt.value}/{name}": {"template": template_for(fmt), "messages": conv}
           for fmt in FORMATS for name, conv in CONVERSATIONS.items()}
    proc = subprocess.run([tf5_python, "-c", _TF5_SCRIPT], input=json.dumps(job), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got.pop("version").startswith("5.")
    assert got == _expected()


@pytest.mark.parametrize("fmt", ["alpaca", "raw"])
def test_a_trained_student_carries_its_template_and_keeps_its_format(tmp_path, tiny_tokenizer, fmt):
    from transformers import AutoTokenizer

    from lamini_serve.testing import make_tiny_model
    from lamini_serve.train.recipe import parse_recipe
    from lamini_serve.train.trainer import train_student

    base = make_tiny_model("llama", tmp_path / "base", tokenizer=tiny_tokenizer, wide_init=False)  # ChatML template
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Fact {i}?", "response": f"Fact {i} is true."}) + "\n"
                            for i in range(16)))
    recipe = parse_recipe({
        "dataset": str(data), "output": str(tmp_path / "herd"),
        "defaults": {"effective_batch_size": 8, "per_device_batch_size": 8, "max_length": 64, "max_steps": 2,
                     "save_steps": 100, "eval_share": 0.0, "bf16": "false"},
        "students": [{"name": "s", "base": str(base), "prompt_format": fmt}],
    }, "test.yaml")
    train_student(recipe, recipe.students[0], log=lambda m: None)
    out = tmp_path / "herd" / "s"
    assert json.loads((out / "lamini.json").read_text())["prompt_format"] == fmt
    spec = ModelSpec.resolve(out)
    assert spec.prompt_format.value == fmt  # not flipped to chat by the template it now has
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == template_for(fmt)
    for conv in CONVERSATIONS.values():
        assert tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == spec.render(conv)
