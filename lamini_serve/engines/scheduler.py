"""One scheduler for every in-process engine: the batch, the queue, and each row's life.

A `BatchScheduler` owns one `StepModel` and one thread. Each iteration it:

1. admits waiting requests: into the running batch at once when the model joins
   running batches (ONNX: continuous batching), or when the batch is empty (torch:
   requests that arrive together are generated together);
2. feeds each running row its last token (`step`) and prefills the new rows (`add`);
3. picks every row's next token with that row's settings and generator, decodes it
   incrementally, applies stop strings, and sends the row's `Delta` to its waiting
   coroutine;
4. drops rows that finished or whose client went away (`keep`).

Model work runs under a `ThreadBudget` shared by every in-process model of the
process, so a teacher and three students take turns on the cores instead of each
starting a thread pool of its own over all of them. The event loop only ever waits
on an `asyncio.Queue`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Sequence

import numpy as np

from lamini_serve.engines.base import Delta, EngineError, InvalidRequest, QueueFull, Request, StepModel, TokenLogprob, Usage
from lamini_serve.engines.sampling import log_softmax, new_generator, pick, top_logprobs
from lamini_serve.generation import TextGate

log = logging.getLogger(__name__)


class ThreadBudget:
    """The cores in-process models may use, and a lock so that they use them in turn.

    One budget per process: torch's intra-op pool and each ONNX Runtime session are
    sized to `threads`, and a model holds the lock for one forward step at a time.
    """

    def __init__(self, threads: int | None = None):
        self.threads = threads or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        self.lock = threading.Lock()
        self._torch_set = False

    def use_torch(self) -> None:
        if not self._torch_set:
            import torch

            torch.set_num_threads(self.threads)
            self._torch_set = True

    def __enter__(self):
        self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()


class Detokenizer:
    """Incremental decoding of one row: text for each new token, in O(1) tokens per step.

    Decodes a short window (from `prefix` to the end) and shows what it adds over the
    window's older part, unless it ends inside a multi-byte character (U+FFFD), which
    waits for the next token. Special tokens are not shown.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        decode = self.tokenizer.decode
        old = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        new = decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(new) <= len(old) or new.endswith("\ufffd") or not new.startswith(old):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return new[len(old):]

    def flush(self) -> str:
        """At the end: what is still waiting (an incomplete character shows as U+FFFD)."""
        decode = self.tokenizer.decode
        old = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        new = decode(self.ids[self.prefix:], skip_special_tokens=True)
        return new[len(old):] if new.startswith(old) else ""


@dataclass
class _Row:
    request: Request
    emit: Callable[[Delta | BaseException], None]
    detok: Detokenizer
    gate: TextGate
    rng: np.random.Generator
    seen: list[int]
    generated: Counter = field(default_factory=Counter)
    produced: int = 0
    last: int = -1


