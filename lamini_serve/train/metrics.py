"""The training-curve plot."""

from __future__ import annotations

import json
from pathlib import Path

from lamini_serve.paths import save_figure


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
    save_figure(fig, Path(out_png))
    return True
