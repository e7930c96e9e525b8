"""Where a student's weights come from: a base checkpoint, layers kept from the teacher, or a config."""

from __future__ import annotations

from typing import Any

from lamini_serve.errors import LaminiError
from lamini_serve.models import Family, ModelSpec
from lamini_serve.prompts import PromptFormat
from lamini_serve.train.recipe import Student


def evenly_spaced(total: int, keep: int) -> list[int]:
    """`keep` layer indices spread over `total`, first and last included (DistilBERT-style)."""
    if not 1 <= keep <= total:
        raise LaminiError(f"cannot keep {keep} of the teacher's {total} layers; choose 1..{total}")
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


KEEP_RULES = ("ends", "spread", "first")


def kept_layers(total: int, layers: int, rule: str | list[int] = "ends") -> list[int]:
    """Which of the teacher's `total` blocks a student of `layers` blocks keeps.

    - ends: the first half and the last half, the middle dropped as one block (the
      layers next to the embeddings and next to the head stay neighbours, as trained);
    - spread: evenly spaced, first and last included (DistilBERT's every-other-layer);
    - first: the first `layers` (the head then reads a hidden state it never saw);
    - a list of indices: exactly those.
    """
    if isinstance(rule, list):
        if len(rule) != layers or len(set(rule)) != len(rule) or not all(0 <= i < total for i in rule):
            raise LaminiError(f"init.keep must list {layers} different layer indices in 0..{total - 1}, got {rule}")
        return sorted(rule)
    if not 1 <= layers <= total:
        raise LaminiError(f"cannot keep {layers} of the teacher's {total} layers; choose 1..{total}")
    if rule == "spread":
        return evenly_spaced(total, layers)
    if rule == "first":
        return list(range(layers))
    if rule == "ends":
        head = layers // 2
        return list(range(head)) + list(range(total - (layers - head), total))
    raise LaminiError(f"init.keep must be one of {', '.join(KEEP_RULES)} or a list of layer indices, got {rule!r}")


def student_from_teacher(teacher: Any, layers: int, rule: str | list[int] = "ends"):
    """A smaller model of the teacher's architecture: embeddings, final norm, head and `layers` of
    its blocks (which ones: `kept_layers`)."""
    import copy

    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(teacher.config)
    blocks = decoder_blocks(teacher)
    keep = kept_layers(len(blocks), layers, rule)
    if hasattr(cfg, "num_hidden_layers"):
        cfg.num_hidden_layers = len(keep)
    elif hasattr(cfg, "n_layer"):
        cfg.n_layer = len(keep)
    else:
        raise LaminiError(f"cannot cut layers from a {cfg.model_type} teacher; use a base checkpoint instead")
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    student = AutoModelForCausalLM.from_config(cfg)
    own = student.state_dict()
    # Everything outside the blocks (embeddings, norm, head) is copied as is.
    block_prefix = _blocks_prefix(teacher)
    for name, tensor in teacher.state_dict().items():
        if not name.startswith(block_prefix) and name in own:
            own[name] = tensor.clone()
    for new_i, old_i in enumerate(keep):
        for name, tensor in blocks[old_i].state_dict().items():
            own[f"{block_prefix}{new_i}.{name}"] = tensor.clone()
    student.load_state_dict(own)
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student, keep


def decoder_blocks(model):
    """The ModuleList of a decoder-only model's transformer blocks (llama, gpt2, gpt-neox layouts)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    raise LaminiError(f"cannot find the transformer blocks of {type(model).__name__}")


def _blocks_prefix(model) -> str:
    names = [n for n, _ in model.named_modules()]
    for prefix in ("model.layers.", "transformer.h.", "gpt_neox.layers."):
        if any(n.startswith(prefix) for n in names):
            return prefix
    raise LaminiError(f"cannot find the transformer blocks of {type(model).__name__}")


def seq2seq_from_config(cfg: dict[str, Any], tok):
    """A fresh encoder-decoder (T5) built from a config, sized to the given tokenizer."""
    from transformers import AutoModelForSeq2SeqLM, T5Config

    cfg = dict(cfg)
    model_type = cfg.pop("model_type", "t5")
    if model_type != "t5":
        raise LaminiError(f"init.from_config supports model_type t5, got {model_type!r}")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    config = T5Config(vocab_size=len(tok), pad_token_id=pad, eos_token_id=tok.eos_token_id,
                      decoder_start_token_id=pad, **cfg)
    model = AutoModelForSeq2SeqLM.from_config(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = pad
    model.generation_config.decoder_start_token_id = pad
    return model


def build_student(student: Student, teacher_name: str, device: str = "cpu"):
    """(model, tokenizer, spec): the student's initial weights, and how it will be prompted. A student
    cut from the teacher has the teacher blocks it kept in `spec.metadata["kept_layers"]`."""
    if student.init.from_teacher or student.init.from_config:
        from lamini_serve.teacher.embedded import resolve_model

        tspec = resolve_model(teacher_name)
        tok = tspec.load_tokenizer()
        if student.init.from_teacher:
            if tspec.family is not Family.CAUSAL:
                raise LaminiError("init.from_teacher needs a decoder-only teacher")
            teacher = tspec.load_model(device="cpu", dtype="float32")
            model, kept = student_from_teacher(teacher, student.init.layers, student.init.keep)
            del teacher
            family = Family.CAUSAL
            fmt = PromptFormat(student.prompt_format) if student.prompt_format else tspec.prompt_format
        else:
            model = seq2seq_from_config(student.init.from_config, tok)
            family = Family.SEQ2SEQ
            fmt = PromptFormat(student.prompt_format or "raw")
        tok.padding_side = "right"
        spec = ModelSpec(name=student.name, path="", family=family, prompt_format=fmt, model_type=model.config.model_type)
        if student.init.from_teacher:
            # In memory only (not in the saved config.json): hidden-state KD (kd.hidden) reads its
            # junctions from it.
            spec.metadata["kept_layers"] = kept
        return model, tok, spec
    base = ModelSpec.resolve(student.base)
    fmt = PromptFormat(student.prompt_format) if student.prompt_format else (
        PromptFormat.RAW if base.family is Family.SEQ2SEQ else
        base.prompt_format if "prompt_format" in base.metadata else PromptFormat.ALPACA)
    spec = ModelSpec(name=student.name, path=base.path, family=base.family, prompt_format=fmt, model_type=base.model_type)
    tok = base.load_tokenizer()
    tok.padding_side = "right"
    model = base.load_model(device="cpu", dtype="float32")
    return model, tok, spec
