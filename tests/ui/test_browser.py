"""`lamini ui` in a real browser: a real `lamini serve` with two tiny models, the page in
headless Chromium (Debian's, driven by Playwright), every tab used as a person would,
then the votes and grades read back from SQLite and drawn by `lamini ui report`.

Screenshots go to $LAMINI_SCREENSHOTS (default: test-artifacts/ui in the checkout).
CI sets LAMINI_REQUIRE_BROWSER=1, so a missing browser fails there instead of skipping.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lamini_serve.testing import browser as ui_page
from lamini_serve.testing.procs import Lines
from tests.conftest import lamini_root, run_lamini

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("LAMINI_CHROMIUM", ui_page.CHROMIUM)


def _need_browser():
    missing = None if importlib.util.find_spec("playwright") else "the playwright package"
    if missing is None and not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} (apt-get install chromium)"
    if missing:
        if os.environ.get("LAMINI_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test needs {missing}")
        pytest.skip(f"needs {missing}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def shots() -> Path:
    out = Path(os.environ.get("LAMINI_SCREENSHOTS") or lamini_root() / "test-artifacts" / "ui")
    out.mkdir(parents=True, exist_ok=True)
    return out


def start_ui(*args: str, timeout: float = 120) -> tuple[subprocess.Popen, str, list]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lamini_serve", "ui", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    err: list[str] = []
    threading.Thread(target=lambda: [err.append(x) for x in proc.stderr], daemon=True).start()
    try:
        return proc, Lines(proc.stdout).wait_for("lamini ui: open ", timeout), err
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("lamini ui printed no 'open' line:\n" + "".join(err)[-3000:]) from None
    except EOFError:
        raise AssertionError(f"lamini ui exited ({proc.wait(10)}):\n" + "".join(err)[-3000:]) from None


def test_side_by_side_arena_grades_and_leaderboard_in_a_real_browser(tiny_models, serve, tmp_path, shots):
    _need_browser()
    from playwright.sync_api import sync_playwright

    served = serve(f"tiny-llama={tiny_models['llama']}", f"tiny-gpt2={tiny_models['gpt2']}")
    db = tmp_path / "votes.db"
    proc, url, ui_err = start_ui("--endpoint", served.base_url, "--db", str(db))
    try:
        with sync_playwright() as p:
            browser = ui_page.launch(p, CHROMIUM)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#side-models", timeout=60000)
            page.wait_for_function("() => document.body.innerText.includes('2 models')", timeout=60000)

            # -- side by side: one prompt, two answers streaming at once ----------------------
            page.fill("#side-prompt textarea", "Give three tips for staying healthy.")
            page.click("#side-send")
            seen: list[tuple[int, int]] = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                lengths = ui_page.answer_lengths(page, ["side-bot-0", "side-bot-1"])
                stats = [page.inner_text(f"#side-stats-{k}") for k in (0, 1)]
                seen.append(tuple(lengths))
                if all("tokens/s" in s and "streaming" not in s for s in stats):
                    break
                time.sleep(0.03)
            else:
                raise AssertionError(f"the answers never finished: {stats}")
            final = seen[-1]
            assert all(n > 3 for n in final), final
            # the answers were seen part-way: more than one length on the way to the final one (in
            # the longer column: a tiny model's short answer can arrive between two polls)
            longer = 0 if final[0] >= final[1] else 1
            assert len({s[longer] for s in seen if 0 < s[longer] <= final[longer]}) >= 2, [s[longer] for s in seen]
            assert "first token" in stats[0] and "tokens/s" in stats[1]
            page.screenshot(path=str(shots / "side-by-side.png"), full_page=True)

            # -- Clear, then Stop: the answers stop growing where they are ----------------------
            page.click("#side-clear")
            page.wait_for_function("() => !document.querySelector(\"#side-bot-0 [data-testid='user']\")")
            # greedy, and long enough to be stopped (the context is 512): the same long answers every run
            ui_page.set_sampling(page, "side", max_tokens=400, temperature=0)
            page.fill("#side-prompt textarea", "Tell me a long story.")
            page.click("#side-send")
            try:
                page.wait_for_function("() => document.querySelector('#side-stats-0').innerText.includes('streaming')",
                                       timeout=120000)
            except Exception:
                page.screenshot(path=str(shots / "stop-failed.png"), full_page=True)
                raise
            page.click("#side-stop")
            time.sleep(0.5)
            stopped = ui_page.answer_lengths(page, ["side-bot-0", "side-bot-1"])
            time.sleep(2)
            assert ui_page.answer_lengths(page, ["side-bot-0", "side-bot-1"]) == stopped
            page.screenshot(path=str(shots / "stopped.png"), full_page=True)
            # cut short, and said so; a column whose answer ended by itself before the click keeps
            # its own figures (a tiny model may stop at its end token within the click's latency)
            after = [page.inner_text(f"#side-stats-{k}") for k in (0, 1)]
            assert all("tokens/s" in a and "streaming" not in a for a in after), after
            assert any(a.endswith("stopped") for a in after), after

            # -- arena: anonymous pair, vote, names shown ------------------------------------
            page.get_by_role("tab", name="Arena").click()
            ui_page.arena_round(page, "Write a haiku about autumn leaves.", timeout=120000)
            assert "tiny-" not in page.inner_text("#arena-reveal")  # no names before the vote
            reveal = ui_page.vote(page, "model_a")
            assert "tiny-llama" in reveal and "tiny-gpt2" in reveal
            page.wait_for_function("() => document.querySelector('#vote-model_b').disabled", timeout=30000)
            page.screenshot(path=str(shots / "arena.png"), full_page=True)

            # -- human evaluation: grade both answers of the first instruction -----------------
            ui_page.start_grading(page, "ci-rater", answers=2, timeout=120000)
            assert "u001" in page.inner_text("#rate-instruction")
            assert "tiny-" not in page.inner_text("#rate-answer-0")  # no names on the answers
            ui_page.grade(page, ["A: valid", "C: relevant"])
            page.screenshot(path=str(shots / "human-eval.png"), full_page=True)
            ui_page.submit_grades(page, "1 of 72", timeout=120000)

            # -- leaderboard ------------------------------------------------------------------
            ui_page.refresh_leaderboard(page)
            assert "tiny-" in page.inner_text("#board-table")
            page.screenshot(path=str(shots / "leaderboard.png"), full_page=True)
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, "".join(ui_err)[-2000:]
    assert "Traceback" not in "".join(ui_err), "".join(ui_err)[-3000:]

    con = sqlite3.connect(db)
    votes = con.execute("SELECT model_a, model_b, winner, conversation_a, settings FROM votes").fetchall()
    assert len(votes) == 1
    model_a, model_b, winner, conv_a, settings = votes[0]
    assert {model_a, model_b} == {"tiny-llama", "tiny-gpt2"} and winner == "model_a"
    assert model_a in reveal.split("Model A was ")[1].split(",")[0]
    assert "haiku" in conv_a and "temperature" in settings
    grades = dict(con.execute("SELECT model, grade FROM ratings WHERE rater = 'ci-rater' AND item_id = 'u001'"))
    assert sorted(grades.values()) == ["A", "C"] and set(grades) == {"tiny-llama", "tiny-gpt2"}
    con.close()

    res = run_lamini("ui", "report", "--db", str(db), "--out", str(tmp_path / "report"))
    assert res.returncode == 0, res.stderr
    for name in ("leaderboard.png", "winrate.png", "human_eval.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG"
    assert "1 arena votes, 2 A-D ratings by 1 raters" in (tmp_path / "report" / "report.md").read_text()
