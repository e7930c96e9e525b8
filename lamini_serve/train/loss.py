"""The language-model loss computed on the answer tokens only.

A decoder-only student is trained on its answers alone (the prompt's labels are
-100), yet `model(**batch).loss` runs the lm_head and a softmax over the whole
vocabulary at every position. For a small student with a large vocabulary that is
most of the work: the embedded teacher cut to 6 layers spends about 28M
multiply-adds per token in its lm_head (576 x 49152) against about 21M in its six
blocks. `answer_only_loss` runs the model as usual but hands its lm_head only
the hidden states of the positions that predict an answer token, and takes the
cross-entropy over those alone: the same loss and the same gradients, less compute and far less
memory for logits.
"""

from __future__ import annotations

from typing import Any

from lamini_serve.train.data import IGNORE

# Model types whose logits are exactly lm_head(base_model(...).last_hidden_state):
# no logit scaling or soft-capping after the head. Others use the model's own loss.
SUPPORTED = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neo", "gpt_neox", "gptj"})


def supports_answer_only(model: Any) -> bool:
    cfg = getattr(model, "config", None)
    return (getattr(cfg, "model_type", None) in SUPPORTED and not getattr(cfg, "final_logit_softcapping", None)
            and model.get_output_embeddings() is not None)


def answer_logits(model: Any, inputs: dict[str, Any], head: Any = None):
    """(logits, targets): the lm_head's output at the positions that predict an answer token
    (those whose next label is not -100), in batch-major, position order, and those labels.

    `model` is called as it is (a DDP or FSDP wrapper keeps its hooks); a forward
    pre-hook on its lm_head (`head`, by default `model.get_output_embeddings()`)
    hands the head only those hidden states. `inputs` holds the model's inputs and
    `labels`; nothing else.
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    targets = labels[:, 1:]  # the hidden state at t predicts the label at t + 1
    keep = targets != IGNORE
    head = head if head is not None else model.get_output_embeddings()

    def select(_module, args, kwargs):
        hidden = args[0]
        return (hidden[:, :-1][keep],) + tuple(args[1:]), kwargs

    handle = head.register_forward_pre_hook(select, with_kwargs=True)
    try:
        logits = model(**inputs, use_cache=False).logits
    finally:
        handle.remove()
    return logits, targets[keep]


def per_item(total: Any, num_items: Any, count: Any):
    """`total` divided by `num_items` when given (the Trainer's token count over the
    accumulated batch), else by `count` (this batch's), like the models' own loss."""
    denom = num_items if num_items is not None else count.clamp(min=1)
    if hasattr(denom, "to"):
        denom = denom.to(total.device)
    return total / denom


def answer_only_loss(model: Any, inputs: dict[str, Any], num_items: Any = None, head: Any = None):
    """Cross-entropy of next-token prediction over the positions whose label is not -100
    (`answer_logits`), normalised by `per_item`."""
    import torch.nn.functional as F

    logits, targets = answer_logits(model, inputs, head)
    total = F.cross_entropy(logits.float(), targets, reduction="sum")
    return per_item(total, num_items, (targets != IGNORE).sum())


def answer_only_trainer_class():
    from transformers import Trainer

    class AnswerOnlyTrainer(Trainer):
        """The Trainer, with the loss of `answer_only_loss` (normalised as the models' own)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # The model's own path where this one does not apply: evaluation wants logits;
            # nn.DataParallel (several GPUs in one process) splits the batch under the hook's
            # mask; label smoothing and a custom loss function work on full logits.
            if (return_outputs or self.args.n_gpu > 1 or self.label_smoother is not None
                    or self.compute_loss_func is not None):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if not self.model_accepts_loss_kwargs:
                num_items_in_batch = None  # the Trainer divides by the accumulation steps itself
            head = self.accelerator.unwrap_model(model).get_output_embeddings()
            loss = answer_only_loss(model, inputs, num_items_in_batch, head=head)
            if (self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs
                    and num_items_in_batch is not None):
                loss = loss * self.accelerator.num_processes
            return loss

    return AnswerOnlyTrainer
