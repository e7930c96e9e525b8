"""The leaderboard: Bradley-Terry ratings from arena votes, and the A-D grades per model.

Bradley-Terry: P(i beats j) = 1 / (1 + exp(s_j - s_i)). The strengths s are the
maximum-likelihood fit to the battles (a tie, "both bad" included, counts half a
win to each side, as Chatbot Arena counts it), with a weak Gaussian prior that
keeps a model that never lost finite, found by Newton's method. They are shown
on the Elo scale, 1000 + 400 * s / ln 10, centred so the mean model is 1000. The
95% intervals are percentile bootstrap intervals: the battles resampled with
replacement and refitted, 1000 times by default.

`lamini ui report` (and the Leaderboard tab) write:
- leaderboard.png: each model's rating with its interval,
- winrate.png: a heatmap of how often the row model beat the column model,
- human_eval.png: the A-D grades per model as stacked bars (the LaMini-LM figure),
- leaderboard.csv, human_eval.csv, votes.csv and report.md.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lamini_serve.ui.store import GRADE_MEANINGS, GRADES

ELO_SCALE = 400 / math.log(10)
PRIOR = 0.01  # precision of the N(0, 1/PRIOR) prior on each strength: negligible beside a few battles
OUTCOME = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "both_bad": 0.5}


@dataclass
class Leaderboard:
    models: list[str]          # best first
    rating: np.ndarray         # Elo scale
    lower: np.ndarray          # 95% interval
    upper: np.ndarray
    battles: np.ndarray        # battles each model fought
    wins: np.ndarray
    ties: np.ndarray
    losses: np.ndarray
    winrate: np.ndarray        # [i, j]: share of i's battles with j that i won (ties half); nan without battles

    def rows(self) -> list[dict]:
        return [{"rank": k + 1, "model": m, "rating": round(float(self.rating[k]), 1),
                 "lower": round(float(self.lower[k]), 1), "upper": round(float(self.upper[k]), 1),
                 "battles": int(self.battles[k]), "wins": int(self.wins[k]), "ties": int(self.ties[k]),
                 "losses": int(self.losses[k])} for k, m in enumerate(self.models)]


def win_matrix(n: int, a: np.ndarray, b: np.ndarray, score: np.ndarray,
               weights: np.ndarray | None = None) -> np.ndarray:
    """W[i, j]: (weighted) wins of i over j, a tie counting half to each."""
    w = np.ones(len(a)) if weights is None else weights
    out = np.zeros((n, n))
    np.add.at(out, (a, b), w * score)
    np.add.at(out, (b, a), w * (1 - score))
    return out


def fit_strengths(wins: np.ndarray, prior: float = PRIOR, iters: int = 100) -> np.ndarray:
    """Bradley-Terry strengths (natural-log scale, mean 0) maximising the penalised likelihood of W."""
    n = wins.shape[0]
    if n == 0:
        return np.zeros(0)
    games = wins + wins.T
    s = np.zeros(n)
    for _ in range(iters):
        p = 1 / (1 + np.exp(s[None, :] - s[:, None]))       # p[i, j] = P(i beats j)
        grad = (wins - games * p).sum(1) - prior * s
        v = games * p * (1 - p)
        hess = v - np.diag(v.sum(1)) - prior * np.eye(n)     # negative definite thanks to the prior
        step = np.linalg.solve(hess, grad)
        s = s - step
        if np.abs(step).max() < 1e-10:
            break
    return s - s.mean()


def bradley_terry(a: Sequence[int], b: Sequence[int], score: Sequence[float], n: int, *, rounds: int = 1000,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(strengths, lower, upper) on the natural-log scale; the bounds are 95% bootstrap percentiles."""
    a, b, score = np.asarray(a, int), np.asarray(b, int), np.asarray(score, float)
    s = fit_strengths(win_matrix(n, a, b, score))
    if not len(a) or rounds <= 0:
        return s, np.full(n, np.nan), np.full(n, np.nan)
    rng = np.random.default_rng(seed)
    boot = np.empty((rounds, n))
    for r in range(rounds):
        counts = rng.multinomial(len(a), np.full(len(a), 1 / len(a)))
        boot[r] = fit_strengths(win_matrix(n, a, b, score, counts))
    lower, upper = np.percentile(boot, [2.5, 97.5], axis=0)
    return s, lower, upper


