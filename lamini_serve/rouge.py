"""ROUGE-L between two texts: how close a student's (or an export's) answer is to a reference."""

from __future__ import annotations

import re
from typing import Sequence

_WORD = re.compile(r"\w+", re.UNICODE)


def lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lowercased word tokens."""
    c, r = _WORD.findall(candidate.lower()), _WORD.findall(reference.lower())
    n = lcs(c, r)
    if n == 0:
        return 0.0
    p, rec = n / len(c), n / len(r)
    return 2 * p * rec / (p + rec)
