"""Reading a child process's output lines while it runs: tests and scripts wait for the one
line a lamini command prints when it is ready (`lamini serve: listening on URL`, `lamini ui: open URL`)."""

from __future__ import annotations

import queue
import threading
import time
from typing import IO


class Lines:
    """Reads `stream` to its end in a thread, keeping every line in `seen`."""

    def __init__(self, stream: IO[str]):
        self.seen: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.seen.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The rest of the first line that starts with `prefix`, stripped.

        TimeoutError when none came in `timeout` seconds; EOFError when the stream ended first.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no line starting {prefix!r} in {timeout:g} s") from None
            if line is None:
                raise EOFError(f"the output ended before a line starting {prefix!r}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()