def leaderboard(votes: Iterable, models: Sequence[str] = (), *, rounds: int = 1000, seed: int = 0) -> Leaderboard:
    """The leaderboard of `votes` (store.Vote rows); `models` adds models that fought no battle yet."""
    votes = list(votes)
    names = sorted({*models, *(v.model_a for v in votes), *(v.model_b for v in votes)})
    index = {m: i for i, m in enumerate(names)}
    n = len(names)
    a = np.array([index[v.model_a] for v in votes], int)
    b = np.array([index[v.model_b] for v in votes], int)
    score = np.array([OUTCOME[v.winner] for v in votes], float)
    s, lo, hi = bradley_terry(a, b, score, n, rounds=rounds, seed=seed)
    wins_m = win_matrix(n, a, b, score)
    games = wins_m + wins_m.T
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(games > 0, wins_m / np.where(games > 0, games, 1), np.nan)
    per = {k: np.zeros(n, int) for k in ("battles", "wins", "ties", "losses")}
    for i, j, sc in zip(a, b, score):
        per["battles"][[i, j]] += 1
        if sc == 0.5:
            per["ties"][[i, j]] += 1
        else:
            per["wins"][i if sc == 1 else j] += 1
            per["losses"][j if sc == 1 else i] += 1
    order = np.lexsort((np.array(names), -s))
    elo = lambda x: 1000 + ELO_SCALE * x  # noqa: E731
    return Leaderboard([names[k] for k in order], elo(s[order]), elo(lo[order]), elo(hi[order]),
                       per["battles"][order], per["wins"][order], per["ties"][order], per["losses"][order],
                       rate[np.ix_(order, order)])


def grade_counts(ratings: Iterable[dict]) -> dict[str, dict[str, int]]:
    """{model: {grade: count}}, models in name order."""
    out: dict[str, dict[str, int]] = {}
    for r in ratings:
        out.setdefault(r["model"], dict.fromkeys(GRADES, 0))[r["grade"]] += 1
    return dict(sorted(out.items()))


# -- pictures -------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_leaderboard(board: Leaderboard, path: Path) -> None:
    from lamini_serve.paths import save_figure

    plt = _plt()
    n = len(board.models)
    fig, ax = plt.subplots(figsize=(7, 1.4 + 0.5 * max(n, 1)), dpi=120)
    y = np.arange(n)[::-1]
    has = ~np.isnan(board.lower)
    # (a percentile interval may leave out the point estimate itself: no negative bar lengths)
    err = np.clip(np.vstack([board.rating - board.lower, board.upper - board.rating]), 0, None)
    ax.errorbar(board.rating[has], y[has], xerr=err[:, has], fmt="o", color="#3b75af", ecolor="#9bbbd9",
                elinewidth=4, capsize=0)
    ax.plot(board.rating[~has], y[~has], "o", color="#3b75af")
    ax.set_yticks(y, [f"{m}  ({b} battles)" for m, b in zip(board.models, board.battles)])
    ax.set_ylim(-0.6, n - 0.4)
    ax.axvline(1000, color="#888", lw=0.8, ls=":")
    ax.set_xlabel("Bradley-Terry rating (Elo scale), with 95% bootstrap interval")
    ax.set_title("Arena leaderboard")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_winrate(board: Leaderboard, path: Path) -> None:
    from lamini_serve.paths import save_figure

    plt = _plt()
    n = len(board.models)
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * n, 1.2 + 0.8 * n), dpi=120)
    ax.imshow(np.nan_to_num(board.winrate, nan=0.5), cmap="RdYlGn", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            v = board.winrate[i, j]
            ax.text(j, i, "" if i == j else ("-" if np.isnan(v) else f"{v:.2f}"), ha="center", va="center",
                    fontsize=9)
    ax.set_xticks(range(n), board.models, rotation=30, ha="right")
    ax.set_yticks(range(n), board.models)
    ax.set_xlabel("against")
    ax.set_title("Win rate of row over column", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


GRADE_COLOURS = {"A": "#4c9a4c", "B": "#a6cf6b", "C": "#f2b35b", "D": "#d9534f"}


def plot_grades(counts: dict[str, dict[str, int]], path: Path) -> None:
    from lamini_serve.paths import save_figure

    plt = _plt()
    models = list(counts)
    height = 2.2 + 0.5 * max(len(models), 1)
    fig, ax = plt.subplots(figsize=(7.5, height), dpi=120)
    y = np.arange(len(models))[::-1]
    left = np.zeros(len(models))
    for g in GRADES:
        total = np.array([max(sum(counts[m].values()), 1) for m in models])
        share = np.array([counts[m][g] for m in models]) / total * 100
        ax.barh(y, share, left=left, color=GRADE_COLOURS[g], label=f"{g}: {GRADE_MEANINGS[g].split(':')[0]}")
        for yy, x0, w in zip(y, left, share):
            if w >= 6:
                ax.text(x0 + w / 2, yy, f"{w:.0f}%", ha="center", va="center", fontsize=8)
        left += share
    ax.set_yticks(y, [f"{m}  (n={sum(counts[m].values())})" for m in models])
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of answers (%)")
    ax.set_title("Human evaluation: A-D grades per model")
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.55 / height, 1, 1))  # room below for the legend's two rows
    save_figure(fig, path)


