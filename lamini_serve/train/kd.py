"""Word-level distillation (beyond the paper): cross-entropy mixed with a divergence from the teacher's logits.

forward_kl = KL(teacher || student) (mass-covering, the classic Hinton KD),
reverse_kl = KL(student || teacher) (mode-seeking, as in MiniLLM),
jsd = the generalized Jensen-Shannon divergence with mixture weight beta (as in GKD).
All are scaled by temperature**2 so gradients keep their size when T changes.

Two ways to get the teacher's side. Live (`kd.top_k: 0`): the teacher runs beside the
student on every batch, over the whole vocabulary; exact, and any divergence. Cached
(`kd.top_k: K`, the default for forward_kl): before training, one pass of the teacher
over the training set keeps, at each answer position, its K most likely next tokens and
their probabilities (renormalised over the K); the student then trains against those
with no teacher in memory. On a CPU the live teacher costs more than the student's own
step, every step of every epoch; the cached pass costs one teacher forward per example,
shared by every student of the herd that encodes the data the same way (a file under
OUT/.work keyed by the teacher, K, T and the encoded rows).

Hidden-state matching (`kd.hidden`, cached path only), after LLM-Streamline and TinyBERT: a
student cut from the teacher whose block i is teacher block kept[i], with kept[i] !=
kept[i-1] + 1 (blocks dropped in between), learns to hand that block the hidden state the
teacher hands it, so that its earlier blocks do the work of the dropped ones. The same
teacher pass keeps the hidden states entering those teacher blocks at every token (prompt
and answer) of each example, in float16, one file per teacher block keyed by the teacher,
the block and the encoded rows.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

from lamini_serve.errors import LaminiError


def divergence(student_logits, teacher_logits, mask, kind: str = "forward_kl", temperature: float = 1.0,
               beta: float = 0.5):
    """Mean divergence per position where `mask` is true. Logits: (..., vocab)."""
    import math

    import torch
    import torch.nn.functional as F

    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "forward_kl":
        per = (t.exp() * (t - s)).sum(-1)
    elif kind == "reverse_kl":
        per = (s.exp() * (s - t)).sum(-1)
    elif kind == "jsd":
        # log of the mixture m = beta * p_t + (1 - beta) * p_s, computed stably
        m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
        per = beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)
    else:
        raise LaminiError(f"unknown divergence {kind!r}; use forward_kl, reverse_kl or jsd")
    mask = mask.to(per.dtype)
    return (per * mask).sum() / mask.sum().clamp(min=1) * temperature**2


def check_same_vocabulary(student_tok, teacher_tok, student_name: str) -> None:
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        raise LaminiError(
            f"{student_name}: word-level KD needs the teacher's vocabulary, and this student's tokenizer differs "
            f"({len(student_tok)} vs {len(teacher_tok)} tokens); remove its kd section or build it with init.from_teacher"
        )


def junctions(kept: Sequence[int]) -> list[tuple[int, int]]:
    """(student block, teacher block) where the student's kept teacher blocks skip some: block i
    when kept[i] != kept[i - 1] + 1. The student's block 0 reads the embeddings whatever the
    teacher block it came from, and matching there would only pull the (often tied) embedding
    table, so junctions start at block 1."""
    return [(i, kept[i]) for i in range(1, len(kept)) if kept[i] != kept[i - 1] + 1]


@contextlib.contextmanager
def block_inputs(model: Any, indices: Sequence[int]):
    """Within: `seen[i]` is the hidden state that entered block i of `model` on its last forward
    (transformers' hidden_states[i]), with its graph.

    A pre-hook on just those blocks rather than output_hidden_states: the model is called as it
    is (answer_logits' head hook and a DDP wrapper stay in place), and the teacher's pass under
    no_grad holds the few states asked for, not all of them.
    """
    from lamini_serve.train.students import decoder_blocks

    seen: dict[int, Any] = {}
    if not indices:
        yield seen
        return
    blocks = decoder_blocks(model)

    def grab(i):
        def hook(_module, args, kwargs):
            seen[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    handles = [blocks[i].register_forward_pre_hook(grab(i), with_kwargs=True) for i in indices]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def hidden_distance(student, teacher, eps: float = 1e-6):
    """Mean over tokens (rows) of ||s - t||^2 / ||t||^2: 0 when equal, (c - 1)^2 for s = c * t, 1 for s = 0.

    Relative per token, neither one mse / mean(t^2) over all tokens nor 1 - cosine. The embedded
    teacher's residual stream carries a massive activation at each sequence's first token (norm
    about 25000 entering block 24, against a median of about 360), so a batch-wide normaliser
    would be that token's error and little else. Cosine ignores the norm, and the norm matters:
    the teacher's later blocks add their updates to a stream of the size they were trained on,
    and the 12-block student's stream there is about 4 times too small.
    """
    s, t = student.float(), teacher.float()
    if s.shape[0] == 0:
        return s.sum()
    return (((s - t) ** 2).sum(-1) / (t ** 2).sum(-1).clamp_min(eps)).mean()


def kd_trainer_class():
    from transformers import Trainer

    class KDTrainer(Trainer):
        """The Trainer with loss = (1 - w) * CE + w * divergence(student, teacher) on the answer tokens."""

        def __init__(self, *a, teacher=None, kd=None, **kw):
            if kd is not None and kd.hidden:
                raise LaminiError("kd.hidden needs the teacher's cached targets (forward_kl with kd.top_k > 0), "
                                  "not the live teacher")
            super().__init__(*a, **kw)
            self.teacher, self.kd = teacher.eval(), kd
            # Our loss ignores num_items_in_batch, so the Trainer must scale it by the
            # accumulation steps itself (it skips that for models that take loss kwargs).
            self.model_accepts_loss_kwargs = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            out = model(**inputs)
            with torch.no_grad():
                t_inputs = {k: v for k, v in inputs.items() if k != "labels"}
                t_logits = self.teacher.to(out.logits.device)(**t_inputs).logits
            mask = inputs["labels"][:, 1:] != -100  # logits at t predict the label at t + 1
            div = divergence(out.logits[:, :-1], t_logits[:, :-1], mask, self.kd.divergence, self.kd.temperature,
                             self.kd.beta)
            loss = (1 - self.kd.weight) * out.loss + self.kd.weight * div
            return (loss, out) if return_outputs else loss

    return KDTrainer


def teacher_targets(teacher, rows: Sequence[dict[str, list[int]]], top_k: int, temperature: float,
                    bf16: bool = False, batch: int = 8, layers: Sequence[int] = ()) -> list[tuple[Any, ...]]:
    """Per encoded example (input_ids, labels): the teacher's top-k next-token ids (int32
    [n, k]) and their probabilities at `temperature`, renormalised over the k (float16
    [n, k]), at the n positions that predict an answer token, in order. With `layers`, a
    third array: the hidden states entering those teacher blocks (transformers'
    hidden_states[layer]) at every token of the example, float16 [tokens, len(layers), hidden].
    `top_k` 0 computes the hidden states alone (the first two are None)."""
    import numpy as np
    import torch

    from lamini_serve.progress import Progress
    from lamini_serve.train.data import IGNORE, CausalCollator
    from lamini_serve.train.loss import answer_logits

    collate = CausalCollator(pad_id=0)  # padding is masked out and labelled -100
    layers = list(layers)
    fp16_max = float(np.finfo(np.float16).max)

    out: list[Any] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    teacher.eval()
    device = next(teacher.parameters()).device
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with Progress("teacher targets for word-level KD", len(rows), unit="examples") as bar, torch.no_grad(), cast:
        for start in range(0, len(order), batch):
            chunk = order[start:start + batch]
            padded = collate([{"input_ids": rows[i]["input_ids"], "labels": rows[i]["labels"]} for i in chunk])
            labels = padded["labels"]
            inputs = {k: v.to(device) for k, v in padded.items()}
            with block_inputs(teacher, layers) as seen:
                if top_k:
                    logits, _ = answer_logits(teacher, inputs)
                else:  # the blocks alone: no head
                    teacher.base_model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
            if top_k:
                top, idx = torch.topk(logits.float(), top_k, dim=-1)
                top, idx = top.cpu(), idx.cpu()
                probs = torch.softmax(top / temperature, dim=-1)
                counts = (labels[:, 1:] != IGNORE).sum(1).tolist()
            if layers:
                # Right padding under a causal mask: an example's real tokens are its first ones,
                # with the states it has alone. float16 overflows past 65504: clipped, not inf.
                hidden = torch.stack([seen[layer].float() for layer in layers], dim=2).cpu()
                hidden = hidden.clamp(-fp16_max, fp16_max).to(torch.float16)
            at = 0
            for r, i in enumerate(chunk):
                target: tuple[Any, ...] = (None, None)
                if top_k:
                    n = counts[r]
                    target = (idx[at:at + n].to(torch.int32).numpy(), probs[at:at + n].to(torch.float16).numpy())
                    at += n
                if layers:
                    target += (hidden[r, :len(rows[i]["input_ids"])].numpy(),)
                out[i] = target
            bar.advance(n=len(chunk))
    return out


def _key(*parts: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()[:16]


def _read_topk(path: Path, n_rows: int) -> list[tuple[Any, Any]] | None:
    import numpy as np

    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            ids, probs, counts = z["ids"], z["probs"], z["counts"]
    except (OSError, ValueError, KeyError):
        return None  # unreadable (a disk that filled): computed again
    if len(counts) != n_rows:
        return None
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [(ids[a:b], probs[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _read_hidden(path: Path, n_tokens: int) -> Any:
    import numpy as np

    if not path.is_file():
        return None
    try:
        h = np.load(path)
    except (OSError, ValueError):
        return None
    return h if h.ndim == 2 and h.shape[0] == n_tokens and h.dtype == np.float16 else None


def cached_teacher_targets(work: Path, teacher_name: str, load_teacher, rows: Sequence[dict[str, list[int]]],
                           top_k: int, temperature: float, bf16: bool, log,
                           layers: Sequence[int] = ()) -> list[tuple[Any, ...]]:
    """`teacher_targets`, kept under `work`: the top-k targets once per (teacher, K, T, encoded
    rows), the hidden states once per (teacher, teacher block, encoded rows), a file each. A
    student that needs other blocks than an earlier one reuses the top-k file and the teacher
    computes only the missing states; whatever is missing is computed in one pass."""
    import io

    import numpy as np

    from lamini_serve.paths import atomic_write_bytes

    work = Path(work)
    encoded = [(r["input_ids"], r["labels"]) for r in rows]
    path = work / f"kd-targets-{_key(teacher_name, top_k, temperature, encoded)}.npz"
    layers = list(layers)
    lengths = [len(r["input_ids"]) for r in rows]
    hkey = _key(teacher_name, "hidden", encoded)  # the states depend on neither K nor T
    hpaths = {layer: work / f"kd-hidden-{hkey}-{layer}.npy" for layer in layers}

    topk = _read_topk(path, len(rows))
    if topk is not None:
        log(f"word-level KD: the teacher's top-{top_k} targets from {path}")
    hidden = {layer: h for layer in layers if (h := _read_hidden(hpaths[layer], sum(lengths))) is not None}
    if hidden:
        log(f"hidden-state KD: the teacher's hidden states entering block(s) {', '.join(map(str, hidden))} "
            f"from {', '.join(str(hpaths[layer]) for layer in hidden)}")
    missing = [layer for layer in layers if layer not in hidden]
    if topk is None or missing:
        what = []
        if topk is None:
            what.append(f"the teacher's top-{top_k} next tokens at every answer position")
        if missing:
            what.append(f"its hidden states entering block(s) {', '.join(map(str, missing))} at every token")
        kept = ([str(path)] if topk is None else []) + [str(hpaths[layer]) for layer in missing]
        log(f"word-level KD: {' and '.join(what)} of {len(rows)} examples (once; kept in {', '.join(kept)})")
        fresh = teacher_targets(load_teacher(), rows, top_k if topk is None else 0, temperature, bf16, layers=missing)
        if topk is None:
            topk = [(t[0], t[1]) for t in fresh]
            buf = io.BytesIO()
            np.savez(buf, ids=np.concatenate([t[0] for t in topk]), probs=np.concatenate([t[1] for t in topk]),
                     counts=np.array([len(t[0]) for t in topk], dtype=np.int64))
            atomic_write_bytes(path, buf.getvalue())
        for j, layer in enumerate(missing):
            hidden[layer] = np.concatenate([t[2][:, j] for t in fresh])
            buf = io.BytesIO()
            np.save(buf, hidden[layer])
            atomic_write_bytes(hpaths[layer], buf.getvalue())
        del fresh
    if not layers:
        return topk
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [(ids, probs, np.stack([hidden[layer][a:b] for layer in layers], axis=1))
            for (ids, probs), a, b in zip(topk, bounds[:-1], bounds[1:])]


def topk_kl(logq, ids, probs, temperature: float):
    """Summed KL(teacher's top-k || student) over positions: the teacher's k probabilities
    `probs` against the student's log-probabilities `logq` (at `temperature`, full softmax)
    of the same tokens."""
    p = probs.float()
    return (p * (p.clamp_min(1e-12).log() - logq.gather(1, ids.long()))).sum() * temperature**2


def cached_kd_trainer_class():
    """The answer-only trainer with loss = (1 - w) * CE + w * KL against cached top-k teacher targets
    (+ kd.hidden * H, the hidden-state distance at the student's junctions)."""
    from lamini_serve.train.loss import answer_logits, answer_only_trainer_class, per_item

    base = answer_only_trainer_class()

    class CachedKDTrainer(base):
        def __init__(self, *a, kd=None, junctions=(), **kw):
            super().__init__(*a, **kw)
            self.kd = kd
            self.junctions = list(junctions)  # (student block, teacher block), as `junctions` gives them
            self._hidden_seen: list[Any] = []  # H of each batch since the last log

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch.nn.functional as F

            inputs = dict(inputs)
            ids, probs = inputs.pop("kd_ids"), inputs.pop("kd_probs")
            t_hidden, real = inputs.pop("kd_hidden", None), inputs.pop("kd_real", None)
            if return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if not self.model_accepts_loss_kwargs:
                num_items_in_batch = None
            own = self.accelerator.unwrap_model(model)
            head = own.get_output_embeddings()
            at = [s for s, _ in self.junctions] if self.kd.hidden else []
            if at and t_hidden is None:
                raise LaminiError("kd.hidden is set but the batch carries no hidden-state targets of the teacher")
            with block_inputs(own, at) as seen:
                logits, targets = answer_logits(model, inputs, head)
            if logits.shape[0] != ids.shape[0]:
                raise LaminiError(f"the teacher's KD targets ({ids.shape[0]} positions) do not line up with the batch's "
                                  f"answer tokens ({logits.shape[0]}); delete OUT/.work/kd-targets-* and train again")
            t = self.kd.temperature
            logp = F.log_softmax(logits.float(), dim=-1)  # one softmax serves both terms at T = 1
            ce = F.nll_loss(logp, targets, reduction="sum")
            kl = topk_kl(logp if t == 1 else F.log_softmax(logits.float() / t, dim=-1), ids, probs, t)
            total = (1 - self.kd.weight) * ce + self.kd.weight * kl
            count = targets.new_tensor(targets.numel())
            if at:
                states = [seen[s][real] for s in at]
                if t_hidden.shape[1] != len(at) or states[0].shape[0] != t_hidden.shape[0]:
                    raise LaminiError(f"the teacher's hidden states ({tuple(t_hidden.shape[:2])}) do not line up with "
                                      f"the batch's {states[0].shape[0]} tokens at {len(at)} junction(s); delete "
                                      f"OUT/.work/kd-hidden-* and train again")
                h = sum(hidden_distance(x, t_hidden[:, j]) for j, x in enumerate(states)) / len(at)
                if model.training:
                    self._hidden_seen.append(h.detach())
                # H is a mean over this batch's tokens; times the batch's answer tokens it is
                # normalised as the sums beside it (per_item): over accumulated batches, the
                # mean of their H weighted by their answer tokens.
                total = total + self.kd.hidden * h * count
            return per_item(total, num_items_in_batch, count)

        def log(self, logs, *args, **kwargs):
            if self._hidden_seen and "loss" in logs:
                import torch

                logs = {**logs, "kd_hidden": round(torch.stack(self._hidden_seen).mean().item(), 4)}
                self._hidden_seen = []
            return super().log(logs, *args, **kwargs)

    return CachedKDTrainer
