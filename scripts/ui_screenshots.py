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

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def start(cmd: list[str], marker: str, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if line.startswith(marker):
            return proc, line.split()[-1]
        if time.monotonic() > deadline:
            break
    raise SystemExit(f"{' '.join(cmd)} did not print {marker!r}")


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
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(args.student).name
    py = [sys.executable, "-m", "lamini_serve"]
    server, base = start([*py, "serve", "embedded", f"{name}={args.student}", f"{name}-int8={args.export}",
                          "--engine", "teacher=torch", "--engine", f"{name}=torch", "--port", "0"],
                         "lamini serve: listening on ")
    db = Path(tempfile.mkdtemp()) / "votes.db"
    page_proc, url = start([*py, "ui", "--endpoint", base, "--db", str(db), "--port", str(args.port)],
                           "lamini ui: open ")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.goto(url)
            page.wait_for_function("() => document.body.innerText.includes('3 models')", timeout=60000)
            # the teacher, the student and its export, side by side, greedy
            page.locator("#side-models input").click()
            page.get_by_role("option", name=f"{name}-int8").click()
            page.keyboard.press("Escape")
            page.click("#side-sampling button")
            for field, value in (("temperature", "0"), ("max-tokens", "128"), ("repetition-penalty", "1.2")):
                box = page.locator(f"#side-{field} input[type=number]")
                box.fill(value)
                box.press("Enter")
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
                page.fill("#arena-prompt textarea", prompt)
                page.click("#arena-send")
                page.wait_for_function("() => !document.querySelector('#vote-model_a').disabled", timeout=300000)
                if k == len(prompts) - 1:
                    page.screenshot(path=str(out / "ui-arena.png"), full_page=True)
                # a scripted voter that prefers the longer answer, to fill the leaderboard
                lengths = page.evaluate("""() => ['a', 'b'].map(s => {
                    const m = document.querySelectorAll(`#arena-${s} [data-testid='bot']`);
                    return m.length ? m[m.length - 1].innerText.length : 0; })""")
                vote = "model_a" if lengths[0] > lengths[1] * 1.1 else "model_b" if lengths[1] > lengths[0] * 1.1 \
                    else "tie"
                page.click(f"#vote-{vote}")
                page.wait_for_function("() => document.querySelector('#arena-reveal').innerText.includes('recorded')")

            page.get_by_role("tab", name="Human evaluation (A-D)").click()
            page.fill("#rate-name textarea", "docs")
            page.click("#rate-start")
            page.wait_for_selector("#rate-grade-2", state="visible", timeout=300000)
            page.screenshot(path=str(out / "ui-human-eval.png"), full_page=True)
            for k, g in enumerate(("A: valid", "C: relevant", "B: acceptable")):
                page.locator(f"#rate-grade-{k}").get_by_text(g).click()
            page.click("#rate-submit")
            page.wait_for_function("() => document.querySelector('#rate-progress').innerText.includes('1 of 72')",
                                   timeout=300000)

            page.get_by_role("tab", name="Leaderboard").click()
            page.click("#board-refresh")
            page.wait_for_selector("#board-png img", timeout=60000)
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
