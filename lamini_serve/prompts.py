"""How an instruction (or a whole conversation) becomes a model's input text.

Three formats cover the LaMini-LM herd and its teacher:

- ``raw``: the instruction itself. Encoder-decoder students (T5, Flan-T5) are
  trained on instruction -> response with nothing around it.
- ``alpaca``: the wrapper the LaMini decoder-only students were trained with.
- ``chat``: the tokenizer's own chat template, for chat models such as the teacher.

Conversations are OpenAI-style message lists (``{"role": ..., "content": ...}``),
the same shape the server speaks, so every stage passes the same thing around.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Iterable, Sequence

from lamini_serve.errors import LaminiError

ALPACA_HEADER = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
ALPACA_TURN = "### Instruction:\n{instruction}\n\n### Response:"
ALPACA_PROMPT = ALPACA_HEADER + "\n\n" + ALPACA_TURN
# What training puts between "### Response:" and the answer; generation strips it.
ALPACA_RESPONSE_PREFIX = "\n"
# A student that runs past its answer starts a new turn with this; cut there.
ALPACA_STOP = "### Instruction:"

# The system message the LaMini-LM paper gave its teacher when collecting answers.
LAMINI_TEACHER_SYSTEM = (
    "You are a helpful assistant, but you must respond the provided instructions as concise as possible."
)

ROLES = ("system", "user", "assistant")

Message = dict[str, str]


class PromptFormat(str, Enum):
    RAW = "raw"
    ALPACA = "alpaca"
    CHAT = "chat"

    @classmethod
    def parse(cls, value: "str | PromptFormat") -> "PromptFormat":
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(f.value for f in cls)
            raise LaminiError(f"unknown prompt format {value!r}; use one of: {choices}") from None


def conversation(
    instruction: str,
    history: Sequence[tuple[str, str]] = (),
    system: str | None = None,
) -> list[Message]:
    """Build a message list from an instruction and earlier (user, assistant) turns."""
    messages: list[Message] = []
    if system:
        messages.append({"role": "system", "content": system})
    for user, assistant in history:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    messages.append({"role": "user", "content": instruction})
    return messages


def check_messages(messages: Iterable[Any]) -> list[Message]:
    """Validate an OpenAI-style message list: known roles, text contents, ends with the user.

    As the OpenAI API allows, content may be a list of parts (`{"type": "text", "text":
    ...}`, joined with newlines, as vLLM joins them) and the `developer` role is the
    system role of newer models.
    """
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise LaminiError(f"message {i} must be an object with 'role' and 'content'")
        role, content = m["role"], _text_of(m["content"], i)
        role = "system" if role == "developer" else role
        if role not in ROLES:
            raise LaminiError(f"message {i} has role {role!r}; use one of: {', '.join(ROLES)}, developer")
        if role == "system" and i != 0:
            raise LaminiError(f"message {i}: a system message may only come first")
        out.append({"role": role, "content": content})
    turns = [m for m in out if m["role"] != "system"]
    if not turns or turns[-1]["role"] != "user":
        raise LaminiError("the conversation must end with a user message")
    return out


def _text_of(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise LaminiError(f"message {i} has a content part of type {kind!r}; these models read text parts only "
                                  "({\"type\": \"text\", \"text\": ...})")
            texts.append(part["text"])
        return "\n".join(texts)
    raise LaminiError(f"message {i} content must be a string or a list of text parts")


def _turns(messages: Sequence[Message]) -> list[Message]:
    # raw and alpaca students were trained without system messages: they are dropped.
    return [m for m in messages if m["role"] != "system"]


def render_alpaca(messages: Sequence[Message]) -> str:
    """The LaMini/Alpaca wrapper; earlier turns are repeated as completed blocks."""
    parts = [ALPACA_HEADER]
    pending_user: str | None = None
    for m in _turns(messages):
        if m["role"] == "user":
            if pending_user is not None:  # two user messages in a row: join them
                pending_user += "\n\n" + m["content"]
            else:
                pending_user = m["content"]
        else:
            parts.append(ALPACA_TURN.format(instruction=pending_user or "") + ALPACA_RESPONSE_PREFIX + m["content"])
            pending_user = None
    parts.append(ALPACA_TURN.format(instruction=pending_user or ""))
    return "\n\n".join(parts)


def render_raw(messages: Sequence[Message]) -> str:
    """The instruction itself; earlier turns, if any, come first as plain context lines."""
    turns = _turns(messages)
    if len(turns) == 1:
        return turns[0]["content"]
    lines = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in turns[:-1]]
    return "\n".join(lines + [turns[-1]["content"]])


def render_chat(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The tokenizer's chat template, ending with the assistant's generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise LaminiError(
            "this model is set to the 'chat' prompt format but its tokenizer has no chat template; "
            "use --format alpaca or raw"
        )
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def render(fmt: PromptFormat, messages: Sequence[Message], tokenizer: Any = None) -> str:
    messages = check_messages(messages)
    if fmt is PromptFormat.RAW:
        return render_raw(messages)
    if fmt is PromptFormat.ALPACA:
        return render_alpaca(messages)
    return render_chat(tokenizer, messages)


def stop_strings(fmt: PromptFormat) -> tuple[str, ...]:
    """Text after which a model of this format has finished its answer."""
    return (ALPACA_STOP,) if fmt is PromptFormat.ALPACA else ()
