"""Word-level distillation (beyond the paper): cross-entropy mixed with a divergence from the teacher's logits.

forward_kl = KL(teacher || student) (mass-covering, the classic Hinton KD),
reverse_kl = KL(student || teacher) (mode-seeking, as in MiniLLM),
jsd = the generalized Jensen-Shannon divergence with mixture weight beta (as in GKD).
All are scaled by temperature**2 so gradients keep their size when T changes.
"""

from __future__ import annotations

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
