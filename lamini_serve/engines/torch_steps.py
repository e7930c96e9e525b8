"""`TorchSteps`: a transformers model's forward pass as a `StepModel` (a static batch).

    steps = TorchSteps.from_engine(TorchEngine(spec, device="cpu"))
    # or TorchSteps(model, tokenizer, Family.CAUSAL, pad_id=..., eos_ids=...)
    logits = steps.add([[5, 6, 7], [8]])   # float32 numpy [2, vocab]
    logits = steps.step([11, 12])
    steps.keep([1])                        # row 0 finished

The model runs its own forward with a transformers cache (`DynamicCache`, or
`EncoderDecoderCache` for T5-style models), `use_cache=True`, under
`torch.inference_mode()`; no `generate` loop, so the scheduler samples every row
with that row's own settings, as it does for ONNX.

The batch is static (`joins_running_batch = False`): `add` starts a batch and may
only be called when no row is running. Joining would mean padding a transformers
cache on the left, which its cache classes do not offer; requests that arrive
together are still generated together.

Decoder-only: prompts are padded on the LEFT, so every row's next token is in the
last column; the attention mask grows by one column of ones per step, and
position_ids come from its cumulative sum (GPT-2 adds position embeddings and
would otherwise count the padding). Encoder-decoder: the encoder runs once over the
right-padded prompts; the decoder starts from `decoder_start_token_id` and runs one
token per step against the cached cross-attention key/values.

`keep` selects rows in the cache (`Cache.batch_select_indices`, present on both
`DynamicCache` and `EncoderDecoderCache` in transformers 4.57) and in the mask and
encoder outputs. Leading columns that only padding of a finished row needed are not
trimmed here: in a static batch they are at most the prompts' length difference.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np

from lamini_serve.engines.base import InvalidRequest
from lamini_serve.engines.onnx_steps import context_length_from_config
from lamini_serve.models import Family


class TorchSteps:
    """A transformers model + tokenizer as a `StepModel` over one static batch."""

    joins_running_batch = False

    def __init__(self, model, tokenizer, family: Family, pad_id: int | None = None,
                 eos_ids: Sequence[int] | None = None, decoder_start_id: int | None = None):
        """`pad_id` defaults to the tokenizer's pad token (else the first end token);
        `decoder_start_id` (encoder-decoder only) to the model config's."""
        import torch  # noqa: F401  (fail early if missing)

        self.model, self.tokenizer, self.family = model, tokenizer, Family(family)
        self.device = model.device
        eos = list(eos_ids or [])
        if not eos:
            for x in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
                for e in (x if isinstance(x, list) else [x]):
                    if e is not None and int(e) not in eos:
                        eos.append(int(e))
        self.eos_ids = eos
        pad = pad_id if pad_id is not None else tokenizer.pad_token_id
        if pad is None:
            pad = eos[0] if eos else 0
        self.pad_id = int(pad)
        if self.family is Family.SEQ2SEQ:
            start = decoder_start_id
            if start is None:
                start = getattr(model.generation_config, "decoder_start_token_id", None)
            if start is None:
                start = model.config.decoder_start_token_id
            self.decoder_start = int(start if start is not None else self.pad_id)
        config = model.config.to_dict()
        self.context_length = context_length_from_config(config, tokenizer, self.family)
        head = model.get_output_embeddings()
        self.vocab_size = int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)
        # Decoder-only models that can skip the lm_head on all but the last position.
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._reset()

    @classmethod
    def from_engine(cls, engine) -> "TorchSteps":
        """From a loaded `TorchEngine` (its model, tokenizer, family and end tokens)."""
        return cls(engine.model, engine.tokenizer, engine.spec.family, eos_ids=engine.eos_ids)

    def _reset(self) -> None:
        self.cache = None
        self.mask = None  # decoder-only: [rows, past + 1]; encoder-decoder: the encoder's mask
        self.encoder_out = None  # encoder-decoder: BaseModelOutput of the encoder
        self.rows = 0

    # ---- the StepModel -----------------------------------------------------------
    def add(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        import torch

        if self.rows:
            raise RuntimeError("TorchSteps runs a static batch: add is called only when no row is running")
        prompts = [[int(t) for t in p] for p in prompts]
        if not prompts:
            return np.zeros((0, self.vocab_size), dtype=np.float32)
        if any(len(p) == 0 for p in prompts):
            raise InvalidRequest("an empty prompt cannot be continued; give at least one token of text", param="prompt")
        n, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        left = self.family is Family.CAUSAL  # an encoder pads on the right, a decoder on the left
        for i, p in enumerate(prompts):
            cols = slice(width - len(p), width) if left else slice(0, len(p))
            ids[i, cols] = torch.tensor(p)
            mask[i, cols] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            if self.family is Family.SEQ2SEQ:
                from transformers.cache_utils import DynamicCache, EncoderDecoderCache

                from transformers.modeling_outputs import BaseModelOutput

                hidden = self.model.get_encoder()(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
                self.encoder_out = BaseModelOutput(last_hidden_state=hidden)
                self.mask = mask
                self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
                start = torch.full((n, 1), self.decoder_start, dtype=torch.long, device=self.device)
                logits = self._decode(start)
            else:
                from transformers.cache_utils import DynamicCache

                self.mask = mask
                self.cache = DynamicCache()
                logits = self._forward(ids)
        self.rows = n
        return logits

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        import torch

        if len(tokens) != self.rows:
            raise RuntimeError(f"step got {len(tokens)} tokens for {self.rows} running rows")
        if not self.rows:
            return np.zeros((0, self.vocab_size), dtype=np.float32)
        x = torch.tensor([[int(t)] for t in tokens], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            if self.family is Family.SEQ2SEQ:
                return self._decode(x)
            self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
            return self._forward(x)

    def keep(self, rows: Sequence[int]) -> None:
        import torch

        rows = [int(r) for r in rows]
        if not rows:
            self._reset()
            return
        if rows == list(range(self.rows)):
            return
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            self.cache.batch_select_indices(idx)
            self.mask = self.mask[idx]
            if self.encoder_out is not None:
                self.encoder_out = type(self.encoder_out)(last_hidden_state=self.encoder_out.last_hidden_state[idx])
        self.rows = len(rows)

    def score(self, ids: Sequence[int]) -> np.ndarray:
        import torch

        if self.family is Family.SEQ2SEQ:
            raise InvalidRequest("this is an encoder-decoder model: its prompt has no log-probabilities", param="echo")
        ids = [int(t) for t in ids]
        if len(ids) < 2:
            return np.zeros((0, self.vocab_size), dtype=np.float32)
        x = torch.tensor([ids[:-1]], dtype=torch.long, device=self.device)
        with torch.inference_mode():  # on its own, without a cache: the running batch is untouched
            logits = self.model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits
        return logits[0].float().cpu().numpy()

    # ---- one forward ---------------------------------------------------------------
    def _forward(self, ids) -> np.ndarray:
        """Decoder-only: run `ids` (the new columns) against the cache; last position's logits."""
        pos = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        kw = {"logits_to_keep": 1} if self._logits_to_keep else {}
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=pos,
                         past_key_values=self.cache, use_cache=True, **kw)
        self.cache = out.past_key_values
        return out.logits[:, -1, :].float().cpu().numpy()

    def _decode(self, ids) -> np.ndarray:
        """Encoder-decoder: one decoder token per row against the cache; its logits."""
        out = self.model(encoder_outputs=self.encoder_out, attention_mask=self.mask, decoder_input_ids=ids,
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1, :].float().cpu().numpy()
