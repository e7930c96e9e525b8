"""An in-process engine (torch or onnx) as the server sees it.

    engine = InProcessEngine.load(name, spec, kind="onnx"|"torch", budget=ThreadBudget(...),
                                  max_batch=32, max_waiting=256)
    engine.kind, engine.name, engine.spec, engine.tokenizer, engine.context_length
    engine.is_decoder_only                       # echo + logprobs needs it
    engine.chat_ids(messages) -> list[int]       # the prompt for a conversation (ModelSpec.render);
                                                 # raises InvalidRequest for bad messages
    engine.text_ids(text) -> list[int]           # a plain completion prompt (no prompt format)
    engine.default_stops -> tuple[str, ...]      # the prompt format's stop strings (chat only)
    async for delta in engine.generate(request): # Request -> Deltas; raises QueueFull before the
        ...                                      # first delta, InvalidRequest if prompt + max_tokens
                                                 # exceed the context; closing the iterator cancels
    await engine.score(ids, k) -> list[TokenLogprob | None]   # echo: the prompt's own log-probs
                                                 # (first entry None), decoder-only only
    engine.running, engine.waiting               # gauges
    engine.close()

The model is prompted exactly as `lamini chat` prompts it (`ModelSpec.render`), and
its tokens come from the same `BatchScheduler` whatever runs the forward pass.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Sequence

from lamini_serve.engines.base import Delta, InvalidRequest, Request, TokenLogprob
from lamini_serve.engines.scheduler import BatchScheduler, ThreadBudget
from lamini_serve.errors import LaminiError
from lamini_serve.models import Family, ModelSpec
from lamini_serve.prompts import check_messages


class InProcessEngine:
    def __init__(self, name: str, spec: ModelSpec, kind: str, tokenizer, steps, eos_ids: Sequence[int],
                 budget: ThreadBudget, max_batch: int = 32, max_waiting: int = 256):
        self.name, self.spec, self.kind, self.tokenizer = name, spec, kind, tokenizer
        self.steps = steps
        self.scheduler = BatchScheduler(steps, tokenizer, eos_ids, budget, max_batch, max_waiting, name)
        self.state = "ready"

    @classmethod
    def load(cls, name: str, spec: ModelSpec, kind: str, budget: ThreadBudget | None = None,
             max_batch: int = 32, max_waiting: int = 256, device: str = "auto", dtype: str = "auto",
             **ort_options: Any) -> "InProcessEngine":
        """Load `spec` on the onnx or torch engine (blocking: model files are read now)."""
        budget = budget or ThreadBudget()
        if kind == "onnx":
            from lamini_serve.engines.onnx_steps import OnnxSteps
            from lamini_serve.engines.ort_engine import OrtEngine

            ort = OrtEngine(spec, threads=budget.threads, io_binding=False, **ort_options)
            steps, tokenizer, eos = OnnxSteps(ort), ort.tokenizer, ort.eos_ids
        elif kind == "torch":
            from lamini_serve.engines.torch_engine import TorchEngine
            from lamini_serve.engines.torch_steps import TorchSteps

            budget.use_torch()
            eng = TorchEngine(spec, device=device, dtype=dtype)
            steps, tokenizer, eos = TorchSteps.from_engine(eng), eng.tokenizer, eng.eos_ids
        else:
            raise LaminiError(f"unknown in-process engine {kind!r}; use onnx or torch")
        return cls(name, spec, kind, tokenizer, steps, eos, budget, max_batch, max_waiting)

    # ---- what the server asks ----------------------------------------------------
    @property
    def context_length(self) -> int:
        return self.steps.context_length

    @property
    def is_decoder_only(self) -> bool:
        return self.spec.family is Family.CAUSAL

    @property
    def default_stops(self) -> tuple[str, ...]:
        return self.spec.stop_strings

    @property
    def running(self) -> int:
        return self.scheduler.running

    @property
    def waiting(self) -> int:
        return self.scheduler.waiting

    def chat_ids(self, messages: Sequence[Any]) -> list[int]:
        try:
            text = self.spec.render(check_messages(messages), self.tokenizer)
        except LaminiError as exc:
            raise InvalidRequest(str(exc), param="messages") from None
        return self._encode(text, self.spec.add_special_tokens)

    def text_ids(self, text: str) -> list[int]:
        # A completion continues the text as given: no prompt format, and special tokens
        # only where the model cannot do without them (T5's closing </s>).
        return self._encode(text, self.spec.family is Family.SEQ2SEQ or self.spec.add_special_tokens)

    def ids_text(self, ids: Sequence[int]) -> str:
        """The text of a prompt given as token ids (InvalidRequest for an id the model lacks)."""
        self.scheduler.check_ids(ids)
        return self.tokenizer.decode(list(ids))

    def _encode(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special, return_token_type_ids=False)["input_ids"])

    def generate(self, request: Request) -> AsyncIterator[Delta]:
        return self.scheduler.generate(request)

    async def score(self, ids: Sequence[int], k: int | None) -> list[TokenLogprob | None]:
        if not self.is_decoder_only:
            raise InvalidRequest(f"{self.name} is an encoder-decoder model: its prompt is read by the encoder and has "
                                 "no log-probabilities; echo with logprobs needs a decoder-only model", param="echo")
        return await asyncio.to_thread(self.scheduler.score, ids, k)

    def close(self) -> None:
        self.scheduler.close()
