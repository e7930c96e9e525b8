import json

import pytest

from lamini_serve.data.seeds import builtin_topics, load_seeds, load_topics
from lamini_serve.data.stats import describe, mattr
from lamini_serve.data.store import Store
from lamini_serve.data.text import words
from lamini_serve.errors import LaminiError


def test_builtin_seeds_are_many_and_varied():
    seeds = load_seeds()
    assert len(seeds) >= 100
    assert sum(1 for s in seeds if s.input) >= 20
    assert len({s.category for s in seeds}) >= 8
    assert len({s.instruction for s in seeds}) == len(seeds)


def test_builtin_topics():
    topics = builtin_topics()
    assert len(topics) >= 300
    assert all(len(t.split()) < 3 for t in topics)
    assert len({t.lower() for t in topics}) == len(topics)


def test_broken_jsonl_line_is_named(tmp_path):
    p = tmp_path / "seeds.jsonl"
    p.write_text('{"instruction": "a b c"}\n{"instruction": broken\n')
    with pytest.raises(LaminiError, match="line 2 is not valid JSON"):
        load_seeds(str(p))


def test_csv_and_parquet_with_column_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv = tmp_path / "s.csv"
    csv.write_text("prompt,context,answer\nSummarize this.,Some text,Short.\nSay hi.,,Hi!\n")
    seeds = load_seeds(str(csv), {"instruction": "prompt", "input": "context", "output": "answer"})
    assert [(s.instruction, s.input, s.output) for s in seeds] == [("Summarize this.", "Some text", "Short."), ("Say hi.", "", "Hi!")]
    pq.write_table(pa.Table.from_pylist([{"q": "What is 2+2?"}]), tmp_path / "s.parquet")
    assert load_seeds(str(tmp_path / "s.parquet"), {"instruction": "q"})[0].instruction == "What is 2+2?"
    with pytest.raises(LaminiError, match="no column 'instruction'"):
        load_seeds(str(tmp_path / "s.parquet"))


def test_topics_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("Jazz\n\nChess\n# comment\nBaking\n")
    assert load_topics(str(p)) == ["Jazz", "Chess", "Baking"]
    with pytest.raises(LaminiError, match="no such file"):
        load_topics(str(tmp_path / "missing.txt"))
    (tmp_path / "latin1.txt").write_bytes("Caf\xe9\nJazz\nChess\n".encode("latin-1"))
    with pytest.raises(LaminiError, match="not UTF-8"):
        load_topics(str(tmp_path / "latin1.txt"))


def test_seed_files_that_cannot_be_read_are_one_line(tmp_path):
    (tmp_path / "s.json").write_text('[{"instruction": "a b c"},')
    with pytest.raises(LaminiError, match="is not valid JSON"):
        load_seeds(str(tmp_path / "s.json"))
    (tmp_path / "l.json").write_text('["just a string"]')
    with pytest.raises(LaminiError, match="list of objects"):
        load_seeds(str(tmp_path / "l.json"))
    (tmp_path / "s.csv").write_bytes("instruction\nCaf\xe9 au lait, please.\n".encode("latin-1"))
    with pytest.raises(LaminiError, match="not UTF-8"):
        load_seeds(str(tmp_path / "s.csv"))


def test_store_is_idempotent_and_merges(tmp_path):
    with Store(tmp_path / "a.sqlite") as a:
        a.add_call("k1", "chat", "example_guided", "raw", ["x one", "x two"])
        a.add_call("k1", "chat", "example_guided", "raw", ["x one", "x two"])  # a rerun writes nothing new
        a.add_response("r1", "x one", "answer", "t", {"temperature": 0}, 3, 4, "stop")
        assert a.count("instructions") == 2 and a.count("responses") == 1
    with Store(tmp_path / "b.sqlite") as b:
        b.add_call("k2", "chat", "topic_guided", "raw", ["y one"])
        added = b.merge_from(tmp_path / "a.sqlite")
        assert added == {"calls": 1, "instructions": 2, "responses": 1}
        assert b.merge_from(tmp_path / "a.sqlite") == {"calls": 0, "instructions": 0, "responses": 0}
        assert {r["instruction"] for r in b.instructions()} == {"x one", "x two", "y one"}


def test_a_unit_that_fails_half_way_leaves_nothing(tmp_path):
    import sqlite3

    with Store(tmp_path / "s.sqlite") as s:
        # The call row and the first instruction go in before the second cannot be stored.
        with pytest.raises(sqlite3.Error):
            s.add_call("k1", "chat", "example_guided", "raw", ["x one", object()])
        # Nothing of it stays: a rerun sees k1 as not done and makes it whole.
        assert s.keys("calls") == set() and s.count("instructions") == 0
        s.add_call("k1", "chat", "example_guided", "raw", ["x one", "x two"])
        assert [r["instruction"] for r in s.instructions()] == ["x one", "x two"]


def test_mattr():
    assert mattr([str(i) for i in range(200)]) == 1.0
    assert mattr(["a"] * 200) == pytest.approx(1 / 50)
    assert mattr(["a", "b", "a"]) == pytest.approx(2 / 3)
    toks = words("the cat sat on the mat " * 40)
    assert 0 < mattr(toks) < 0.2


def test_describe_writes_report_and_plots(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": f"Explain topic number {i} in simple words.", "response": f"Topic {i} is simple. " * 3,
             "instruction_source": "seed" if i % 2 else "topic_guided",
             "finish_reason": "length" if i < 3 else "stop"} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "dataset.parquet")
    s = describe(tmp_path / "dataset.parquet")
    assert s["rows"] == 30 and s["per_source"] == {"seed": 15, "topic_guided": 15}
    assert 0 < s["mattr_instructions"] <= 1
    for name in ("stats.md", "stats.json", "instructions_tsne.png", "lengths.png"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 100
    assert (tmp_path / "instructions_tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "stats.json").read_text())["rows"] == 30
    assert s["truncated_responses"] == 3 and "3 responses (10%) stopped" in (tmp_path / "stats.md").read_text()


def test_sqlite_errors_are_told_apart_without_error_codes():
    """Python 3.10's sqlite3 exceptions carry no code: the message decides, so a full disk is still one."""
    import sqlite3

    from lamini_serve.data.store import sqlite_code

    assert sqlite_code(sqlite3.OperationalError("database or disk is full")) == 13
    assert sqlite_code(sqlite3.DatabaseError("file is not a database")) == 26
    assert sqlite_code(sqlite3.DatabaseError("database disk image is malformed")) == 11
    assert sqlite_code(sqlite3.OperationalError("no such column: x")) == 0
