"""`OnnxSteps`: an ONNX export's forward pass as a `StepModel`, with continuous batching.

    steps = OnnxSteps(OrtEngine(spec, io_binding=False))
    logits = steps.add([[5, 6, 7], [8]])   # float32 [2, vocab]: each new row's first token
    logits = steps.step([11, 12])          # one token per running row, in row order
    steps.keep([1])                        # row 0 finished: drop it and its caches
    steps.add([[9, 9]])                    # joins while row 1 is still decoding

It reuses `OrtEngine`'s sessions and its decode helpers (`CausalRun`,
`Seq2SeqRun`), which run one fixed batch from start to end; this module adds
what a server needs on top: rows that join a running batch and rows that leave it.
Past key/values are always numpy arrays here (io_binding off, whatever the engine
says): merging and index-selecting caches is numpy work, and `OrtEngine` binds its
outputs to the CPU anyway, so an OrtValue would be copied out for every merge.

Decoder-only exports keep ONE merged batch. New rows are prefilled on their own
(left padded among themselves); then their present key/values and attention mask
join the running batch: both pasts are padded on the LEFT of the sequence axis to a
common length (zeros, masked out by a 0 in the attention mask) and concatenated
along the batch axis. position_ids come from the mask's cumulative sum, so every
row keeps its own positions whatever padding sits in front of it. `keep` selects
rows and then trims leading columns that are padding for every remaining row, so a
long row that finished does not leave the batch wide. A fused graph (GroupQueryAttention,
`lamini export --format fused`) wants the mirror image: rows padded on the RIGHT, each
row's length read from its mask, positions computed inside the graph; merging pads on
the right and `keep` trims trailing columns.

Encoder-decoder exports (T5) cannot merge that way: the merged decoder graph has no
decoder attention mask, so rows whose decoders started at different steps cannot
share one decoder batch (the younger row would attend to padding). Each `add` is a
*cohort* with its own encoder output, encoder mask, cross-attention key/values and
decoder past; `step` runs every cohort once and concatenates their logits. Rows are
numbered cohort by cohort, in the order the cohorts were added; `keep` drops rows
within cohorts and forgets cohorts left empty.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from lamini_serve.engines.base import InvalidRequest
from lamini_serve.models import Family

# config.json keys that hold a decoder-only model's context, most common first
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
_SEQ2SEQ_DEFAULT_CONTEXT = 512  # T5's relative positions have no hard limit; its tokenizers say 512


def context_length_from_config(config: dict, tokenizer, family: Family) -> int:
    """How many tokens (prompt + new) a model may see: its position table's size for a
    decoder-only model; for an encoder-decoder the tokenizer's model_max_length when
    that is a real number (tokenizers without one say 1e30), else 512."""
    if family is Family.CAUSAL:
        for key in _CONTEXT_KEYS:
            value = config.get(key)
            if isinstance(value, int) and value > 0:
                return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return _SEQ2SEQ_DEFAULT_CONTEXT if family is Family.SEQ2SEQ else 2048


def _pad(x: np.ndarray, width: int, axis: int, left: bool = True) -> np.ndarray:
    """`x` with zeros in front of it (or after it) along `axis` up to `width`."""
    extra = width - x.shape[axis]
    if extra <= 0:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (extra, 0) if left else (0, extra)
    return np.pad(x, pad)


class _Cohort:
    """Rows of an encoder-decoder model that were added together (and so decode in step):
    one `Seq2SeqRun` whose tensors `keep` index-selects."""

    def __init__(self, run):
        self.run = run

    @property
    def size(self) -> int:
        return self.run.n

    def select(self, rows: list[int]) -> None:
        run = self.run
        idx = np.asarray(rows, dtype=np.int64)
        run.static = {k: v[idx] for k, v in run.static.items()}  # encoder_hidden_states, encoder_attention_mask
        run.enc_kv = {k: v[idx] for k, v in run.enc_kv.items()}  # cross-attention key/values
        run.past = {k: v[idx] for k, v in run.past.items()}  # decoder self-attention past
        run.n = len(rows)


class OnnxSteps:
    """A loaded `OrtEngine` as a `StepModel`; rows may join and leave a running batch."""

    joins_running_batch = True

    def __init__(self, engine):
        from lamini_serve.engines.ort_engine import CausalRun, Seq2SeqRun

        self.engine = engine
        self.family = engine.spec.family
        self._run_class = Seq2SeqRun if self.family is Family.SEQ2SEQ else CausalRun
        cfg_path = engine.folder / "config.json"
        config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        self.context_length = context_length_from_config(config, engine.tokenizer, self.family)
        width = engine.decoder.session.get_outputs()[engine.decoder.outputs.index("logits")].shape[-1]
        self.vocab_size = int(width) if isinstance(width, int) else int(config["vocab_size"])
        # decoder-only: one merged batch (None while no row runs)
        self._batch = None
        # encoder-decoder: cohorts in add order
        self._cohorts: list[_Cohort] = []

    def _new_run(self, prompts: list[list[int]]):
        run = self._run_class(self.engine, prompts)
        run.binding = False  # numpy pasts: see the module docstring
        return run

    # ---- what the scheduler sees -----------------------------------------------------
    @property
    def rows(self) -> int:
        if self.family is Family.SEQ2SEQ:
            return sum(c.size for c in self._cohorts)
        return 0 if self._batch is None else self._batch.mask.shape[0]

    @property
    def width(self) -> int:
        """Columns of the merged attention mask (decoder-only): padding + the longest row."""
        return 0 if self._batch is None else self._batch.mask.shape[1]

    @property
    def cohorts(self) -> int:
        return len(self._cohorts)

    def add(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        prompts = [[int(t) for t in p] for p in prompts]
        if not prompts:
            return np.zeros((0, self.vocab_size), dtype=np.float32)
        if any(len(p) == 0 for p in prompts):
            raise InvalidRequest("an empty prompt cannot be continued; give at least one token of text", param="prompt")
        run = self._new_run(prompts)
        logits = run.first()
        if self.family is Family.SEQ2SEQ:
            self._cohorts.append(_Cohort(run))
        elif self._batch is None:
            self._batch = run
        else:
            self._merge(run)
        return np.asarray(logits, dtype=np.float32)

    def _merge(self, new) -> None:
        """Append the freshly prefilled rows of `new` to the running batch: pad the shorter
        side's past and mask (on the left; on the right for a right-padded graph), then
        concatenate along the batch axis."""
        old = self._batch
        width, left = max(old.mask.shape[1], new.mask.shape[1]), not old.right
        old.mask = np.concatenate([_pad(old.mask, width, 1, left), _pad(new.mask, width, 1, left)], axis=0)
        # past: [batch, heads, past_len, head_dim]; past_len == mask width after a step, or more
        # when the cache is kept in place (its spare columns, on the right)
        cols = max(width, *(v.shape[2] for v in old.past.values()))
        old.past = {name: np.concatenate([_pad(old.past[name], cols, 2, left), _pad(new.past[name], cols, 2, left)],
                                         axis=0)
                    for name in old.past}

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) != self.rows:
            raise RuntimeError(f"step got {len(tokens)} tokens for {self.rows} running rows")
        if not len(tokens):
            return np.zeros((0, self.vocab_size), dtype=np.float32)
        if self.family is Family.SEQ2SEQ:
            parts, start = [], 0
            for cohort in self._cohorts:
                parts.append(cohort.run.next(tokens[start:start + cohort.size]))
                start += cohort.size
            return np.asarray(np.concatenate(parts, axis=0), dtype=np.float32)
        return np.asarray(self._batch.next(tokens), dtype=np.float32)  # appends a column of ones to the mask

    def keep(self, rows: Sequence[int]) -> None:
        rows = [int(r) for r in rows]
        if self.family is Family.SEQ2SEQ:
            kept, start = [], 0
            for cohort in self._cohorts:
                mine = [r - start for r in rows if start <= r < start + cohort.size]
                start += cohort.size
                if len(mine) == cohort.size:
                    kept.append(cohort)
                elif mine:
                    cohort.select(mine)
                    kept.append(cohort)
            self._cohorts = kept
            return
        if self._batch is None:
            return
        if not rows:
            self._batch = None
            return
        run, idx = self._batch, np.asarray(rows, dtype=np.int64)
        mask = run.mask[idx]
        # columns that are padding for every row left (leading ones; trailing ones when
        # right-padded, where each row's length is its mask's sum): gone, past and mask alike
        start, end = (0, int(mask.sum(axis=1).max())) if run.right else (int(np.argmax(mask.any(axis=0))), mask.shape[1])
        run.mask = mask[:, start:end]
        if run.right and run.in_place:  # the spare columns stay: the next steps write into them
            run.past = {name: v[idx] for name, v in run.past.items()}
        else:
            run.past = {name: v[idx, :, start:end] for name, v in run.past.items()}

    def score(self, ids: Sequence[int]) -> np.ndarray:
        if self.family is Family.SEQ2SEQ:
            raise InvalidRequest(f"{self.engine.spec.name} is an encoder-decoder model: its prompt has no "
                                 "log-probabilities", param="echo")
        ids = [int(t) for t in ids]
        if len(ids) < 2:
            return np.zeros((0, self.vocab_size), dtype=np.float32)
        run = self._new_run([ids[:-1]])  # on its own: the running batch is untouched
        return np.asarray(run.first(all_positions=True)[0], dtype=np.float32)
