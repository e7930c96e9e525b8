"""How close a student speaks to its teacher, on instructions neither was trained on.

- `greedy_answers`: what a model answers at temperature 0 (what `lamini serve` gives by default);
- ROUGE-L of those answers against the teacher's (`lamini_serve.rouge`): does it say the same things;
- `perplexity`: the teacher's perplexity of an answer set given the instructions. A student's
  answers divided by the teacher's own answers (`relative perplexity`) says whether the student
  writes text the teacher finds natural: 1 is as fluent as the teacher, word salad is in the
  hundreds. ROUGE-L alone rewards copying words in any order; perplexity alone rewards
  repeating one phrase (a loop is easy to predict once it has started), so
- `distinct_2`: the share of an answer set's word bigrams that are different (Li et al.,
  2016): near 1 for varied text, near 0 for "the the the".

Both work on models in memory (a student mid-training, a checkpoint just loaded), on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from lamini_serve.models import Family


def greedy_answers(model, tok, spec, instructions: Sequence[str], max_new_tokens: int = 128,
                   repetition_penalty: float = 1.0, batch: int = 16) -> list[Any]:
    """Completions (text, finish_reason) of a model in memory, one user turn each, greedy."""
    from lamini_serve.engines.torch_engine import TorchEngine
    from lamini_serve.generation import SamplingParams

    was_training = model.training
    eng = TorchEngine.from_loaded(spec, model.eval(), tok)
    side = tok.padding_side
    tok.padding_side = "left" if spec.family is Family.CAUSAL else "right"
    params = SamplingParams(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
    out = []
    try:
        for i in range(0, len(instructions), batch):
            convs = [[{"role": "user", "content": t}] for t in instructions[i:i + batch]]
            out += eng.generate(convs, params)
    finally:
        tok.padding_side = side
        if was_training:
            model.train()
    return out


@dataclass
class Perplexity:
    nll: float  # summed over every scored token, in nats
    tokens: int

    @property
    def value(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")


def perplexity(model, tok, spec, instructions: Sequence[str], answers: Sequence[str], ended: Sequence[bool],
               batch: int = 8) -> Perplexity:
    """A decoder-only model's perplexity of `answers` after its prompt for each instruction
    (the end-of-sequence token counted where the answer ended by itself). Empty answers
    that ended score their end token alone: saying nothing is not free."""
    import torch

    from lamini_serve.train.data import IGNORE, CausalCollator

    if spec.family is not Family.CAUSAL:
        raise ValueError("perplexity is measured with a decoder-only model (the teacher)")
    collate = CausalCollator(pad_id=0)  # padding is masked out and labelled -100
    rows = []
    for inst, ans, end in zip(instructions, answers, ended):
        prompt = tok(spec.prompt(inst, tok), add_special_tokens=spec.add_special_tokens)["input_ids"]
        answer = tok(ans, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if end else [])
        if answer:
            rows.append((prompt, answer))
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            padded = collate([{"input_ids": p + a, "labels": [IGNORE] * len(p) + a} for p, a in rows[i:i + batch]])
            logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits[:, :-1].float()
            target = padded["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                    ignore_index=IGNORE, reduction="sum")
            total += float(nll)
            count += int((target != IGNORE).sum())
    if was_training:
        model.train()
    return Perplexity(total, count)


def distinct_2(texts: Sequence[str]) -> float:
    """Distinct word bigrams over all word bigrams of `texts` (0 when there are none)."""
    import re

    seen, total = set(), 0
    for t in texts:
        words = re.findall(r"\w+|[^\w\s]", t.lower())
        pairs = list(zip(words, words[1:]))
        seen.update(pairs)
        total += len(pairs)
    return len(seen) / total if total else 0.0
