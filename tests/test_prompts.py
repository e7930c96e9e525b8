import pytest

from lamini_serve.errors import LaminiError
from lamini_serve.prompts import (
    ALPACA_PROMPT,
    PromptFormat,
    check_messages,
    conversation,
    render,
    render_alpaca,
    render_raw,
)

ISSUE_ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:"
)


def test_alpaca_wrapper_is_exactly_the_lamini_one():
    assert ALPACA_PROMPT == ISSUE_ALPACA
    msgs = conversation("Name a colour.")
    assert render(PromptFormat.ALPACA, msgs) == ISSUE_ALPACA.format(instruction="Name a colour.")


def test_alpaca_multi_turn_repeats_earlier_turns():
    msgs = conversation("And another?", history=[("Name a colour.", "Blue.")])
    text = render_alpaca(msgs)
    assert text.startswith(ISSUE_ALPACA.format(instruction="Name a colour.") + "\nBlue.")
    assert text.endswith("### Instruction:\nAnd another?\n\n### Response:")
    assert text.count("Below is an instruction") == 1


def test_raw_is_the_instruction_itself():
    assert render(PromptFormat.RAW, conversation("Translate 'cat' to French.")) == "Translate 'cat' to French."


def test_raw_multi_turn_puts_history_first():
    text = render_raw(conversation("And dog?", history=[("Translate 'cat' to French.", "chat")]))
    assert text == "User: Translate 'cat' to French.\nAssistant: chat\nAnd dog?"


def test_system_messages_are_dropped_for_students():
    msgs = conversation("Hi", system="Be brief.")
    assert render(PromptFormat.RAW, msgs) == "Hi"
    assert "Be brief" not in render(PromptFormat.ALPACA, msgs)


def test_chat_format_uses_the_tokenizer_template(tiny_tokenizer):
    text = render(PromptFormat.CHAT, conversation("Hi", system="Be brief."), tiny_tokenizer)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_format_without_template_is_a_clear_error():
    class NoTemplate:
        chat_template = None

    with pytest.raises(LaminiError, match="no chat template"):
        render(PromptFormat.CHAT, conversation("Hi"), NoTemplate())


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "end with a user message"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "end with a user message"),
        ([{"role": "robot", "content": "a"}], "role 'robot'"),
        ([{"role": "user", "content": 3}], "content must be a string"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "user", "content": "b"}], "system message may only come first"),
        (["hello"], "must be an object"),
    ],
)
def test_bad_messages(messages, match):
    with pytest.raises(LaminiError, match=match):
        check_messages(messages)


def test_unknown_format_name():
    with pytest.raises(LaminiError, match="unknown prompt format 'xml'"):
        PromptFormat.parse("xml")


def test_alpaca_joins_consecutive_user_messages_and_keeps_both():
    """Two user messages in a row (a correction, a follow-up before the answer) are one instruction."""
    text = render(PromptFormat.ALPACA, [{"role": "user", "content": "Name a colour."},
                                        {"role": "user", "content": "Make it a warm one."}])
    assert text.endswith("### Instruction:\nName a colour.\n\nMake it a warm one.\n\n### Response:")
    assert text.count("### Instruction:") == 1
