"""Driving the `lamini ui` page in Debian's Chromium with Playwright, for the browser test
and scripts/ui_screenshots.py. Element ids are the ones `lamini_serve.ui.app.build` gives."""

from __future__ import annotations

from typing import Sequence

CHROMIUM = "/usr/bin/chromium"
# Headless as root, with none of the background calls that this machine's closed network refuses.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def launch(playwright, executable: str = CHROMIUM):
    return playwright.chromium.launch(executable_path=executable, args=FLAGS)


def answer_lengths(page, boxes: Sequence[str]) -> list[int]:
    """Characters in the last answer of each chat box (their element ids); 0 before any answer."""
    return page.evaluate("""ids => ids.map(id => {
        const m = document.querySelectorAll(`#${id} [data-testid='bot']`);
        return m.length ? m[m.length - 1].innerText.length : 0; })""", list(boxes))


def set_sampling(page, tab: str, **values) -> None:
    """Open the tab's Sampling controls and type each value (temperature=0, max_tokens=128, ...)."""
    page.click(f"#{tab}-sampling button")
    for field, value in values.items():
        box = page.locator(f"#{tab}-{field.replace('_', '-')} input[type=number]")
        box.fill(str(value))
        box.press("Enter")


def arena_round(page, prompt: str, timeout: float) -> None:
    """Ask both anonymous models; return once the vote buttons are awake."""
    page.fill("#arena-prompt textarea", prompt)
    page.click("#arena-send")
    page.wait_for_function("() => !document.querySelector('#vote-model_a').disabled", timeout=timeout)


def vote(page, winner: str, timeout: float = 30000) -> str:
    """Vote (model_a, model_b, tie, both_bad); the text that shows the names."""
    page.click(f"#vote-{winner}")
    page.wait_for_function("() => document.querySelector('#arena-reveal').innerText.includes('recorded')",
                           timeout=timeout)
    return page.inner_text("#arena-reveal")


def start_grading(page, rater: str, answers: int, timeout: float) -> None:
    """Open the A-D tab as `rater`; return once `answers` answers are shown."""
    page.get_by_role("tab", name="Human evaluation (A-D)").click()
    page.fill("#rate-name textarea", rater)
    page.click("#rate-start")
    page.wait_for_selector(f"#rate-grade-{answers - 1}", state="visible", timeout=timeout)


def grade(page, labels: Sequence[str]) -> None:
    """Pick each answer's grade by the start of its label ("A: valid", "C: relevant", ...)."""
    for k, label in enumerate(labels):
        page.locator(f"#rate-grade-{k}").get_by_text(label).click()


def submit_grades(page, progress: str, timeout: float) -> None:
    """Submit; return once the progress line says `progress` (e.g. "1 of 72")."""
    page.click("#rate-submit")
    page.wait_for_function(f"() => document.querySelector('#rate-progress').innerText.includes({progress!r})",
                           timeout=timeout)


def refresh_leaderboard(page, timeout: float = 60000) -> None:
    page.get_by_role("tab", name="Leaderboard").click()
    page.click("#board-refresh")
    page.wait_for_selector("#board-png img", timeout=timeout)
