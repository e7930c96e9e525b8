"""`lamini ui` on the command line: its own server (--serve), its instruction sets, and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import psutil
import pytest

from lamini_serve.errors import LaminiError
from lamini_serve.ui import instructions
from tests.conftest import run_lamini
from tests.ui.test_browser import start_ui


def test_the_built_in_instruction_set_covers_the_papers_kinds_of_user_instructions():
    s = instructions.load()
    assert s.name.startswith("builtin-") and len(s.items) >= 60
    assert len({i.id for i in s.items}) == len(s.items)
    cats = {i.category for i in s.items}
    assert {"writing", "email", "brainstorming", "rewriting", "summarization", "classification", "extraction",
            "open QA", "coding", "math and reasoning", "creative"} <= cats
    with_input = [i for i in s.items if i.input]
    assert len(with_input) >= 10 and all(i.prompt.endswith(i.input) for i in with_input)


def test_a_users_jsonl_is_an_instruction_set_named_after_its_content(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"instruction": "Say hi.", "id": 0}\n\n{"instruction": "Fix this.", "input": "teh"}\n')
    s = instructions.load(path)
    assert [i.id for i in s.items] == ["0", "#2"] and s.items[1].prompt == "Fix this.\n\nteh"
    path.write_text('{"instruction": "Say hello."}\n')
    assert instructions.load(path).name != s.name  # edited: its stored answers are not reused


@pytest.mark.parametrize("text, words", [
    ('{"instruction": "x"}\nnot json\n', "line 2 is not valid JSON"),
    ('{"input": "x"}\n', 'no "instruction"'),
    ('{"instruction": "a", "id": 1}\n{"instruction": "b", "id": 1}\n', 'repeats the id "1"'),
    ("\n", "holds no instructions"),
])
def test_a_bad_instruction_file_is_one_line(tmp_path, text, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(LaminiError, match=words):
        instructions.load(path)
    res = run_lamini("ui", "--instructions", str(path), "--db", str(tmp_path / "v.db"))
    assert res.returncode == 1 and words in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("args, words", [
    (["--auth", "alice"], "expected USER:PASSWORD"),
    (["--endpoint", "http://x/v1", "--serve", "embedded"], "exclude each other"),
    (["--port", "0"], "Invalid value for '--port'"),
    (["--db", "x.db", "report", "--out", "r"], "--db belongs to the page"),
])
def test_bad_options_are_one_line(tmp_path, args, words):
    res = run_lamini("ui", *args, "--db", str(tmp_path / "v.db"))
    assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr


def test_ui_serve_starts_the_models_and_stops_them_with_the_page(tiny_models, tmp_path):
    proc, url, err = start_ui("--serve", f"tiny={tiny_models['llama']}", "--db", str(tmp_path / "v.db"))
    try:
        assert httpx.get(url, timeout=30).status_code == 200
        text = "".join(err)
        assert "1 models on http://127.0.0.1:" in text and "tiny" in text
        servers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if "serve" in " ".join(c.cmdline())]
        assert servers
        base = text.split("1 models on ", 1)[1].split(":", 2)
        port = int(base[2].split("/", 1)[0])
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    gone, alive = psutil.wait_procs(servers, timeout=30)
    assert not alive  # the server went with the page


def test_serve_wins_over_an_endpoint_from_the_environment_and_a_missing_gradio_is_one_line(tmp_path):
    code = ("import sys; sys.modules['gradio'] = None; from lamini_serve.cli import main; "
            f"sys.argv = ['lamini', 'ui', '--serve', 'embedded', '--db', {str(tmp_path / 'v.db')!r}]; main()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, LAMINI_ENDPOINT="http://127.0.0.1:9/v1"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "pip install 'lamini-serve[ui]'" in res.stderr and "exclude" not in res.stderr


def test_a_database_path_that_cannot_be_used_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    for db in (tmp_path / "file" / "v.db", "/proc/v.db"):
        res = run_lamini("ui", "--db", str(db), "--port", "7999", timeout=120)
        assert res.returncode == 1 and "Traceback" not in res.stderr and str(db) in res.stderr, res.stderr


def test_killing_the_page_stops_the_server_it_started(tiny_models, tmp_path):
    proc, url, err = start_ui("--serve", f"tiny={tiny_models['llama']}", "--db", str(tmp_path / "v.db"))
    servers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "serve" in " ".join(c.cmdline())]
    assert servers
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up: the server must notice on its own
    proc.wait(30)
    gone, alive = psutil.wait_procs(servers, timeout=60)
    assert not alive


def test_the_page_opens_and_says_so_when_the_endpoint_is_down_and_asks_for_the_login(tmp_path):
    proc, url, err = start_ui("--endpoint", "http://127.0.0.1:9/v1", "--db", str(tmp_path / "v.db"),
                              "--auth", "alice:s3cret")
    try:
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200
        assert "cannot reach http://127.0.0.1:9/v1" in "".join(err)
        # --auth: nothing of the page's config without the login, and only the right password logs in
        assert httpx.get(url + "/config", timeout=30).status_code == 401
        assert httpx.post(url + "/login", data={"username": "alice", "password": "nope"}, timeout=30).status_code \
            == 400
        assert httpx.post(url + "/login", data={"username": "alice", "password": "s3cret"},
                          timeout=30).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0


def test_the_report_command_prints_what_it_wrote(tmp_path):
    from lamini_serve.ui.store import Store, Vote

    with Store(tmp_path / "v.db") as store:
        store.add_vote(Vote("b", "x", "y", "tie", [], [], {}, "r", "s"))
    res = run_lamini("ui", "report", "--db", str(tmp_path / "v.db"), "--out", str(tmp_path / "out"), "--rounds", "20")
    assert res.returncode == 0, res.stderr
    listed = dict(line.split() for line in res.stdout.splitlines())
    assert set(listed) >= {"leaderboard", "winrate", "report", "votes_csv"}
    assert all(os.path.exists(p) for p in listed.values())