# -- files ----------------------------------------------------------------------------
def _csv(rows: list[dict]) -> str:
    """CSV text of dict rows, the first row's keys as the header."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


PROVISIONAL = 10  # battles below which a model's rating is marked provisional


def interval_text(row: dict) -> str:
    """A leaderboard row's 95% interval as text ("-" without bootstrap rounds)."""
    return "-" if math.isnan(row["lower"]) else f"{row['lower']:.0f} to {row['upper']:.0f}"


@dataclass
class Report:
    files: dict[str, Path]  # name -> what was written
    summary: str            # one line: how many votes, ratings and raters
    rows: list[dict]        # the leaderboard's rows (Leaderboard.rows), best first; empty without votes


def write_report(store, out: Path, *, rounds: int = 1000, seed: int = 0) -> Report:
    """Write the leaderboard's PNGs, CSVs and report.md under `out`."""
    from lamini_serve.paths import atomic_write_text

    out = Path(out)
    votes = store.votes()
    ratings = store.ratings()
    written: dict[str, Path] = {}
    counts = grade_counts(ratings)
    summary = (f"From `{store.path}`: {len(votes)} arena votes, {len(ratings)} A-D ratings by "
               f"{len({r['rater'] for r in ratings})} raters.")
    lines = ["# lamini ui report", "", summary, ""]
    board_rows: list[dict] = []
    if votes:
        board = leaderboard(votes, rounds=rounds, seed=seed)
        plot_leaderboard(board, out / "leaderboard.png")
        plot_winrate(board, out / "winrate.png")
        rows = board_rows = board.rows()
        atomic_write_text(out / "leaderboard.csv", _csv(rows))
        written.update(leaderboard=out / "leaderboard.png", winrate=out / "winrate.png",
                       leaderboard_csv=out / "leaderboard.csv")
        lines += ["## Arena", "", "| rank | model | rating | 95% interval | battles | wins | ties | losses |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['rank']} | {r['model']} | {r['rating']:.0f} | {interval_text(r)} | "
                  f"{r['battles']} | {r['wins']} | {r['ties']} | {r['losses']} |" for r in rows]
        if min(r["battles"] for r in rows) < PROVISIONAL:
            lines += ["", f"Ratings from fewer than {PROVISIONAL} battles are provisional: one vote moves them by "
                          "hundreds of points, and with few distinct outcomes the bootstrap interval is too narrow."]
        lines += ["", "![leaderboard](leaderboard.png)", "", "![win rates](winrate.png)", ""]
        vote_rows = [{"battle_id": v.battle_id, "model_a": v.model_a, "model_b": v.model_b, "winner": v.winner,
                      "rater": v.rater, "created": v.created, "settings": json.dumps(v.settings, sort_keys=True),
                      "prompt": next((m["content"] for m in v.conversation_a if m.get("role") == "user"), "")}
                     for v in votes]
        atomic_write_text(out / "votes.csv", _csv(vote_rows))
        written["votes_csv"] = out / "votes.csv"
    else:
        lines += ["No arena votes yet.", ""]
    if counts:
        plot_grades(counts, out / "human_eval.png")
        rows = [{"model": m, **c, "n": sum(c.values()),
                 **{f"{g}_share": round(c[g] / max(sum(c.values()), 1), 4) for g in GRADES}}
                for m, c in counts.items()]
        atomic_write_text(out / "human_eval.csv", _csv(rows))
        written.update(human_eval=out / "human_eval.png", human_eval_csv=out / "human_eval.csv")
        lines += ["## Human evaluation (A-D)", "", "| model | A | B | C | D | n |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['A']} | {r['B']} | {r['C']} | {r['D']} | {r['n']} |" for r in rows]
        lines += ["", *(f"- **{g}**: {GRADE_MEANINGS[g]}" for g in GRADES), "", "![A-D grades](human_eval.png)", ""]
    else:
        lines += ["No A-D ratings yet.", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    written["report"] = out / "report.md"
    return Report(written, summary, board_rows)
