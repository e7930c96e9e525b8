"""The scheduler every in-process engine shares, on a small numpy bigram model.

The bigram model (next-token logits = a fixed random table row of the last token)
runs the real scheduler loop in microseconds per step, so these tests can count
steps, race requests and cancel them precisely. The real models run through the
same scheduler in test_steps.py and test_server.py.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from lamini_serve.engines.base import InvalidRequest, QueueFull, Request
from lamini_serve.engines.scheduler import BatchScheduler, Detokenizer, ThreadBudget
from lamini_serve.generation import SamplingParams


class Bigram:
    """logits[row] = table[last token of row]; records how many rows each call saw."""

    def __init__(self, vocab: int, joins: bool = True, delay: float = 0.0, seed: int = 0, eos_boost: float = 0.0,
                 eos: int = 2):
        rng = np.random.default_rng(seed)
        self.table = rng.normal(0, 3, (vocab, vocab)).astype(np.float32)
        self.table[:, eos] += eos_boost
        self.vocab_size, self.context_length, self.joins_running_batch = vocab, 64, joins
        self.delay, self.last, self.calls = delay, [], []
        self.active = 0
        self.overlap = False

    def _busy(self):
        self.active += 1
        self.overlap |= self.active > 1
        time.sleep(self.delay)
        self.active -= 1

    def add(self, prompts):
        if self.last and not self.joins_running_batch:
            raise RuntimeError("static batch: add while running")
        self._busy()
        self.calls.append(("add", len(prompts)))
        self.last += [p[-1] for p in prompts]
        return self.table[[p[-1] for p in prompts]]

    def step(self, tokens):
        assert len(tokens) == len(self.last)
        self._busy()
        self.calls.append(("step", len(tokens)))
        self.last = list(tokens)
        return self.table[list(tokens)]

    def keep(self, rows):
        self.last = [self.last[i] for i in rows]

    def score(self, ids):
        return self.table[list(ids[:-1])]


def make(tokenizer, **kw):
    sched_kw = {k: kw.pop(k) for k in ("max_batch", "max_waiting") if k in kw}
    model = Bigram(len(tokenizer), **kw)
    return model, BatchScheduler(model, tokenizer, [2], kw.get("budget") or ThreadBudget(1), name="bigram", **sched_kw)


def req(prompt, strip=False, **params):
    params.setdefault("max_new_tokens", 12)
    return Request(id="r", prompt_ids=list(prompt), params=SamplingParams(**params), strip=strip)


async def collect(sched, request):
    deltas = [d async for d in sched.generate(request)]
    return deltas


def run(coro):
    return asyncio.run(coro)


def ids_of(deltas):
    return [t for d in deltas for t in d.token_ids]


def test_a_seeded_request_gives_the_same_tokens_alone_and_in_a_crowded_batch(tiny_tokenizer):
    model, sched = make(tiny_tokenizer)
    try:
        alone = run(collect(sched, req([5, 6], temperature=1.0, seed=7, ignore_eos=True)))

        async def crowd():
            others = [collect(sched, req([9 + i], temperature=1.0, ignore_eos=True)) for i in range(5)]
            return await asyncio.gather(collect(sched, req([5, 6], temperature=1.0, seed=7, ignore_eos=True)), *others)

        crowded = run(crowd())[0]
        other_seed = run(collect(sched, req([5, 6], temperature=1.0, seed=8, ignore_eos=True)))
        assert ids_of(alone) == ids_of(crowded)
        assert ids_of(alone) != ids_of(other_seed)
        assert max(n for kind, n in model.calls if kind == "step") > 1  # they really shared a batch
    finally:
        sched.close()


def test_greedy_rows_follow_the_model_and_usage_and_finish_reason_are_exact(tiny_tokenizer):
    model, sched = make(tiny_tokenizer)
    try:
        deltas = run(collect(sched, req([5], max_new_tokens=9, ignore_eos=True)))
        expect, last = [], 5
        for _ in range(9):
            last = int(np.where(np.arange(model.vocab_size) == 2, -np.inf, model.table[last]).argmax())
            expect.append(last)
        assert ids_of(deltas) == expect
        final = deltas[-1]
        assert final.finish_reason == "length" and final.usage.prompt_tokens == 1 and final.usage.completion_tokens == 9
        assert all(d.finish_reason is None for d in deltas[:-1])
        assert "".join(d.text for d in deltas) == tiny_tokenizer.decode(expect, skip_special_tokens=True)
    finally:
        sched.close()


def test_the_end_token_stops_a_row_and_counts_as_produced(tiny_tokenizer):
    model, sched = make(tiny_tokenizer, eos_boost=100.0)  # eos (2) always wins
    try:
        deltas = run(collect(sched, req([5], max_new_tokens=9)))
        assert ids_of(deltas) == [2]
        assert deltas[-1].finish_reason == "stop" and deltas[-1].usage.completion_tokens == 1
        assert "".join(d.text for d in deltas) == ""
    finally:
        sched.close()


def test_a_stop_string_cuts_the_text_and_ends_the_row(tiny_tokenizer):
    model, sched = make(tiny_tokenizer)
    try:
        free = run(collect(sched, req([5], max_new_tokens=20, ignore_eos=True)))
        text = "".join(d.text for d in free)
        stop = text[6:9]
        cut = text[:text.find(stop)]
        stopped = run(collect(sched, req([5], max_new_tokens=20, ignore_eos=True, stop=(stop,))))
        assert "".join(d.text for d in stopped) == cut
        assert stopped[-1].finish_reason == "stop"
        assert len(ids_of(stopped)) < 20 and stopped[-1].usage.completion_tokens == len(ids_of(stopped))
    finally:
        sched.close()


def test_logprobs_are_the_models_own_and_top_k_is_sorted(tiny_tokenizer):
    model, sched = make(tiny_tokenizer)
    try:
        deltas = run(collect(sched, Request("r", [5], SamplingParams(max_new_tokens=3, ignore_eos=True), logprobs=3)))
        first = deltas[0].logprobs[0]
        row = model.table[5].astype(np.float64)
        lp = row - np.log(np.exp(row - row.max()).sum()) - row.max()
        assert first.logprob == pytest.approx(lp[first.token_id], abs=1e-4)
        assert [t for t, _, _ in first.top] == list(np.argsort(-lp)[:3])
        assert first.top[0][2] >= first.top[1][2] >= first.top[2][2]
    finally:
        sched.close()


def test_a_client_that_leaves_frees_its_row_at_the_next_step(tiny_tokenizer):
    model, sched = make(tiny_tokenizer, delay=0.01)
    try:
        async def leave_early():
            gen = sched.generate(req([5], max_new_tokens=60, ignore_eos=True))
            got = [await gen.__anext__() for _ in range(3)]
            await gen.aclose()
            return got

        assert len(run(leave_early())) == 3
        deadline = time.monotonic() + 2
        while sched.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sched.running == 0
        steps = sum(1 for kind, _ in model.calls if kind == "step")
        assert steps < 10  # not the 60 it asked for
        assert len(ids_of(run(collect(sched, req([7], max_new_tokens=4, ignore_eos=True))))) == 4  # next one served
    finally:
        sched.close()


def test_a_full_queue_refuses_with_queue_full(tiny_tokenizer):
    model, sched = make(tiny_tokenizer, delay=0.02, max_batch=1, max_waiting=1)
    try:
        async def flood():
            first = asyncio.ensure_future(collect(sched, req([5], max_new_tokens=30, ignore_eos=True)))
            await asyncio.sleep(0.1)  # the first is running; the next waits; the third is refused
            second = asyncio.ensure_future(collect(sched, req([6], max_new_tokens=2, ignore_eos=True)))
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFull) as info:
                await collect(sched, req([7], max_new_tokens=2))
            assert info.value.status == 429 and info.value.retry_after
            return await first, await second

        a, b = run(flood())
        assert len(ids_of(a)) == 30 and len(ids_of(b)) == 2
    finally:
        sched.close()


def test_continuous_batching_lets_a_short_request_finish_first(tiny_tokenizer):
    model, sched = make(tiny_tokenizer, delay=0.005)
    try:
        alone_long = ids_of(run(collect(sched, req([5], max_new_tokens=40, ignore_eos=True))))
        alone_short = ids_of(run(collect(sched, req([9], max_new_tokens=3, ignore_eos=True))))
        order = []

        async def race():
            async def one(name, r):
                out = await collect(sched, r)
                order.append(name)
                return out
            long = asyncio.ensure_future(one("long", req([5], max_new_tokens=40, ignore_eos=True)))
            await asyncio.sleep(0.05)
            short = await one("short", req([9], max_new_tokens=3, ignore_eos=True))
            return await long, short

        long, short = run(race())
        assert order == ["short", "long"]
        assert ids_of(long) == alone_long and ids_of(short) == alone_short
    finally:
        sched.close()


def test_a_static_batch_model_waits_for_the_running_batch(tiny_tokenizer):
    model, sched = make(tiny_tokenizer, joins=False, delay=0.005)
    try:
        order = []

        async def race():
            async def one(name, r):
                await collect(sched, r)
                order.append(name)
            long = asyncio.ensure_future(one("long", req([5], max_new_tokens=30, ignore_eos=True)))
            await asyncio.sleep(0.05)
            await one("short", req([9], max_new_tokens=2, ignore_eos=True))
            await long

        run(race())
        assert order == ["long", "short"]
    finally:
        sched.close()


def test_prompt_and_max_tokens_beyond_the_context_is_an_invalid_request(tiny_tokenizer):
    model, sched = make(tiny_tokenizer)
    try:
        with pytest.raises(InvalidRequest, match="context is 64 tokens"):
            run(collect(sched, req([5] * 60, max_new_tokens=5)))
        with pytest.raises(InvalidRequest, match="empty"):
            run(collect(sched, req([], max_new_tokens=5)))
    finally:
        sched.close()


def test_models_that_share_a_budget_never_compute_at_the_same_time(tiny_tokenizer):
    budget = ThreadBudget(1)
    counter = {"active": 0, "overlap": False}
    lock = threading.Lock()
    models = [Bigram(len(tiny_tokenizer), delay=0.002) for _ in range(2)]
    for m in models:  # both models report to one counter of steps in progress
        def busy(self=m):
            with lock:
                counter["active"] += 1
                counter["overlap"] |= counter["active"] > 1
            time.sleep(self.delay)
            with lock:
                counter["active"] -= 1
        m._busy = busy
    a, b = (BatchScheduler(m, tiny_tokenizer, [2], budget, name=n) for m, n in zip(models, "ab"))
    try:
        async def both():
            return await asyncio.gather(collect(a, req([5], max_new_tokens=20, ignore_eos=True)),
                                        collect(b, req([6], max_new_tokens=20, ignore_eos=True)))
        run(both())
        assert not counter["overlap"]
    finally:
        a.close(), b.close()


def test_the_detokenizer_shows_whole_characters_and_joins_to_the_full_text(tiny_tokenizer):
    text = "café naïve 😀 ok"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = Detokenizer(tiny_tokenizer)
    pieces = [detok.add(t) for t in ids]
    assert "".join(pieces) + detok.flush() == text
    assert not any("\ufffd" in p for p in pieces)
