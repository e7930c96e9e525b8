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
"""

from __future__ import annotations

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


def kd_trainer_class():
    from transformers import Trainer

    class KDTrainer(Trainer):
        """The Trainer with loss = (1 - w) * CE + w * divergence(student, teacher) on the answer tokens."""

        def __init__(self, *a, teacher=None, kd=None, **kw):
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
                    bf16: bool = False, batch: int = 8) -> list[tuple[Any, Any]]:
    """Per encoded example (input_ids, labels): the teacher's top-k next-token ids (int32
    [n, k]) and their probabilities at `temperature`, renormalised over the k (float16
    [n, k]), at the n positions that predict an answer token, in order."""
    import contextlib

    import torch

    from lamini_serve.progress import Progress
    from lamini_serve.train.data import IGNORE, CausalCollator
    from lamini_serve.train.loss import answer_logits

    collate = CausalCollator(pad_id=0)  # padding is masked out and labelled -100

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
            logits, _ = answer_logits(teacher, {k: v.to(device) for k, v in padded.items()})
            top, idx = torch.topk(logits.float(), top_k, dim=-1)
            top, idx = top.cpu(), idx.cpu()
            probs = torch.softmax(top / temperature, dim=-1)
            counts = (labels[:, 1:] != IGNORE).sum(1).tolist()
            at = 0
            for r, i in enumerate(chunk):
                n = counts[r]
                out[i] = (idx[at:at + n].to(torch.int32).numpy(), probs[at:at + n].to(torch.float16).numpy())
                at += n
            bar.advance(n=len(chunk))
    return out


def cached_teacher_targets(work: Path, teacher_name: str, load_teacher, rows: Sequence[dict[str, list[int]]],
                           top_k: int, temperature: float, bf16: bool, log) -> list[tuple[Any, Any]]:
    """`teacher_targets`, computed once per (teacher, K, T, encoded rows) and kept under `work`."""
    import hashlib
    import io
    import json

    import numpy as np

    from lamini_serve.paths import atomic_write_bytes

    key = hashlib.sha256(json.dumps([teacher_name, top_k, temperature,
                                     [(r["input_ids"], r["labels"]) for r in rows]]).encode()).hexdigest()[:16]
    path = Path(work) / f"kd-targets-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                ids, probs, counts = z["ids"], z["probs"], z["counts"]
            if len(counts) == len(rows):
                log(f"word-level KD: the teacher's top-{top_k} targets from {path}")
                bounds = np.concatenate([[0], np.cumsum(counts)])
                return [(ids[a:b], probs[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        except (OSError, ValueError, KeyError):
            pass  # unreadable (a disk that filled): computed again
    log(f"word-level KD: the teacher's top-{top_k} next tokens at every answer position of {len(rows)} examples "
        f"(once; kept in {path})")
    targets = teacher_targets(load_teacher(), rows, top_k, temperature, bf16)
    buf = io.BytesIO()
    np.savez(buf, ids=np.concatenate([t[0] for t in targets]), probs=np.concatenate([t[1] for t in targets]),
             counts=np.array([len(t[0]) for t in targets], dtype=np.int64))
    atomic_write_bytes(path, buf.getvalue())
    return targets


def topk_kl(logq, ids, probs, temperature: float):
    """Summed KL(teacher's top-k || student) over positions: the teacher's k probabilities
    `probs` against the student's log-probabilities `logq` (at `temperature`, full softmax)
    of the same tokens."""
    p = probs.float()
    return (p * (p.clamp_min(1e-12).log() - logq.gather(1, ids.long()))).sum() * temperature**2


def cached_kd_trainer_class():
    """The answer-only trainer with loss = (1 - w) * CE + w * KL against cached top-k teacher targets."""
    from lamini_serve.train.loss import answer_logits, answer_only_trainer_class, per_item

    base = answer_only_trainer_class()

    class CachedKDTrainer(base):
        def __init__(self, *a, kd=None, **kw):
            super().__init__(*a, **kw)
            self.kd = kd

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch.nn.functional as F

            inputs = dict(inputs)
            ids, probs = inputs.pop("kd_ids"), inputs.pop("kd_probs")
            if return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if not self.model_accepts_loss_kwargs:
                num_items_in_batch = None
            head = self.accelerator.unwrap_model(model).get_output_embeddings()
            logits, targets = answer_logits(model, inputs, head)
            if logits.shape[0] != ids.shape[0]:
                raise LaminiError(f"the teacher's KD targets ({ids.shape[0]} positions) do not line up with the batch's "
                                  f"answer tokens ({logits.shape[0]}); delete OUT/.work/kd-targets-* and train again")
            t = self.kd.temperature
            logp = F.log_softmax(logits.float(), dim=-1)  # one softmax serves both terms at T = 1
            ce = F.nll_loss(logp, targets, reduction="sum")
            kl = topk_kl(logp if t == 1 else F.log_softmax(logits.float() / t, dim=-1), ids, probs, t)
            return per_item((1 - self.kd.weight) * ce + self.kd.weight * kl, num_items_in_batch,
                            targets.new_tensor(targets.numel()))

    return CachedKDTrainer
