"""The generation prompts (the paper's example- and topic-guided ones) and their parsers.

Two styles:

- ``chat``: the LaMini-LM chat prompt: 3 examples in <example> tags, "generate
  20 new ones" (10 when the examples are long), optionally "with the topics ...".
  Capable teachers (gpt-3.5, a 7B+ instruct model on vLLM) follow it.
- ``completion``: a numbered list of 3 examples ending in "4." given as plain
  text to continue, stopped at a blank line. Small teachers such as the 135M
  embedded one cannot follow the chat prompt (they answer the examples or
  loop) but continue a list well.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lamini_serve.data.text import normalize, words

STYLES = ("chat", "completion")
LONG_EXAMPLE_WORDS = 60  # examples this long (P3/FLAN-style with inputs) ask for 10, not 20


@dataclass(frozen=True)
class Example:
    instruction: str
    input: str = ""

    def shown(self) -> str:
        # The paper shows an example with an input as "instruction : input".
        one_line = lambda s: " ".join(s.split())  # noqa: E731
        return f"{one_line(self.instruction)} : {one_line(self.input)}" if self.input else one_line(self.instruction)


def how_many(examples: list[Example]) -> int:
    return 10 if any(len(words(e.shown())) > LONG_EXAMPLE_WORDS for e in examples) else 20


def chat_prompt(examples: list[Example], topics: list[str] | None = None) -> str:
    n = how_many(examples)
    shown = "\n".join(f"<example>{e.shown()}</example>" for e in examples)
    topic_part = f' with the topics "{", ".join(topics)}"' if topics else ""
    return (
        f"{shown}\n\n"
        f"Generate {n} diverse examples that are similar to the provided examples{topic_part}.\n"
        "You do not need to provide a response to the generated examples.\n"
        "Each example must include an instruction.\n"
        "Each generated instruction can be either an imperative sentence or a question.\n"
        'Each example must start with the label "<example>" and end with the label "</example>".'
    )


def completion_prompt(examples: list[Example], topics: list[str] | None = None) -> str:
    about = f' The tasks are about the topics "{", ".join(topics)}".' if topics else ""
    listed = "\n".join(f"{i}. {e.shown()}" for i, e in enumerate(examples, 1))
    return (
        "Here is a list of diverse tasks. Each task is an instruction, an imperative sentence "
        f"or a question, that a helpful assistant could answer.{about}\n\n"
        f"{listed}\n{len(examples) + 1}."
    )


_TAG = re.compile(r"<example>(.*?)(?=</example>|<example>|\Z)", re.S | re.I)
_NUMBERED = re.compile(r"^\s*(?:\d{1,3}\s*[.):]|[-*\u2022])\s*")
_LABEL = re.compile(r"^(?:instruction|task|question|example)\s*\d*\s*:\s*", re.I)


def _clean(item: str) -> str:
    item = re.sub(r"</?example>", " ", item, flags=re.I)
    item = _NUMBERED.sub("", item.strip())
    item = _LABEL.sub("", item)
    item = " ".join(item.split()).strip(" \"'`")
    return item


def parse_instructions(text: str, style: str, examples: list[Example] = (), limit: int = 20) -> list[str]:
    """New instructions from a teacher's output, whatever shape it came in.

    Handles missing closing tags, numbering and bullets, blank items, labels such
    as "Instruction:", echoed examples and repeats.
    """
    if style == "completion":
        # The output continues "4." of the list: its first line is item 4, then "5. ...".
        items, first = [], True
        for line in text.split("\n"):
            if not line.strip():
                if items:
                    break
                continue
            if first or _NUMBERED.match(line):
                items.append(line)
                first = False
            else:
                break  # the list has ended and something else begins
    else:
        items = _TAG.findall(text)
        if not items:  # a teacher that ignored the tags but made a list
            items = [ln for ln in text.split("\n") if _NUMBERED.match(ln)]
    seen = {normalize(e.shown()) for e in examples} | {normalize(e.instruction) for e in examples}
    out = []
    for raw in items:
        item = _clean(raw)
        key = normalize(item)
        if not key or key in seen:
            continue
        seen.add(key)
        out.append(item)
        if len(out) >= limit:
            break
    return out