class BatchScheduler:
    def __init__(self, model: StepModel, tokenizer, eos_ids: Sequence[int], budget: ThreadBudget,
                 max_batch: int = 32, max_waiting: int = 256, name: str = "model"):
        self.model, self.tokenizer, self.budget = model, tokenizer, budget
        self.eos_ids = frozenset(int(e) for e in eos_ids)
        self.max_batch, self.max_waiting, self.name = max_batch, max_waiting, name
        self._waiting: deque[_Row] = deque()
        self._rows: list[_Row] = []
        self._cv = threading.Condition()
        self._closed = False
        self._token_text: dict[int, str] = {}
        self._thread = threading.Thread(target=self._loop, name=f"lamini-{name}", daemon=True)
        self._thread.start()

    # ---- gauges ------------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # ---- the async face ----------------------------------------------------------
    def check(self, request: Request) -> None:
        """Raise InvalidRequest for a request this model cannot serve as asked."""
        n, limit = len(request.prompt_ids), self.model.context_length
        if n == 0:
            raise InvalidRequest("the prompt is empty: give at least one token of text", param="prompt")
        total = n + request.params.max_new_tokens
        if total > limit:
            raise InvalidRequest(
                f"this model's context is {limit} tokens, but the prompt has {n} and max_tokens asks for "
                f"{request.params.max_new_tokens} more ({total}); shorten the prompt or lower max_tokens",
                param="max_tokens" if n < limit else "messages")
        self.check_ids(request.prompt_ids)

    def check_ids(self, ids: Sequence[int]) -> None:
        """Raise InvalidRequest for a token id this model does not have."""
        if ids and (max(ids) >= self.model.vocab_size or min(ids) < 0):
            raise InvalidRequest(f"the prompt holds a token id outside this model's vocabulary (0..{self.model.vocab_size - 1})",
                                 param="prompt")

    async def generate(self, request: Request) -> AsyncIterator[Delta]:
        """The request's deltas as they are produced. Leaving the loop early (a client
        that went away) cancels the row: it is dropped at the next step."""
        self.check(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone (server shutting down): nobody listens
                request.cancelled.set()

        self.submit(request, emit)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not request.cancelled.is_set():
                request.cancelled.set()
                with self._cv:
                    self._cv.notify()

    def submit(self, request: Request, emit: Callable[[Delta | BaseException], None]) -> None:
        row = _Row(request, emit, Detokenizer(self.tokenizer),
                   TextGate(request.params.stop, strip=request.strip),
                   new_generator(request.params.seed), list(request.prompt_ids))
        with self._cv:
            if self._closed:
                raise EngineError(f"{self.name} is shut down")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{self.name} has {len(self._waiting)} requests waiting already; retry shortly",
                                retry_after=1)
            self._waiting.append(row)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # ---- the loop ----------------------------------------------------------------
    def _admit(self) -> list[_Row]:
        """Waiting rows that join now (called holding the lock)."""
        if self._rows and not self.model.joins_running_batch:
            return []
        new: list[_Row] = []
        while self._waiting and len(self._rows) + len(new) < self.max_batch:
            row = self._waiting.popleft()
            if row.request.cancelled.is_set():
                self._finish(row, "abort")
            else:
                new.append(row)
        return new

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._waiting and not self._rows:
                    self._cv.wait()
                if self._closed:
                    for row in list(self._waiting) + self._rows:
                        row.emit(EngineError(f"{self.name} shut down before the answer was finished"))
                    self._waiting.clear()
                    self._rows.clear()
                    return
                new = self._admit()
            try:
                self._iteration(new)
            except Exception as exc:  # a model failure ends this batch, not the server
                log.exception("%s: a decode step failed", self.name)
                error = EngineError(f"{self.name} failed while generating: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}")
                for row in self._rows + new:
                    row.emit(error)
                self._rows = []
                try:
                    self.model.keep([])
                except Exception:  # the model is already broken; the next add starts afresh
                    pass

    def _iteration(self, new: list[_Row]) -> None:
        # Rows whose client left are dropped before their step is paid for.
        gone = [i for i, r in enumerate(self._rows) if r.request.cancelled.is_set()]
        if gone:
            for i in gone:
                self._finish(self._rows[i], "abort")
            self._keep([i for i in range(len(self._rows)) if i not in set(gone)])
        parts = []
        with self.budget:
            if self._rows:
                parts.append(self.model.step([r.last for r in self._rows]))
            if new:
                parts.append(self.model.add([r.request.prompt_ids for r in new]))
        if not parts:
            return
        self._rows.extend(new)
        logits = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        keep = []
        for i, row in enumerate(self._rows):
            if not self._advance(row, logits[i]):
                keep.append(i)
        if len(keep) < len(self._rows):
            self._keep(keep)

    def _keep(self, rows: list[int]) -> None:
        with self.budget:
            self.model.keep(rows)
        self._rows = [self._rows[i] for i in rows]

    def _advance(self, row: _Row, logits: np.ndarray) -> bool:
        """Pick, decode and send one token of `row`; True when the row is finished."""
        req, params = row.request, row.request.params
        banned = tuple(self.eos_ids) if params.ignore_eos else ()
        token = pick(logits, params, row.rng, row.seen if params.repetition_penalty != 1.0 else (),
                     row.generated, banned)
        row.last = token
        row.produced += 1
        row.seen.append(token)
        row.generated[token] += 1
        lp = None
        if req.logprobs is not None:
            all_lp = log_softmax(logits)
            lp = [TokenLogprob(token, self.token_text(token), float(all_lp[token]),
                               [(t, self.token_text(t), v) for t, v in top_logprobs(all_lp, req.logprobs)])]
        ended = token in self.eos_ids and not params.ignore_eos
        text = "" if ended else row.gate.feed(row.detok.add(token))
        if row.gate.stopped:
            reason = "stop"
        elif ended:
            reason = "stop"
        elif row.produced >= params.max_new_tokens:
            reason = "length"
        else:
            reason = None
        if reason is not None:
            if not row.gate.stopped:
                text += row.gate.feed(row.detok.flush()) + row.gate.close()
            row.emit(Delta(text, [token], lp, reason, Usage(len(req.prompt_ids), row.produced)))
            return True
        row.emit(Delta(text, [token], lp))
        return False

    def _finish(self, row: _Row, reason: str) -> None:
        row.emit(Delta(finish_reason=reason, usage=Usage(len(row.request.prompt_ids), row.produced)))

    def token_text(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token])
        return text

    # ---- echo: the prompt's own log-probabilities --------------------------------------
    def score(self, ids: Sequence[int], k: int | None) -> list[TokenLogprob | None]:
        """Teacher-forced log-probabilities of every prompt token after the first (blocking:
        call it from a worker thread)."""
        ids = [int(i) for i in ids]
        self.check_ids(ids)
        if len(ids) > self.model.context_length:
            raise InvalidRequest(f"the prompt has {len(ids)} tokens; this model's context is {self.model.context_length}",
                                 param="prompt")
        out: list[TokenLogprob | None] = [None]
        if len(ids) < 2:
            return out
        with self.budget:
            logits = self.model.score(ids)
        lps = log_softmax(np.asarray(logits))
        for pos, tok in enumerate(ids[1:]):
            row = lps[pos]
            top = [(t, self.token_text(t), v) for t, v in top_logprobs(row, k or 0)]
            out.append(TokenLogprob(tok, self.token_text(tok), float(row[tok]), top))
        return out

