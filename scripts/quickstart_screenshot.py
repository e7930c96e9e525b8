"""Take docs/img/quickstart-ui.png: the page `lamini quickstart` opens, teacher and students side by side.

    python scripts/quickstart_screenshot.py --out runs/quickstart      # after `lamini quickstart --out runs/quickstart`

Reruns `lamini quickstart --yes --out OUT` (every stage is done, so it goes straight to
`lamini ui --herd`), waits for its `lamini ui: open URL` line, and drives Debian's Chromium
(Playwright): the teacher and two students answer the same prompt, greedy.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lamini_serve.testing import browser as ui_page
from lamini_serve.testing.procs import Lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/quickstart", help="The quickstart's --out (already run).")
    ap.add_argument("--shot", default="docs/img/quickstart-ui.png")
    ap.add_argument("--port", type=int, default=7871)
    ap.add_argument("--students", default="smol-12l,smol-6l")
    ap.add_argument("--prompt", default="Give three tips for staying healthy.")
    ap.add_argument("--chromium", default=ui_page.CHROMIUM)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    proc = subprocess.Popen([sys.executable, "-m", "lamini_serve", "quickstart", "--yes", "--out", args.out,
                             "--port", str(args.port)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        url = Lines(proc.stdout).wait_for("lamini ui: open ", 900)
        with sync_playwright() as p:
            browser = ui_page.launch(p, args.chromium)
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.goto(url)
            page.wait_for_function("() => document.body.innerText.includes('models')", timeout=120000)
            picker = page.locator("#side-models input")
            for name in args.students.split(","):
                chosen = page.locator("#side-models").inner_text().split("\n")
                if name in chosen:
                    continue  # the page picked it already
                picker.click()
                page.get_by_role("option", name=name, exact=True).click()
                page.keyboard.press("Escape")
                time.sleep(1)
            ui_page.set_sampling(page, "side", temperature=0, max_tokens=96, repetition_penalty=1.2)
            page.fill("#side-prompt textarea", args.prompt)
            page.click("#side-send")
            n = 1 + len(args.students.split(","))
            page.wait_for_function(f"""() => [...Array({n}).keys()].every(k => {{
                const el = document.querySelector(`#side-stats-${{k}}`);
                return el && el.innerText.includes('tokens/s') && !el.innerText.includes('streaming'); }})""",
                                   timeout=600000)
            page.click("#side-sampling button")
            page.add_style_tag(content="[id^=side-bot-], [id^=side-bot-] * {height: auto !important; "
                                       "max-height: none !important; overflow: visible !important;}")
            time.sleep(0.5)
            Path(args.shot).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.shot, full_page=True)
            browser.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
    print(args.shot)


if __name__ == "__main__":
    main()
