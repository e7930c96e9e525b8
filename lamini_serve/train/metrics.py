"""ROUGE-L (for before/after comparisons with the teacher) and the training-curve plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from lamini_serve.data.text import words


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
    c, r = words(candidate), words(reference)
    n = lcs(c, r)
    if n == 0:
        return 0.0
    p, rec = n / len(c), n / len(r)
    return 2 * p * rec / (p + rec)


def plot_curve(metrics_jsonl: Path, out_png: Path, title: str) -> bool:
    rows = [json.loads(x) for x in Path(metrics_jsonl).read_text().splitlines() if x.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]
    if not train:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=110)
    ax.plot([s for s, _ in train], [v for _, v in train], color="#3b75af", label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return True
