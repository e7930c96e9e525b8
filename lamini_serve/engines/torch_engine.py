"""In-process generation with transformers: batched, streamed, for both families.

This is the engine behind `lamini chat`, the embedded teacher's answers in
`lamini data`, and the torch backend of `lamini serve`. It takes OpenAI-style
conversations and returns text; the ModelSpec decides how they become tokens.
"""

from __future__ import annotations

import threading
from typing import Iterator, Sequence

from lamini_serve.generation import (
    Completion,
    SamplingParams,
    finish,
    visible_pieces,
)
from lamini_serve.models import Family, ModelSpec
from lamini_serve.prompts import Message


class TorchEngine:
    """A loaded model + tokenizer that answers conversations."""

    def __init__(self, spec: ModelSpec, device: str = "auto", dtype: str = "auto"):
        self._attach(spec, spec.load_model(device=device, dtype=dtype), spec.load_tokenizer())

    def _attach(self, spec: ModelSpec, model, tokenizer) -> None:
        self.spec, self.model, self.tokenizer = spec, model, tokenizer
        self.device = model.device
        self.eos_ids = self._find_eos_ids()

    @classmethod
    def from_loaded(cls, spec: ModelSpec, model, tokenizer) -> "TorchEngine":
        """An engine around a model already in memory (a student mid-training, say)."""
        eng = cls.__new__(cls)
        eng._attach(spec, model, tokenizer)
        return eng

    @classmethod
    def from_name(cls, name: str, prompt_format: str | None = None, **kw) -> "TorchEngine":
        return cls(ModelSpec.resolve(name, prompt_format=prompt_format), **kw)

    def _find_eos_ids(self) -> list[int]:
        ids: list[int] = []
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        for x in (gen_eos if isinstance(gen_eos, list) else [gen_eos]) + [self.tokenizer.eos_token_id]:
            if x is not None and x not in ids:
                ids.append(int(x))
        return ids

    # ---- inputs -------------------------------------------------------------
    def prompt_text(self, messages: Sequence[Message]) -> str:
        return self.spec.render(messages, self.tokenizer)

    def encode(self, conversations: Sequence[Sequence[Message]]):
        return self._encode_texts([self.prompt_text(m) for m in conversations])

    def _encode_texts(self, texts: Sequence[str]):
        enc = self.tokenizer(
            list(texts),
            return_tensors="pt",
            padding=True,
            add_special_tokens=self.spec.add_special_tokens,
            return_token_type_ids=False,
        )
        return enc.to(self.device)

    def _gen_kwargs(self, params: SamplingParams) -> dict:
        import torch

        if params.seed is not None:
            torch.manual_seed(params.seed)
        kw: dict = dict(
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            repetition_penalty=params.repetition_penalty,
        )
        if params.ignore_eos:
            kw["min_new_tokens"] = params.max_new_tokens
        if params.temperature > 0:
            kw.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        stops = self.stops(params)
        if stops:
            kw.update(stop_strings=list(stops), tokenizer=self.tokenizer)
        return kw

    def stops(self, params: SamplingParams) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.spec.stop_strings + params.stop))

    def _new_tokens(self, out, enc):
        # A decoder-only model returns prompt + answer; an encoder-decoder only the answer
        # (after its decoder start token).
        if self.spec.family is Family.CAUSAL:
            return out[:, enc["input_ids"].shape[1]:]
        return out[:, 1:]

    # ---- generation ---------------------------------------------------------
    def generate(self, conversations: Sequence[Sequence[Message]], params: SamplingParams | None = None) -> list[Completion]:
        """Answer a batch of conversations in one padded `generate` call."""
        return self._generate(self.encode(conversations), params or SamplingParams())

    def complete(self, prompts: Sequence[str], params: SamplingParams | None = None) -> list[Completion]:
        """Continue plain texts (no prompt format, no chat template): a completions endpoint."""
        return self._generate(self._encode_texts(prompts), params or SamplingParams())

    def _generate(self, enc, params: SamplingParams) -> list[Completion]:
        import torch

        if enc["input_ids"].shape[0] == 0:
            return []
        with torch.inference_mode():
            out = self.model.generate(**enc, **self._gen_kwargs(params))
        new = self._new_tokens(out, enc)
        stops = self.stops(params)
        results = []
        pad = self.tokenizer.pad_token_id
        for i, row in enumerate(new.tolist()):
            n_prompt = int(enc["attention_mask"][i].sum())
            # Count what the model produced: up to and including its first end token.
            n, ended = 0, False
            for tok in row:
                n += 1
                if tok in self.eos_ids:
                    ended = True
                    break
            else:
                while n and row[n - 1] == pad and pad not in self.eos_ids:
                    n -= 1
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            results.append(finish(text, stops, n_prompt, n, ended, params.max_new_tokens))
        return results

    def stream(self, messages: Sequence[Message], params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the answer's text piece by piece as the model produces it."""
        import torch

        _TokenStreamer = _token_streamer_class()

        params = params or SamplingParams()
        enc = self.encode([messages])
        streamer = _TokenStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**enc, **self._gen_kwargs(params), streamer=streamer)
            except BaseException as exc:  # surfaced in the caller's thread below
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from visible_pieces(streamer, self.stops(params))
        thread.join()
        if failure:
            raise failure[0]


def _token_streamer_class():
    from transformers import TextIteratorStreamer

    class TokenStreamer(TextIteratorStreamer):
        """Emits text after every token, not only at word ends as transformers' streamer does.

        The answer so far is decoded whole each time and the new tail is sent, unless
        it ends inside a multi-byte character (decoded as U+FFFD) or an earlier token
        decodes differently now: then it waits for the next token.
        """

        def put(self, value):
            if value.dim() > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd"):
                return
            shown = getattr(self, "_shown", "")
            if not text.startswith(shown):
                return
            printable = text[len(shown):]
            self._shown = text
            self.print_len = len(text)
            if printable:
                self.on_finalized_text(printable)

    return TokenStreamer
