"""`lamini data ...` under faults a new user meets: bad numbers, two runs at once, kills,
full disks, read-only folders, files that are not what they claim. Each is one line
naming the problem and the fix, never a traceback, and leaves no debris behind."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager

import pytest
from click.testing import CliRunner

from lamini_serve.cli import cli
from lamini_serve.data.store import Store
from lamini_serve.paths import LOCK_NAME, TMP_PREFIX
from lamini_serve.testing.openai_server import FakeOpenAIServer
from tests.conftest import run_lamini

SMALL = ["--calls", "6", "--topic-calls", "3", "--answer-seeds", "--no-stats", "--timeout", "5"]
DOWN = ["--teacher-url", "http://127.0.0.1:9/v1", "--teacher-model", "x", "--max-retries", "0"]


def _errors(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [ln for ln in stderr.splitlines() if ln.startswith("Error:")]


def _data_run(out, url, *extra):
    return run_lamini("data", "run", str(out), "--teacher-url", url, "--teacher-model", "fake", *SMALL, *extra)


def _rows(run_dir):
    import pyarrow.parquet as pq

    return sorted((r["instruction"], r["response"], r["key"]) for r in pq.read_table(run_dir / "dataset.parquet").to_pylist())


def _debris(folder):
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(TMP_PREFIX) or p.name == LOCK_NAME)


def _count(db, table):
    try:
        return sqlite3.connect(db).execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        return 0


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@contextmanager
def _mounted_tmpfs(path, options):
    """A tmpfs at `path` (root only): a real full disk or read-only folder, which root's
    privileges would otherwise write through."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path):
    d = tmp_path / "ro"
    if os.geteuid() != 0:
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    with _mounted_tmpfs(d, "ro,size=1m"):
        yield d


def _shard_store(run_dir, tag, n=4):
    """A run folder whose store holds n answered instructions, as `lamini data run` leaves it."""
    import random

    rng = random.Random(tag)
    vocab = [f"{a}{b}" for a in ("pla", "sto", "kri", "mun", "vel", "dra", "quo", "ten") for b in ("ra", "ni", "so", "ke", "tu", "lo")]
    with Store(run_dir / "store.sqlite") as s:
        # Unrelated instructions, so that dedup keeps them all.
        texts = [f"Explain {' '.join(rng.sample(vocab, 8))} in plain words." for _ in range(n)]
        s.add_call(f"call-{tag}", "chat", "example_guided", "raw", texts)
        for i, t in enumerate(texts):
            s.add_response(f"resp-{tag}-{i}", t, f"Idea {i} of {tag} is simple.", "fake", {}, 3, 5, "stop")
    return run_dir


# ---- 4. numbers that make no sense are refused before anything runs ---------------------

@pytest.mark.parametrize("option, value", [("--timeout", "0"), ("--timeout", "-3"), ("--gen-max-tokens", "0"),
                                           ("--gen-max-tokens", "-1"), ("--resp-max-tokens", "0"),
                                           ("--resp-max-tokens", "-20")])
def test_nonsense_numbers_are_refused(tmp_path, option, value):
    r = CliRunner().invoke(cli, ["data", "run", str(tmp_path / "out"), *DOWN, option, value])
    assert r.exit_code == 2, r.output
    assert f"Invalid value for '{option}'" in r.output
    assert not (tmp_path / "out").exists()


# ---- 5. one run per folder at a time ------------------------------------------------------

def test_a_second_run_on_the_same_folder_stops_at_once_and_a_killed_run_frees_it(tmp_path):
    out = tmp_path / "out"
    with FakeOpenAIServer(latency=0.2) as url:
        cmd = [sys.executable, "-m", "lamini_serve", "data", "run", str(out), "--teacher-url", url,
               "--teacher-model", "fake", *SMALL, "--concurrency", "1"]
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 60
            while _count(out / "store.sqlite", "calls") < 2 and time.time() < deadline:
                time.sleep(0.05)
            assert first.poll() is None, "the first run ended too soon to test the lock"
            second = _data_run(out, url)
            assert second.returncode == 1
            errors = _errors(second.stderr)
            assert len(errors) == 1 and f"in use by another lamini command (pid {first.pid})" in errors[0]
            assert "Generation" not in second.stderr  # it stopped before planning or asking anything
            assert first.poll() is None  # and did not disturb the first
        finally:
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=30)
        # The kernel dropped the killed run's lock: the rerun just goes.
        third = _data_run(out, url)
    assert third.returncode == 0, third.stderr
    assert (out / "dataset.parquet").is_file() and _debris(out) == []


# ---- 6. temporaries of a killed run are cleaned, plots are written atomically ------------

