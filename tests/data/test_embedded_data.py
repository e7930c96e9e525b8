"""The data stage with the real embedded teacher, small."""

import pytest

from tests.conftest import run_lamini

pytestmark = pytest.mark.slow


def test_embedded_teacher_makes_instructions_and_answers(teacher_home, tmp_path):
    out = tmp_path / "run"
    r = run_lamini("data", "run", str(out), "--calls", "4", "--topic-calls", "2",
                   "--resp-max-tokens", "48", "--batch-size", "8", "--jsonl", timeout=900)
    assert r.returncode == 0, r.stderr
    assert "completion prompts" in r.stderr  # the embedded teacher asks for the list-continuation style
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "dataset.parquet").to_pylist()
    assert len(rows) >= 5
    assert {x["instruction_source"] for x in rows} <= {"example_guided", "topic_guided"}
    assert all(x["teacher"] == "local:SmolLM2-135M-Instruct" and x["response"].strip() for x in rows)
    assert (out / "dataset.jsonl").read_text().count("\n") == len(rows)
    for name in ("stats.md", "instructions_tsne.png", "run.json", "rejected.parquet"):
        assert (out / name).is_file()
    # A rerun asks nothing finished again and changes nothing. (A call whose reply held no
    # instruction twice is not finished: the rerun would ask it again, by design.)
    import sqlite3

    with sqlite3.connect(out / "store.sqlite") as db:
        finished = db.execute("select count(*) from calls where kind != 'seeds'").fetchone()[0]
    assert finished >= 4
    r = run_lamini("data", "run", str(out), "--calls", "4", "--topic-calls", "2",
                   "--resp-max-tokens", "48", "--batch-size", "8", "--jsonl", "--no-stats", timeout=900)
    assert r.returncode == 0, r.stderr
    assert f"{finished} already done" in r.stderr
    assert sorted(x["key"] for x in pq.read_table(out / "dataset.parquet").to_pylist()) == sorted(x["key"] for x in rows)
