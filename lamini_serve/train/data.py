"""Training examples for both families, with loss only on the answer, and packing.

Decoder-only: the student's prompt (the format it will be served with, rendered by
ModelSpec exactly as at inference) + the answer + EOS; labels are -100 on the
prompt. An answer the teacher cut at its token limit gets no EOS. Packing puts
several examples in one row and keeps them apart with a block-diagonal causal mask
and positions that restart at each example, so no token attends across examples and
no label leaks.

Encoder-decoder: the instruction (raw) -> the answer + EOS (again no EOS on an answer
cut at the teacher's limit, or at max_length).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lamini_serve.errors import LaminiError
from lamini_serve.generation import cut_at_limit
from lamini_serve.models import Family, ModelSpec
from lamini_serve.prompts import ALPACA_RESPONSE_PREFIX, PromptFormat
from lamini_serve.tables import jsonl_rows, parquet_metadata, read_parquet, read_text

IGNORE = -100


LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")


def dataset_file(dataset: str) -> Path | None:
    """The local file `dataset` names (a `lamini data` run folder: its dataset.parquet), or None for a hub id.

    A name that looks local (a path, a known suffix) but is not there is an error, so a
    typo is not sent to the hub.
    """
    p = Path(dataset).expanduser()
    if p.is_dir():
        p = p / "dataset.parquet"
    if p.is_file():
        if p.suffix not in LOCAL_SUFFIXES:
            raise LaminiError(f"{dataset}: use a .parquet or .jsonl file, a run folder of `lamini data`, or a hub id")
        return p
    if dataset.startswith((".", "/", "~")) or p.suffix in LOCAL_SUFFIXES:
        run = f"lamini data run {p.parent}" if p.name == "dataset.parquet" else "lamini data run OUT"
        raise LaminiError(f"{p}: no such dataset; make it with `{run}`, or point the recipe's dataset "
                          f"(or --dataset) at an existing file")
    return None


PARQUET_FIX = "make it again with `lamini data run`, or pass a .jsonl file"


def _check_columns(dataset: str, columns: list[str]) -> None:
    missing = {"instruction", "response"} - set(columns)
    if missing:
        raise LaminiError(f"{dataset}: missing column(s) {', '.join(sorted(missing))}; "
                          f"a training set needs instruction and response (columns: {', '.join(columns[:10])})")


def _jsonl_rows(p: Path, first_only: bool = False) -> list[dict[str, Any]]:
    return jsonl_rows(read_text(p), str(p), first_only=first_only)


def check_dataset(dataset: str) -> str:
    """Check, without loading it, that `dataset` can be trained on; returns how it was checked.

    A local file must be there, readable, and have instruction and response columns (a
    Parquet file's schema, a JSONL file's first row). A hub id is only checked when
    training loads it.
    """
    p = dataset_file(dataset)
    if p is None:
        return f"{dataset} (a hub dataset; loaded when training starts)"
    if p.suffix == ".parquet":
        meta = parquet_metadata(p, PARQUET_FIX)
        _check_columns(dataset, meta.schema.to_arrow_schema().names)
        if meta.num_rows == 0:
            raise LaminiError(f"{dataset}: the dataset is empty")
        return f"{p} ({meta.num_rows} rows)"
    rows = _jsonl_rows(p, first_only=True)
    if not rows:
        raise LaminiError(f"{dataset}: the dataset is empty")
    _check_columns(dataset, list(rows[0]))
    return str(p)


def load_pairs(dataset: str) -> list[dict[str, Any]]:
    """(instruction, response) rows from a Parquet/JSONL file, a `lamini data` run folder, or a hub dataset."""
    p = dataset_file(dataset)
    if p is not None and p.suffix == ".parquet":
        rows = read_parquet(p, PARQUET_FIX)
    elif p is not None:
        rows = _jsonl_rows(p)
    else:
        try:
            import datasets

            rows = list(datasets.load_dataset(dataset, split="train"))
        except Exception as exc:  # many hub error types; the message matters
            raise LaminiError(f"could not load dataset {dataset!r} ({type(exc).__name__}); check the id and network, "
                              f"or pass a local file") from None
    if not rows:
        raise LaminiError(f"{dataset}: the dataset is empty")
    _check_columns(dataset, list(rows[0]))
    # An answer the teacher stopped at its token limit (finish_reason "length", as `lamini data`
    # and the OpenAI API record it) is trained without an end-of-sequence token: the student
    # learns its words, not to stop mid-sentence.
    return [{"instruction": str(r["instruction"]), "response": str(r["response"]),
             "truncated": cut_at_limit(r.get("finish_reason"))} for r in rows
            if r.get("instruction") and r.get("response")]


def split_pairs(pairs: list[dict[str, Any]], eval_share: float, seed: int) -> tuple[list, list]:
    rows = list(pairs)
    random.Random(seed).shuffle(rows)
    n_eval = int(round(len(rows) * eval_share)) if eval_share > 0 else 0
    n_eval = min(max(n_eval, 1 if eval_share > 0 and len(rows) > 10 else 0), 64)
    return rows[n_eval:], rows[:n_eval]


def _eos_id(tok) -> int:
    if tok.eos_token_id is None:
        raise LaminiError("the student's tokenizer has no end-of-sequence token; set eos_token in its tokenizer_config.json")
    return tok.eos_token_id


def encode_causal(pairs: Sequence[dict[str, Any]], spec: ModelSpec, tok, max_length: int) -> list[dict[str, list[int]]]:
    """input_ids and labels (-100 on the prompt) for each pair; too-long prompts are skipped."""
    out = []
    eos = _eos_id(tok)
    prefix = ALPACA_RESPONSE_PREFIX if spec.prompt_format is PromptFormat.ALPACA else ""
    for p in pairs:
        prompt = spec.prompt(p["instruction"], tok)
        prompt_ids = tok(prompt, add_special_tokens=spec.add_special_tokens)["input_ids"]
        answer_ids = tok(prefix + p["response"].strip(), add_special_tokens=False)["input_ids"]
        if not p.get("truncated"):
            answer_ids.append(eos)
        if len(prompt_ids) >= max_length - 1:
            continue
        ids = (prompt_ids + answer_ids)[:max_length]
        labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
        out.append({"input_ids": ids, "labels": labels})
    return out


def encode_seq2seq(pairs: Sequence[dict[str, Any]], spec: ModelSpec, tok, max_length: int) -> list[dict[str, list[int]]]:
    out = []
    eos = _eos_id(tok)
    for p in pairs:
        ids = tok(spec.prompt(p["instruction"], tok), add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        # No special tokens from the tokenizer (a T5 tokenizer would append EOS even to an answer
        # it cut): EOS goes on only where the answer really ended.
        labels = tok(p["response"].strip(), add_special_tokens=False)["input_ids"]
        cut = p.get("truncated") or len(labels) > max_length - 1
        labels = labels[:max_length - 1] + ([] if cut else [eos])
        out.append({"input_ids": ids, "labels": labels})
    return out


def pack(examples: Sequence[dict[str, list[int]]], max_length: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """First-fit-decreasing packing into rows of at most max_length tokens.

    Each row keeps `seq_lens` so the collator can build a block-diagonal mask and
    positions restarting at 0 for each example. Other list-valued keys of the examples
    (the teacher's KD targets) are concatenated in the same order.
    """
    extra = [k for k in (examples[0] if examples else {}) if k not in ("input_ids", "labels")]
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    rows: list[dict[str, list]] = []
    space: list[int] = []
    for i in order:
        ex = examples[i]
        n = len(ex["input_ids"])
        for r, free in enumerate(space):
            if free >= n:
                break
        else:
            rows.append({"input_ids": [], "labels": [], "seq_lens": [], **{k: [] for k in extra}})
            space.append(max_length)
            r = len(rows) - 1
        rows[r]["input_ids"] += ex["input_ids"]
        rows[r]["labels"] += ex["labels"]
        rows[r]["seq_lens"].append(n)
        for k in extra:
            rows[r][k] += ex[k]
        space[r] -= n
    random.Random(seed).shuffle(rows)
    return rows


@dataclass
class CausalCollator:
    """Pads a batch; packed rows get a 4D block-diagonal causal mask and restarting positions.
    Rows with `kd` (a list of (ids, probs) arrays per example, from kd.teacher_targets) give
    `kd_ids` and `kd_probs`: every answer position of the batch, in batch-major order. Targets
    with a third array (the teacher's hidden states at every token of the example) also give
    `kd_hidden`, every real token of the batch in batch-major order, and `kd_real`, the
    (batch, width) mask that picks those tokens out of the padded batch."""

    pad_id: int
    dtype: Any = None

    def __call__(self, batch: list[dict[str, list]]) -> dict[str, Any]:
        import torch

        if "kd" in batch[0]:
            import numpy as np

            out = self([{k: v for k, v in b.items() if k != "kd"} for b in batch])
            parts = [t for b in batch for t in b["kd"]]
            out["kd_ids"] = torch.from_numpy(np.concatenate([p[0] for p in parts]))
            out["kd_probs"] = torch.from_numpy(np.concatenate([p[1] for p in parts]))
            if len(parts[0]) > 2:
                # A packed row is its examples end to end and padding only after the last one
                # (as `pack` concatenates `kd`), so its first sum(seq_lens) tokens are real and in
                # the order of the examples' hidden states.
                out["kd_hidden"] = torch.from_numpy(np.concatenate([p[2] for p in parts]))
                lengths = torch.tensor([len(b["input_ids"]) for b in batch])
                out["kd_real"] = torch.arange(out["input_ids"].shape[1])[None, :] < lengths[:, None]
            return out

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
        if "seq_lens" not in batch[0]:
            mask = (torch.arange(width)[None, :] < torch.tensor([len(b["input_ids"]) for b in batch])[:, None]).long()
            return {"input_ids": ids, "attention_mask": mask, "labels": labels}
        dtype = self.dtype or torch.float32
        neg = torch.finfo(dtype).min
        mask4 = torch.full((len(batch), 1, width, width), neg, dtype=dtype)
        pos = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            start = 0
            for n in b["seq_lens"]:
                block = torch.tril(torch.ones(n, n, dtype=torch.bool))
                mask4[i, 0, start:start + n, start:start + n].masked_fill_(block, 0.0)
                pos[i, start:start + n] = torch.arange(n)
                start += n
            # padding rows attend to themselves only, so softmax stays finite
            for j in range(start, width):
                mask4[i, 0, j, j] = 0.0
        return {"input_ids": ids, "attention_mask": mask4, "position_ids": pos, "labels": labels}


def count_truncated(pairs: Sequence[dict[str, Any]]) -> int:
    return sum(1 for p in pairs if p.get("truncated"))


def count_tokens(rows: Sequence[dict[str, list[int]]]) -> tuple[int, int]:
    """(real tokens, label tokens) of encoded rows."""
    return sum(len(r["input_ids"]) for r in rows), sum(sum(1 for x in r["labels"] if x != IGNORE) for r in rows)


class ListDataset:
    def __init__(self, rows: list[dict[str, list]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list]:
        return self.rows[i]


def family_encoder(family: Family):
    return encode_causal if family is Family.CAUSAL else encode_seq2seq
