"""The votes database: many people at once lose and double nothing; a file that is not ours is left alone."""

from __future__ import annotations

import hashlib
import sqlite3
import threading

import pytest

from lamini_serve.errors import LaminiError
from lamini_serve.ui.store import Store, Vote, check_file
from tests.conftest import run_lamini


def vote(battle: str, winner: str = "model_a", rater: str = "r") -> Vote:
    conv = [{"role": "user", "content": f"prompt {battle}"}, {"role": "assistant", "content": "answer"}]
    return Vote(battle, "teacher", "smol", winner, conv, conv, {"model_a": {"temperature": 0.7}}, rater, "session")


def test_sixteen_threads_voting_at_once_lose_and_double_no_vote(tmp_path):
    store = Store(tmp_path / "votes.db")
    per_thread, threads, barrier = 40, 16, threading.Barrier(16)
    counted = [0] * threads
    errors = []

    def voter(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                counted[t] += store.add_vote(vote(f"t{t}-{i}", rater=f"rater{t}"))
                if i % 4 == 0:  # a double click, and a second tab sending the same battle
                    counted[t] += store.add_vote(vote(f"t{t}-{i}", "tie", rater=f"rater{t}"))
                    counted[t] += store.add_vote(vote(f"t{(t + 1) % threads}-{i}", "tie"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    workers = [threading.Thread(target=voter, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    assert sum(counted) == threads * per_thread
    store.close()
    con = sqlite3.connect(tmp_path / "votes.db")
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT battle_id) FROM votes").fetchone() == (640, 640)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # every battle carries its conversation, models, settings, rater, session and time
    row = con.execute("SELECT model_a, model_b, conversation_a, settings, rater, session, created FROM votes "
                      "WHERE battle_id = 't3-5'").fetchone()
    assert row[:2] == ("teacher", "smol") and "prompt t3-5" in row[2] and "temperature" in row[3]
    assert row[4] == "rater3" and row[5] == "session" and row[6] > 0


def test_sixteen_raters_grading_at_once_keep_one_grade_each(tmp_path):
    store = Store(tmp_path / "votes.db")
    barrier = threading.Barrier(16)

    def rater(t: int) -> None:
        barrier.wait()
        for item in range(10):
            for grade in ("D", "B"):  # a rater who changes their mind: the last grade stands
                store.rate("builtin", f"u{item}", "smol", f"rater{t}", grade, instruction="i", answer="a",
                           settings={}, session=f"s{t}")

    workers = [threading.Thread(target=rater, args=(t,)) for t in range(16)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    rows = store.ratings("builtin")
    assert len(rows) == 160 and {r["grade"] for r in rows} == {"B"}
    assert store.raters("builtin") == {f"rater{t}": 10 for t in range(16)}
    assert store.rated("builtin", "rater3") == {f"u{i}": {"smol"} for i in range(10)}


def test_an_answer_is_stored_once_and_every_later_writer_gets_the_first(tmp_path):
    store = Store(tmp_path / "votes.db")
    barrier = threading.Barrier(8)
    got = []

    def writer(t: int) -> None:
        barrier.wait()
        got.append(store.put_answer("builtin", "u001", "smol", "prompt", f"answer {t}", {}, ""))

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(set(got)) == 1 and store.answer("builtin", "u001", "smol", {}) == got[0]
    # other sampling settings are another answer
    assert store.answer("builtin", "u001", "smol", {"temperature": 0.5}) is None


def test_bad_values_are_refused(tmp_path):
    store = Store(tmp_path / "votes.db")
    with pytest.raises(ValueError):
        store.add_vote(vote("x", winner="model_c"))
    with pytest.raises(ValueError):
        store.rate("s", "i", "m", "alice", "E", instruction="", answer="", settings={}, session="")
    assert store.votes() == [] and store.ratings() == []


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _foreign(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO photos (name) VALUES ('cat.jpg')")
    con.commit()
    con.close()


def _damaged(path):
    Store(path).add_vote(vote("b1"))
    data = bytearray(path.read_bytes())
    data[4096:8192] = b"\xff" * 4096  # a page of garbage
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["text", "foreign", "damaged"])
def test_a_file_that_is_not_a_lamini_database_is_refused_and_left_untouched(tmp_path, kind):
    path = tmp_path / "votes.db"
    if kind == "text":
        path.write_text("these are my notes, not a database\n")
    elif kind == "foreign":
        _foreign(path)
    else:
        _damaged(path)
        for extra in tmp_path.glob("votes.db-*"):
            extra.unlink()
    before = _digest(path)
    with pytest.raises(LaminiError) as err:
        Store(path)
    msg = str(err.value)
    assert str(path) in msg and "left untouched" in msg and "--db" in msg and "\n" not in msg
    assert _digest(path) == before
    if kind != "damaged":  # (a damaged file of ours may get its -wal and -shm back while it is checked)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["votes.db"]  # nothing was made beside it
    # the same one-line error from the command line, for the page and for the report
    for args in (["ui", "--db", str(path), "--port", "1"], ["ui", "report", "--db", str(path), "--out",
                                                              str(tmp_path / "r")]):
        res = run_lamini(*args)
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert res.stderr.strip().startswith("Error:") and "left untouched" in res.stderr
    assert _digest(path) == before and not (tmp_path / "r").exists()


def test_another_programs_empty_or_open_wal_database_is_refused_too(tmp_path):
    marked = tmp_path / "marked.db"
    con = sqlite3.connect(marked)
    con.execute("PRAGMA application_id = 1234")  # no tables yet, but another program's
    con.commit()
    con.close()
    before = _digest(marked)
    with pytest.raises(LaminiError, match="another program"):
        Store(marked)
    assert _digest(marked) == before
    # a program that has the file open in WAL mode: its tables are still in the -wal file only
    live = tmp_path / "live.db"
    other = sqlite3.connect(live)
    other.execute("PRAGMA journal_mode = WAL")
    other.execute("PRAGMA wal_autocheckpoint = 0")
    other.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    other.commit()
    before = _digest(live)
    with pytest.raises(LaminiError, match="in use or not closed cleanly"):
        Store(live)
    assert _digest(live) == before
    other.close()


def test_an_empty_file_becomes_a_database_and_a_reopened_one_keeps_its_votes(tmp_path):
    path = tmp_path / "votes.db"
    path.touch()
    assert check_file(path) is False
    with Store(path) as store:
        store.add_vote(vote("b1"))
    assert check_file(path) is True
    with Store(path) as store:
        assert [v.battle_id for v in store.votes()] == ["b1"]
    with Store(path, readonly=True) as store:
        assert len(store.votes()) == 1


def test_the_report_of_a_missing_database_says_where_it_looked(tmp_path):
    res = run_lamini("ui", "report", "--db", str(tmp_path / "nope.db"), "--out", str(tmp_path / "r"))
    assert res.returncode == 1 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "nope.db").exists()
