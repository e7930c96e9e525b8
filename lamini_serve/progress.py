"""Progress bars for long work: done/total, rate, ETA and failures so far (rich)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator


class Progress:
    """`with Progress("answers", total) as p: p.advance(ok=True)`.

    A live bar on a terminal; elsewhere (CI logs, nohup) a plain line every 30 s
    and at each tenth of the work.
    """

    def __init__(self, description: str, total: int, unit: str = "items", enabled: bool | None = None,
                 log_every_s: float = 30.0):
        self.description, self.total, self.unit = description, total, unit
        self.failures = 0
        self.retries = 0
        self.done = 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar = None
        self._task = None
        self._t0 = time.monotonic()
        self._last_log = self._t0
        self._log_every_s = log_every_s
        self._next_tenth = 1

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                TextColumn("[red]{task.fields[fails]}"), console=Console(stderr=True), transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, rate="", fails="")
        return self

    def line(self) -> str:
        elapsed = time.monotonic() - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        extra = f", {self.failures} failed" if self.failures else ""
        extra += f", {self.retries} retries" if self.retries else ""
        eta_s = f"{eta:.0f}s" if eta == eta else "?"
        return f"{self.description}: {self.done}/{self.total} ({rate:.2f} {self.unit}/s, ETA {eta_s}{extra})"

    def advance(self, ok: bool = True, n: int = 1) -> None:
        self.done += n
        if not ok:
            self.failures += n
        if self._bar is None:
            now = time.monotonic()
            tenth = self.done * 10 >= self._next_tenth * self.total
            if tenth or now - self._last_log >= self._log_every_s:
                while self._next_tenth * self.total <= self.done * 10:
                    self._next_tenth += 1
                self._last_log = now
                print(self.line(), file=sys.stderr, flush=True)
        else:
            task = self._bar.tasks[0]
            speed = task.speed or 0.0
            fails = f"{self.failures} failed" if self.failures else ""
            if self.retries:
                fails += f" {self.retries} retries"
            self._bar.update(self._task, advance=n, rate=f"{speed:.1f} {self.unit}/s", fails=fails.strip())

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A one-line spinner for a step of unknown length."""
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(message):
            yield
    else:
        print(message, file=sys.stderr, flush=True)
        yield
