"""Exact + MinHash-LSH dedup of a million synthetic instructions with planted near-duplicates.

    python benchmarks/dedup.py [--rows 1000000] [--planted 20000]

Targets on a 2-core machine: under 10 minutes, under 4 GiB peak memory, recall of
the planted near-duplicate pairs at least 0.95. Prints a table, writes
benchmarks/results/dedup.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_mib, report  # noqa: E402

OPENERS = ["Explain", "Describe", "Summarize", "List", "Compare", "Write", "Give", "Suggest", "Outline", "Translate",
           "What is", "How do", "Why does", "When should", "Which"]


def make_vocab(rng: random.Random, n: int = 20000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def sentence(rng: random.Random, vocab: list[str]) -> str:
    words = [rng.choice(vocab) for _ in range(rng.randint(7, 18))]
    return f"{rng.choice(OPENERS)} {' '.join(words)}{rng.choice(['.', '?', '!'])}"


def near_copy(rng: random.Random, text: str, vocab: list[str]) -> str:
    """One small edit of the kind a generator repeats: a word swapped, added or dropped, or a typo."""
    words = text.split()
    k = rng.randrange(1, len(words))
    edit = rng.choice(["replace", "insert", "delete", "typo"])
    if edit == "replace":
        words[k] = rng.choice(vocab)
    elif edit == "insert":
        words.insert(k, rng.choice(vocab))
    elif edit == "delete" and len(words) > 4:
        del words[k]
    else:
        w = words[k]
        if len(w) > 3:
            i = rng.randrange(len(w) - 1)
            words[k] = w[:i] + w[i + 1] + w[i] + w[i + 2:]
        else:
            words[k] = w + "s"
    return " ".join(words)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--planted", type=int, default=20_000, help="near-duplicate pairs planted")
    ap.add_argument("--exact", type=int, default=5_000, help="exact duplicates (case/punctuation changed) planted")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from lamini_serve.data.dedup import DedupConfig, dedup_reasons

    rng = random.Random(args.seed)
    vocab = make_vocab(rng)
    t0 = time.perf_counter()
    n_base = args.rows - args.planted - args.exact
    texts = [sentence(rng, vocab) for _ in range(n_base)]
    planted: list[tuple[int, int]] = []
    for _ in range(args.planted):
        i = rng.randrange(n_base)
        texts.append(near_copy(rng, texts[i], vocab))
        planted.append((i, len(texts) - 1))
    exact: list[tuple[int, int]] = []
    for _ in range(args.exact):
        i = rng.randrange(n_base)
        texts.append(texts[i].upper().rstrip(".?!") + " !!")
        exact.append((i, len(texts) - 1))
    make_s = time.perf_counter() - t0
    rss_before = peak_rss_mib()

    t0 = time.perf_counter()
    reasons = dedup_reasons(texts, DedupConfig(threshold=args.threshold))
    dedup_s = time.perf_counter() - t0
    peak = peak_rss_mib()

    flagged = {i for i, r in enumerate(reasons) if r is not None}
    planted_hits = sum(1 for _, j in planted if j in flagged)
    exact_hits = sum(1 for _, j in exact if reasons[j] and reasons[j].startswith("exact"))
    planted_ids = {j for _, j in planted} | {j for _, j in exact}
    # Flags on rows nobody planted: base rows hit by a planted copy of themselves are expected
    # (a pair is flagged once, on its later row), anything else is a false positive.
    false_pos = len(flagged - planted_ids)
    recall = planted_hits / max(1, len(planted))
    data = {
        "rows": len(texts), "planted_near_pairs": len(planted), "planted_exact": len(exact),
        "threshold": args.threshold, "seconds_dedup": round(dedup_s, 1), "seconds_make_data": round(make_s, 1),
        "peak_rss_mib": round(peak, 1), "rss_before_dedup_mib": round(rss_before, 1),
        "recall_planted_near": round(recall, 4), "recall_planted_exact": round(exact_hits / max(1, len(exact)), 4),
        "flagged_total": len(flagged), "false_positives": false_pos,
        "targets": {"seconds": 600, "peak_gib": 4, "recall": 0.95},
    }
    report("dedup", f"dedup of {len(texts):,} instructions", [
        ("time, exact + MinHash-LSH (s)", f"{dedup_s:.1f}  (target < 600)"),
        ("peak memory (MiB, whole process)", f"{peak:.0f}  (target < 4096)"),
        ("recall, planted near-duplicate pairs", f"{recall:.4f}  (target >= 0.95)"),
        ("recall, planted exact duplicates", f"{data['recall_planted_exact']:.4f}"),
        ("rows flagged that were not planted", f"{false_pos}"),
    ], data, args.out)


if __name__ == "__main__":
    main()
