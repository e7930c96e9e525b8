"""Take the screenshots of docs/ui.md from a real run.

    python scripts/ui_screenshots.py --student runs/herd/smol-6l --export runs/herd-onnx/smol-6l \
        --out docs/img

Starts `lamini serve` with the embedded teacher, the student and its int8 export,
`lamini ui` against it, and Debian's Chromium (Playwright); asks the same prompt
side by side, plays a few arena rounds, grades one instruction, and shoots each tab.
The votes go to a throw-away database.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lamini_serve.testing import browser as ui_page
from lamini_serve.serve.cli import LISTENING
from lamini_serve.testing.procs import Lines


def start(cmd: list[str], marker: str, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        return proc, Lines(proc.stdout).wait_for(marker, timeout)
    except (TimeoutError, EOFError) as exc:
        stop(proc)
        raise SystemExit(f"{' '.join(cmd)}: {exc}") from None


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--port", type=int, default=7870)
    ap.add_argument("--prompt", default="Give three tips for staying healthy.")
    ap.add_argument("--chromium", default=ui_page.CHROMIUM)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(args.student).name
    py = [sys.executable, "-m", "lamini_serve"]
    server, base = start([*py, "serve", "embedded", f"{name}={args.student}", f"{name}-int8={args.export}",
                          "--engine", "teacher=torch", "--engine", f"{name}=torch", "--port", "0"],
                         LISTENING)
    db = Path(tempfile.mkdtemp()) / "votes.db"
    page_proc, url = start([*py, "ui", "--endpoint", base, "--db", str(db), "--port", str(args.port)],
                           "lamini ui: open ")
    try:
        with sync_playwright() as p:
            browser = ui_page.launch(p, args.chromium)
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.goto(url)
            page.wait_for_function("() => document.body.innerText.includes('3 models')", timeout=60000)
            # the teacher, the student and its export, side by side, greedy
            page.locator("#side-models input").click()
            page.get_by_role("option", name=f"{name}-int8").click()
            page.keyboard.press("Escape")
            ui_page.set_sampling(page, "side", temperature=0, max_tokens=128, repetition_penalty=1.2)
            page.fill("#side-prompt textarea", args.prompt)
            page.click("#side-send")
            page.wait_for_function("""() => [0, 1, 2].every(k => {
                const t = document.querySelector(`#side-stats-${k}`).innerText;
                return t.includes('tokens/s') && !t.includes('streaming'); })""", timeout=300000)
            page.click("#side-sampling button")
            # each answer from its start: the chat boxes follow the stream to its end
            page.add_style_tag(content="[id^=side-bot-], [id^=side-bot-] * {height: auto !important; "
                                       "max-height: none !important; overflow: visible !important;}")
            time.sleep(0.5)
            page.screenshot(path=str(out / "ui-side-by-side.png"), full_page=True)

            page.get_by_role("tab", name="Arena").click()
            prompts = ["Write a haiku about autumn leaves.", "What is the capital of Australia?",
                       "How can I improve my sleep?", "Suggest four names for a coffee shop that also sells books.",
                       "Explain how a rainbow forms.", "What is 15% of 80?"]
            for k, prompt in enumerate(prompts):
                ui_page.arena_round(page, prompt, timeout=300000)
                if k == len(prompts) - 1:
                    page.screenshot(path=str(out / "ui-arena.png"), full_page=True)
                # a scripted voter that prefers the longer answer, to fill the leaderboard
                lengths = ui_page.answer_lengths(page, ["arena-a", "arena-b"])
                ui_page.vote(page, "model_a" if lengths[0] > lengths[1] * 1.1 else
                             "model_b" if lengths[1] > lengths[0] * 1.1 else "tie")

            ui_page.start_grading(page, "docs", answers=3, timeout=300000)
            page.screenshot(path=str(out / "ui-human-eval.png"), full_page=True)
            ui_page.grade(page, ["A: valid", "C: relevant", "B: acceptable"])
            ui_page.submit_grades(page, "1 of 72", timeout=300000)

            ui_page.refresh_leaderboard(page)
            time.sleep(1)
            page.screenshot(path=str(out / "ui-leaderboard.png"), full_page=True)
            browser.close()
    finally:
        stop(page_proc)
        stop(server)
    for f in sorted(out.glob("ui-*.png")):
        print(f)


if __name__ == "__main__":
    main()