def test_a_rerun_cleans_what_a_killed_run_was_writing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # What a SIGKILL in the middle of atomic writes leaves: staging names with a dead pid.
    pid = _dead_pid()
    (out / f"{TMP_PREFIX}{pid}-1a2b3c4d-dataset.parquet").write_bytes(b"PAR1 half")
    (out / f"{TMP_PREFIX}{pid}-5e6f7a8b-lengths.png").write_bytes(b"")
    with FakeOpenAIServer() as url:
        r = _data_run(out, url)
    assert r.returncode == 0, r.stderr
    assert _debris(out) == []


def test_a_kill_while_plotting_leaves_no_half_plot(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": f"Explain topic number {i} in simple words.", "response": f"Topic {i} is simple.",
             "instruction_source": "topic_guided"} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "dataset.parquet")
    # matplotlib writing the PNG when the process is killed, after its first bytes.
    code = textwrap.dedent(f"""
        import os, signal, pathlib
        import matplotlib.figure
        from lamini_serve.data.stats import load_rows, plot_lengths

        def savefig(self, fname, *a, **k):
            with open(fname, "wb") as f:
                f.write(b"\\x89PNG")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)

        matplotlib.figure.Figure.savefig = savefig
        folder = pathlib.Path({str(tmp_path)!r})
        plot_lengths(load_rows(folder / "dataset.parquet"), folder / "lengths.png")
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    assert not (tmp_path / "lengths.png").exists()
    # The next command that writes there clears the dead process's staging file.
    r = run_lamini("data", "stats", str(tmp_path / "dataset.parquet"), "--no-plots")
    assert r.returncode == 0, r.stderr
    assert _debris(tmp_path) == [] and (tmp_path / "stats.md").is_file()


# ---- 7. a full disk is called a full disk --------------------------------------------------

# `lamini` with the store's database capped at its size after the 20th answer: SQLite
# then fails writes with its own "database or disk is full", exactly as on a full disk.
FULL_AFTER_20 = textwrap.dedent("""
    import sys
    from lamini_serve.data import store

    add_response = store.Store.add_response
    done = []

    def capped(self, *a, **k):
        done.append(1)
        if len(done) == 20:
            pages = self.db.execute("PRAGMA page_count").fetchone()[0]
            self.db.execute(f"PRAGMA max_page_count = {pages}")
        return add_response(self, *a, **k)

    store.Store.add_response = capped
    from lamini_serve.cli import main
    sys.argv[0] = "lamini"
    main()
""")


def test_a_full_disk_while_answering_is_one_line_and_the_rerun_resumes(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    with FakeOpenAIServer() as url:
        assert _data_run(whole, url).returncode == 0
        r = subprocess.run([sys.executable, "-c", FULL_AFTER_20, "data", "run", str(cut), "--teacher-url", url,
                            "--teacher-model", "fake", *SMALL, "--concurrency", "1"], capture_output=True, text=True)
        assert r.returncode == 1
        errors = _errors(r.stderr)
        assert len(errors) == 1 and "no space left on the device" in errors[0] and "store.sqlite" in errors[0]
        assert "move it away" not in r.stderr
        kept = _count(cut / "store.sqlite", "responses")
        assert 20 <= kept < len(_rows(whole))
        # Space is back: the rerun keeps the finished answers and completes the dataset.
        again = _data_run(cut, url)
    assert again.returncode == 0, again.stderr
    assert f"{kept} already done" in again.stderr
    assert _rows(cut) == _rows(whole)
    assert _debris(cut) == []


def test_a_store_that_cannot_grow_is_a_full_disk_not_a_broken_file(tmp_path, monkeypatch):
    import lamini_serve.data.store as store_module

    connect = sqlite3.connect

    def no_room(*a, **k):
        db = connect(*a, **k)
        db.execute("PRAGMA max_page_count = 1")  # SQLite's own SQLITE_FULL at the first table
        return db

    monkeypatch.setattr(store_module.sqlite3, "connect", no_room)
    with pytest.raises(Exception, match="no space left on the device") as info:
        Store(tmp_path / "store.sqlite")
    assert "move it away" not in str(info.value)


def test_a_store_that_is_not_a_database_is_named_as_such(tmp_path):
    (tmp_path / "store.sqlite").write_bytes(b"this is not SQLite" * 100)
    r = run_lamini("data", "run", str(tmp_path), *SMALL, *DOWN)
    assert r.returncode == 1
    errors = _errors(r.stderr)
    assert len(errors) == 1 and "is not a lamini store" in errors[0] and "move it away" in errors[0]


def test_a_really_full_disk_at_open_then_freed(tmp_path):
    disk = tmp_path / "disk"
    with _mounted_tmpfs(disk, "size=16m"), FakeOpenAIServer() as url:
        out = disk / "out"
        assert _data_run(out, url).returncode == 0
        done = _count(out / "store.sqlite", "responses")
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        # SQLite may say "disk I/O error" (WAL's shared memory cannot grow) rather than "full".
        with pytest.raises(Exception, match="no space left on the device") as info:
            with Store(out / "store.sqlite") as s:
                s.add_call("new", "chat", "example_guided", "raw" * 5000, ["Say something new. " * 500])
        assert "move it away" not in str(info.value)
        r = _data_run(out, url)
        assert r.returncode == 1
        errors = _errors(r.stderr)
        assert len(errors) == 1 and "no space left on the device" in errors[0] and "move it away" not in r.stderr
        filler.unlink()
        again = _data_run(out, url)
    assert again.returncode == 0, again.stderr
    assert f"{done} already done" in again.stderr


# ---- 8. one line, not a traceback, and nothing left behind ---------------------------------

def _not_parquet(tmp_path, kind):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / f"{kind}.parquet"
    if kind == "text":
        p.write_text("instruction,response\nSay hi.,Hi!\n")
    else:
        pq.write_table(pa.Table.from_pylist([{"instruction": f"Say hi {i}.", "response": "Hi!"} for i in range(50)]), p)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_files_that_are_not_parquet_are_one_line(tmp_path, kind):
    bad = _not_parquet(tmp_path, kind)
    for args, out in ((["data", "stats", str(bad)], None),
                      (["data", "run", str(tmp_path / "out"), "--seeds", str(bad), *DOWN], tmp_path / "out"),
                      (["data", "import", str(bad), str(tmp_path / "imported")], tmp_path / "imported")):
        r = run_lamini(*args)
        assert r.returncode == 1, (args, r.stderr)
        errors = _errors(r.stderr)
        assert len(errors) == 1 and f"{bad} is not a readable Parquet file" in errors[0], (args, errors)
        if out is not None:
            assert not out.exists()  # a command that failed before writing leaves no folder


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other sqlite"])
def test_a_merge_with_a_damaged_store_names_it_and_leaves_nothing(tmp_path, damage):
    good = _shard_store(tmp_path / "a", "first")
    bad = _shard_store(tmp_path / "b", "second", n=300)
    store = bad / "store.sqlite"
    if damage == "garbage":
        store.write_bytes(b"not a database at all" * 200)
    elif damage == "truncated":
        store.write_bytes(store.read_bytes()[: store.stat().st_size // 2])
    else:
        store.unlink()
        sqlite3.connect(store).execute("CREATE TABLE notes (x)")
    r = run_lamini("data", "merge", str(tmp_path / "merged"), str(good), str(bad))
    assert r.returncode == 1
    errors = _errors(r.stderr)
    assert len(errors) == 1 and f"{store} is not a lamini store" in errors[0]
    assert not (tmp_path / "merged").exists()
    assert _debris(tmp_path) == []
    # An earlier merge in OUT is left exactly as it was.
    assert run_lamini("data", "merge", str(tmp_path / "merged"), str(good)).returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "merged").iterdir()}
    assert run_lamini("data", "merge", str(tmp_path / "merged"), str(bad)).returncode == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "merged").iterdir()} == before


def test_merging_into_an_earlier_merge_adds_to_it(tmp_path):
    a, b = _shard_store(tmp_path / "a", "first"), _shard_store(tmp_path / "b", "second")
    assert run_lamini("data", "merge", str(tmp_path / "merged"), str(a)).returncode == 0
    r = run_lamini("data", "merge", str(tmp_path / "merged"), str(b))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("8 rows in ")
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == [
        "dataset.parquet", "rejected.parquet", "run.json", "store.sqlite"]


def test_a_run_into_a_read_only_folder_is_one_line(read_only_dir):
    for out in (read_only_dir, read_only_dir / "new"):
        r = run_lamini("data", "run", str(out), *SMALL, *DOWN)
        assert r.returncode == 1
        errors = _errors(r.stderr)
        assert len(errors) == 1 and f"cannot write to {out}" in errors[0] and "read-only" in errors[0], errors


@pytest.mark.parametrize("kind, field, value", [("data", "gen_max_tokens", 0), ("data", "resp_max_tokens", -5),
                                                ("client", "timeout", 0), ("client", "timeout", -1.5)])
def test_library_callers_get_the_same_checks(kind, field, value):
    """A Python caller that skips the CLI is held to the same limits."""
    from lamini_serve.data.pipeline import DataConfig
    from lamini_serve.errors import LaminiError
    from lamini_serve.teacher.client import ClientConfig

    with pytest.raises(LaminiError, match=f"{field} must be"):
        if kind == "data":
            DataConfig(out="x", **{field: value})
        else:
            ClientConfig("http://127.0.0.1:1/v1", "m", **{field: value})
