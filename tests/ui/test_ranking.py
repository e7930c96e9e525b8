"""Bradley-Terry ratings from arena votes: they recover known strengths, and their intervals are honest."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from lamini_serve.ui.ranking import ELO_SCALE, bradley_terry, grade_counts, leaderboard, write_report
from lamini_serve.ui.store import Store, Vote


def simulate(true: np.ndarray, n: int, rng: np.random.Generator, tie_rate: float = 0.0):
    """n battles between random pairs, won with the Bradley-Terry probability of `true`."""
    k = len(true)
    a = rng.integers(0, k, n)
    b = (a + rng.integers(1, k, n)) % k
    p = 1 / (1 + np.exp(true[b] - true[a]))
    score = (rng.random(n) < p).astype(float)
    score[rng.random(n) < tie_rate] = 0.5
    return a, b, score


def test_known_strengths_are_recovered_in_order_and_size():
    true = np.array([1.2, 0.6, 0.1, -0.3, -0.7, -0.9])
    true = true - true.mean()
    a, b, score = simulate(true, 6000, np.random.default_rng(0))
    s, lo, hi = bradley_terry(a, b, score, len(true), rounds=200)
    assert list(np.argsort(-s)) == list(range(len(true)))
    assert np.abs(s - true).max() < 0.15
    assert np.all(lo < s) and np.all(s < hi)


def test_95_percent_intervals_cover_the_true_strengths_about_95_percent_of_the_time():
    true = np.array([0.8, 0.3, -0.2, -0.9])
    true = true - true.mean()
    rng = np.random.default_rng(1)
    covered = total = 0
    for draw in range(100):
        a, b, score = simulate(true, 400, rng)
        _, lo, hi = bradley_terry(a, b, score, len(true), rounds=200, seed=draw)
        covered += int(((lo <= true) & (true <= hi)).sum())
        total += len(true)
    assert 0.89 <= covered / total <= 0.99, covered / total


def test_intervals_narrow_as_votes_grow():
    true = np.array([0.5, 0.0, -0.5])
    rng = np.random.default_rng(2)
    widths = []
    for n in (100, 1600):
        a, b, score = simulate(true, n, rng)
        _, lo, hi = bradley_terry(a, b, score, 3, rounds=200)
        widths.append(float(np.mean(hi - lo)))
    assert widths[1] < widths[0] / 2.5


def _votes(pairs):
    return [Vote(f"b{i}", a, b, w, [{"role": "user", "content": "hi"}], [], {}, "r", "s", "", float(i))
            for i, (a, b, w) in enumerate(pairs)]


def test_ties_and_both_bad_count_half_a_win_each():
    board = leaderboard(_votes([("x", "y", "tie"), ("y", "x", "both_bad")] * 20), rounds=50)
    assert abs(board.rating[0] - board.rating[1]) < 1e-6
    assert board.ties.tolist() == [40, 40] and board.wins.tolist() == [0, 0]
    assert board.winrate[0, 1] == pytest.approx(0.5)


def test_the_leaderboard_puts_the_winner_first_with_counts_and_win_rates():
    pairs = [("teacher", "smol", "model_a")] * 8 + [("smol", "teacher", "model_a")] * 2 + \
            [("smol", "t5", "model_a")] * 6 + [("t5", "smol", "tie")] * 2
    board = leaderboard(_votes(pairs), models=["unseen"], rounds=100)
    assert board.models[0] == "teacher" and board.models[-1] in ("t5", "unseen")
    row = {r["model"]: r for r in board.rows()}
    assert row["teacher"]["battles"] == 10 and row["teacher"]["wins"] == 8 and row["teacher"]["losses"] == 2
    assert row["smol"]["ties"] == 2 and row["unseen"]["battles"] == 0
    i, j = board.models.index("teacher"), board.models.index("smol")
    assert board.winrate[i, j] == pytest.approx(0.8) and board.winrate[j, i] == pytest.approx(0.2)
    # 8 of 10: the fitted gap is close to the log-odds log(4), on the Elo scale
    assert row["teacher"]["rating"] - row["smol"]["rating"] > 0.6 * ELO_SCALE * np.log(4)


def test_grade_counts_per_model():
    counts = grade_counts([{"model": "a", "grade": "A"}, {"model": "a", "grade": "D"}, {"model": "b", "grade": "B"}])
    assert counts == {"a": {"A": 1, "B": 0, "C": 0, "D": 1}, "b": {"A": 0, "B": 1, "C": 0, "D": 0}}


def test_the_report_writes_pngs_csvs_and_markdown_that_agree_with_the_votes(tmp_path):
    with Store(tmp_path / "votes.db") as store:
        for v in _votes([("teacher", "smol", "model_a")] * 5 + [("smol", "teacher", "model_b")] * 3
                        + [("smol", "teacher", "model_a")]):
            store.add_vote(v)
        for model, grade in (("teacher", "A"), ("smol", "C"), ("smol", "D")):
            store.rate("builtin", "u001" if grade != "D" else "u002", model, "alice", grade, instruction="i",
                       answer="a", settings={}, session="s")
        files = write_report(store, tmp_path / "report", rounds=100).files
    for name in ("leaderboard", "winrate", "human_eval"):
        assert files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(files["leaderboard_csv"].open()))
    assert [r["model"] for r in rows] == ["teacher", "smol"]
    assert rows[0]["wins"] == "8" and rows[0]["losses"] == "1"
    grades = {r["model"]: r for r in csv.DictReader(files["human_eval_csv"].open())}
    assert grades["smol"]["C"] == "1" and grades["smol"]["D"] == "1" and grades["teacher"]["A"] == "1"
    md = files["report"].read_text()
    assert "9 arena votes" in md and "3 A-D ratings by 1 raters" in md and "| 1 | teacher |" in md
    assert len(list(csv.DictReader(files["votes_csv"].open()))) == 9
