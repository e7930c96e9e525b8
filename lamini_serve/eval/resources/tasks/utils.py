"""Scoring for local_qa: a short answer is right when the model's first line says it."""

import re


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def process_results(doc, results):
    """exact_match: the first line is the answer (case, punctuation and spacing aside);
    contains: the answer's words appear in it, in order ("The sky is blue." for "blue")."""
    said, target = _words(results[0]), _words(doc["answer"])
    n = len(target)
    contains = any(said[i:i + n] == target for i in range(len(said) - n + 1))
    return {"exact_match": float(said == target), "contains": float(contains)}
