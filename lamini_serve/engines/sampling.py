"""Picking a row's next token, and its log-probabilities, with the row's own settings.

Every in-process engine samples here, one row at a time, so each request keeps its
own temperature, penalties and random generator (a `numpy.random.Generator` seeded
from the request: two requests with the same seed give the same text whatever else
is in the batch, and no request touches a process-wide seed).

The order is transformers': repetition penalty, then OpenAI's presence and
frequency penalties, temperature, top-k, top-p. Log-probabilities are those of the
model's own distribution (before any of that), as vLLM and OpenAI report them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

from lamini_serve.generation import SamplingParams


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64, copy=False)
    x = x - x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def top_logprobs(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely tokens of one row, best first."""
    if k <= 0:
        return []
    idx = np.argpartition(-logprobs, k - 1)[:k]
    idx = idx[np.argsort(-logprobs[idx], kind="stable")]
    return [(int(i), float(logprobs[i])) for i in idx]


def new_generator(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(seed)


def pick(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
         seen: Sequence[int] = (), generated: Counter | None = None, banned: Sequence[int] = ()) -> int:
    """The next token for one row. `logits`: float32 [vocab] (not modified).
    `seen`: prompt and generated ids (repetition penalty); `generated`: counts of the
    generated ids (presence/frequency penalties); `banned`: ids never to pick (eos under
    ignore_eos)."""
    needs_copy = (params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty
                  or banned or params.temperature > 0)
    x: Any = logits.astype(np.float32, copy=True) if needs_copy else logits
    if params.repetition_penalty != 1.0 and len(seen):
        idx = np.fromiter(set(seen), dtype=np.int64)
        idx = idx[idx < x.shape[0]]
        v = x[idx]
        x[idx] = np.where(v > 0, v / params.repetition_penalty, v * params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and generated:
        ids = np.fromiter(generated.keys(), dtype=np.int64)
        counts = np.fromiter(generated.values(), dtype=np.float32)
        x[ids] -= params.presence_penalty + params.frequency_penalty * counts
    if len(banned):
        x[list(banned)] = -np.inf
    if params.temperature == 0:
        return int(x.argmax())
    x /= params.temperature
    if params.top_k and params.top_k < x.shape[0]:
        kth = np.partition(x, -params.top_k)[-params.top_k]
        x[x < kth] = -np.inf
    x -= x.max()
    probs = np.exp(x, dtype=np.float64)
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        sorted_p = probs[order]
        keep = np.cumsum(sorted_p) - sorted_p < params.top_p  # always keeps the top token
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    cum = np.cumsum(probs)
    u = rng.random() * cum[-1]
    return int(min(np.searchsorted(cum, u, side="right"), probs.shape[0] - 1))
