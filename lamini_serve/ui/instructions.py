"""Instruction sets for the human evaluation: the built-in one, or the user's JSONL.

The built-in set (`resources/instructions.jsonl`) holds 72 user-oriented
instructions written for this project, in the kinds the LaMini-LM paper rated
(writing, email, social media, brainstorming, rewriting, summarization,
classification, extraction, open QA, explanation, advice, planning, math and
reasoning, coding, creative). A user's file has one JSON object per line with an
"instruction", and optionally "input" (the text it works on), "id" and "category".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lamini_serve.errors import LaminiError

BUILTIN = "builtin"


@dataclass(frozen=True)
class Item:
    id: str
    instruction: str
    input: str = ""
    category: str = ""

    @property
    def prompt(self) -> str:
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


@dataclass(frozen=True)
class InstructionSet:
    name: str
    items: tuple[Item, ...]

    def get(self, item_id: str) -> Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise KeyError(item_id)


def _parse(text: str, where: str) -> tuple[Item, ...]:
    from lamini_serve.tables import jsonl_rows

    items, seen = [], set()
    for n, row in enumerate(jsonl_rows(text, where), 1):
        instruction = row.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise LaminiError(f'{where} row {n} has no "instruction" text; each row needs '
                              '{"instruction": "...", "input": "..." (optional)}')
        item_id = str(row["id"]) if row.get("id") is not None else f"#{n}"
        if item_id in seen:
            raise LaminiError(f'{where} row {n} repeats the id "{item_id}"; give each row its own id')
        seen.add(item_id)
        items.append(Item(item_id, instruction.strip(), str(row.get("input") or "").strip(),
                          str(row.get("category") or "")))
    if not items:
        raise LaminiError(f"{where} holds no instructions; give one JSON object per line")
    return tuple(items)


def load(path: str | Path | None = None) -> InstructionSet:
    """The built-in set (None or "builtin"), or the JSONL file at `path`."""
    # A set's name changes with its content, so answers stored for an edited set are not reused.
    if path is None or str(path) == BUILTIN:
        text = resources.files("lamini_serve.ui").joinpath("resources/instructions.jsonl").read_text("utf-8")
        return InstructionSet(f"{BUILTIN}-{_digest(text)}", _parse(text, "the built-in instruction set"))
    from lamini_serve.tables import read_text

    path = Path(path)
    text = read_text(path)
    return InstructionSet(f"{path.stem}-{_digest(text)}", _parse(text, str(path)))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]
