"""Small text helpers shared by generation, dedup, filters and stats."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")
WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    """Lowercase, NFKC, punctuation removed, whitespace collapsed: the form exact dedup compares."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def stable_hash(obj: Any) -> str:
    """A content hash of anything JSON can hold (sorted keys): the key of a unit of work."""
    data = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def with_input(instruction: str, input_text: str | None, sep: str = "\n\n") -> str:
    """One instruction string from an instruction and its optional input (LaMini keeps one column)."""
    input_text = (input_text or "").strip()
    return f"{instruction.strip()}{sep}{input_text}" if input_text else instruction.strip()


def looks_like_garbage(text: str | None) -> str | None:
    """Why a teacher's answer is unusable (empty, no words, replacement characters), or None."""
    if text is None or not text.strip():
        return "empty"
    t = text.strip()
    if "\ufffd" in t or "\x00" in t:
        return "garbage: undecodable characters"
    letters = sum(ch.isalpha() for ch in t)
    if letters < max(2, 0.3 * len(t)):
        return "garbage: too few letters"
    return None


def repeats_a_phrase(text: str, n: int = 4, times: int = 4) -> bool:
    """True when some n-word phrase occurs `times` times or more: a looping small model."""
    w = words(text)
    if len(w) < n * times:
        return False
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(w) - n + 1):
        g = tuple(w[i:i + n])
        counts[g] = counts.get(g, 0) + 1
        if counts[g] >= times:
            return True
    return False
