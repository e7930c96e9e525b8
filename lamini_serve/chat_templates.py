"""Chat templates that reproduce lamini's own prompt formats, for other runtimes.

lamini renders prompts itself (`lamini_serve.prompts`), but vLLM's chat endpoint,
transformers' `apply_chat_template` and anything else that reads a checkpoint's
tokenizer go through its Jinja chat template. A student trained with the
``alpaca`` or ``raw`` format must therefore carry a template that renders exactly
what `render_alpaca` / `render_raw` render (multi-turn included), not the ChatML
template it inherited from its base. ``chat`` students keep their model's own.

A leaf module: it imports nothing heavy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lamini_serve.prompts import (
    ALPACA_HEADER,
    ALPACA_RESPONSE_PREFIX,
    PromptFormat,
)

CHAT_TEMPLATE_FILE = "chat_template.jinja"


def _lit(text: str) -> str:
    """`text` as a Jinja string literal (Jinja reads JSON's escapes)."""
    return json.dumps(text, ensure_ascii=False)


# One line, no whitespace between tags: HF compiles templates with trim_blocks and
# lstrip_blocks, and nothing outside the tags may reach the output.
# System messages are dropped (and roles other than user/assistant), two user
# messages in a row are joined with a blank line, each earlier exchange is a
# completed block; the last block ends with "### Response:" (what the student
# continues, starting with the newline it was trained with).
_INSTRUCTION = "\n\n### Instruction:\n"
_RESPONSE = "\n\n### Response:"

ALPACA_TEMPLATE = (
    "{%- set ns = namespace(pending=none) -%}"
    "{{- " + _lit(ALPACA_HEADER) + " -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if ns.pending is none -%}{%- set ns.pending = message['content'] -%}"
    "{%- else -%}{%- set ns.pending = ns.pending + " + _lit("\n\n") + " + message['content'] -%}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- " + _lit(_INSTRUCTION) + " + (ns.pending if ns.pending is not none else '') + "
    + _lit(_RESPONSE + ALPACA_RESPONSE_PREFIX) + " + message['content'] -}}"
    "{%- set ns.pending = none -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt or ns.pending is not none -%}"
    "{{- " + _lit(_INSTRUCTION) + " + (ns.pending if ns.pending is not none else '') + " + _lit(_RESPONSE) + " -}}"
    "{%- endif -%}"
)

# The last turn's text; earlier turns first as "User: ..." / "Assistant: ..." lines.
RAW_TEMPLATE = (
    "{%- set turns = messages | rejectattr('role', 'equalto', 'system') | list -%}"
    "{%- for message in turns -%}"
    "{%- if loop.last -%}{{- message['content'] -}}"
    "{%- else -%}{{- ('User: ' if message['role'] == 'user' else 'Assistant: ') + message['content'] + "
    + _lit("\n") + " -}}{%- endif -%}"
    "{%- endfor -%}"
)


def template_for(prompt_format: str | PromptFormat) -> str | None:
    """The chat template that renders `prompt_format` as lamini does; None for ``chat``
    (a chat model keeps its own template)."""
    fmt = PromptFormat.parse(prompt_format)
    if fmt is PromptFormat.ALPACA:
        return ALPACA_TEMPLATE
    if fmt is PromptFormat.RAW:
        return RAW_TEMPLATE
    return None


def set_tokenizer_template(tokenizer: Any, prompt_format: str | PromptFormat) -> bool:
    """Give a tokenizer the template of its model's prompt format before it is saved.

    Replaces whatever template it had (a ChatML one inherited from the base would make
    every chat client prompt an alpaca student wrongly). Returns whether it changed;
    ``chat`` leaves the tokenizer's own template alone. transformers 4.57 saves it as
    `chat_template.jinja` beside the tokenizer.
    """
    template = template_for(prompt_format)
    if template is None or getattr(tokenizer, "chat_template", None) == template:
        return False
    tokenizer.chat_template = template
    return True


def checkpoint_template(folder: str | Path) -> str | None:
    """The chat template a checkpoint folder carries (chat_template.jinja first, as
    transformers reads it, else tokenizer_config.json's), or None."""
    folder = Path(folder)
    jinja = folder / CHAT_TEMPLATE_FILE
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            value = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, OSError):
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, list):  # named templates: the "default" one
            for t in value:
                if isinstance(t, dict) and t.get("name") == "default":
                    return t.get("template")
    return None


def has_matching_template(folder: str | Path, prompt_format: str | PromptFormat) -> bool:
    """Whether a checkpoint's own chat template renders its prompt format (always True for
    ``chat``: the model's template is the format)."""
    want = template_for(prompt_format)
    return want is None or checkpoint_template(folder) == want


# The name `lamini train` calls it by.
apply_to_tokenizer = set_tokenizer_template
