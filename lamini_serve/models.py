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

import json
import os
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Sequence

from lamini_serve.errors import LaminiError
from lamini_serve.prompts import Message, PromptFormat, render, stop_strings

METADATA_FILE = "lamini.json"
METADATA_VERSION = 1

# Names that stand for the embedded teacher wherever a model or teacher is asked for.
EMBEDDED_ALIASES = ("embedded", "teacher", "embedded-teacher")


class Family(str, Enum):
    CAUSAL = "causal"
    SEQ2SEQ = "seq2seq"


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
        pull: bool = True,
    ) -> "ModelSpec":
        """Turn what a user typed into a spec: an alias, a local folder or a hub id.

        `pull=True` lets "embedded" fetch the teacher on first use.
        """
        name = str(name)
        if name in EMBEDDED_ALIASES:
            from lamini_serve.teacher.embedded import teacher_dir

            path = teacher_dir(pull=pull)
            return cls._from_files(name, str(path), _local_reader(path), True, prompt_format)
        local = Path(name).expanduser()
        if local.exists():
            if not local.is_dir():
                raise LaminiError(f"{name} is a file, not a checkpoint folder; pass the folder that holds config.json")
            if not (local / "config.json").is_file():
                raise LaminiError(
                    f"{name} is not a checkpoint: it has no config.json; pass a folder written by "
                    f"save_pretrained (or `lamini train`), or a hub id such as gpt2"
                )
            return cls._from_files(name, str(local.resolve()), _local_reader(local), True, prompt_format)
        if _looks_like_path(name):
            raise LaminiError(f"no such folder: {name}; check the path, or pass a hub id such as google/flan-t5-small")
        return cls._from_files(name, name, _hub_reader(name), False, prompt_format)

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

    def load_engine(self, device: str = "auto", dtype: str = "auto", **ort_options: Any):
        """The engine that runs this model: OrtEngine for an ONNX export, TorchEngine otherwise."""
        if self.runtime == "onnx":
            from lamini_serve.ort_engine import OrtEngine

            return OrtEngine(self, **ort_options)
        from lamini_serve.engine import TorchEngine

        return TorchEngine(self, device=device, dtype=dtype)

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        with _hub_errors(self.name):
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
        with _hub_errors(self.name):
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


# ---- checkpoint metadata ----------------------------------------------------
ONNX_CAUSAL_FILE = "model.onnx"
ONNX_ENCODER_FILE = "encoder_model.onnx"
ONNX_DECODER_FILE = "decoder_model_merged.onnx"


def onnx_file(kind: str, variant: str = "") -> str:
    """File name of a graph ("causal", "encoder", "decoder") in an export.

    The default variant (int8 unless exported with --quantize none) has optimum's
    standard names, so `ORTModelFor*.from_pretrained(folder)` loads it with no
    arguments; other variants sit beside it as model_fp32.onnx, model_fp16.onnx ...
    """
    base = {"causal": ONNX_CAUSAL_FILE, "encoder": ONNX_ENCODER_FILE, "decoder": ONNX_DECODER_FILE}[kind]
    return base if not variant else base[:-len(".onnx")] + f"_{variant}.onnx"


def is_onnx_folder(folder: str | os.PathLike) -> bool:
    """Whether a folder holds an ONNX export (optimum's standard file names)."""
    folder = Path(folder)
    return (folder / ONNX_CAUSAL_FILE).is_file() or (folder / ONNX_ENCODER_FILE).is_file()


def write_metadata(folder: Path, family: Family, prompt_format: PromptFormat, **extra: Any) -> dict[str, Any]:
    """Record in a checkpoint how it must be prompted (read back by ModelSpec)."""
    from lamini_serve import __version__
    from lamini_serve.paths import atomic_write_text

    meta = {
        "format_version": METADATA_VERSION,
        "family": Family(family).value,
        "prompt_format": PromptFormat(prompt_format).value,
        "created_by": f"lamini-serve {__version__}",
        **extra,
    }
    atomic_write_text(Path(folder) / METADATA_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta


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


def _local_reader(folder: Path):
    folder = Path(folder)

    def read(fname: str, required: bool = False, text: bool = False):
        p = folder / fname
        if not p.is_file():
            if required:
                raise LaminiError(f"{folder} is not a checkpoint: it has no {fname}")
            return None
        raw = p.read_text(encoding="utf-8")
        if text:
            return raw
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LaminiError(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or regenerate it") from None

    return read


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so that no network fails in seconds, not after retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True  # the proxy decides; let the real request try
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_reader(repo_id: str):
    reachable: dict[str, bool] = {}

    def read(fname: str, required: bool = False, text: bool = False):
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # our one-line errors replace its retry chatter
        try:
            with _hub_errors(repo_id):
                try:  # the local hub cache first: works offline for models used before
                    p = hf_hub_download(repo_id, fname, local_files_only=True)
                except LocalEntryNotFoundError:
                    if not constants.HF_HUB_OFFLINE:
                        if "hub" not in reachable:
                            reachable["hub"] = _hub_reachable()
                        if not reachable["hub"]:
                            raise ConnectionError("the hub endpoint is unreachable") from None
                    p = hf_hub_download(repo_id, fname)
        except EntryNotFoundError:
            if required:
                raise LaminiError(f"{repo_id} on the hub has no {fname}: it is not a transformers checkpoint") from None
            return None
        except LaminiError:
            if required:
                raise
            return None
        return _local_reader(Path(p).parent)(Path(p).name, required, text)

    return read


class _hub_errors:
    """Turn the hub's exceptions into one-line LaminiErrors."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, LaminiError):
            return False
        from huggingface_hub.utils import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        n = self.name
        if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
            return False  # the caller decides whether a missing file matters
        if isinstance(exc, GatedRepoError):
            raise LaminiError(f"{n} is gated on the hub; accept its terms there and run `huggingface-cli login`") from None
        if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError)):
            raise LaminiError(
                f"unknown model {n!r}: no such local folder and no such repository on the hub; "
                f"check the spelling, or pass a local checkpoint folder"
            ) from None
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        if isinstance(exc, LocalEntryNotFoundError) or _is_connection_error(exc):
            why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached (no network?)"
            raise LaminiError(
                f"cannot fetch {n!r}: {why} and it is not in the local hub cache; "
                f"connect once to download it, or pass a local checkpoint folder (or `embedded`)"
            ) from None
        if isinstance(exc, OSError) and "is not a local folder and is not a valid model identifier" in str(exc):
            raise LaminiError(f"unknown model {n!r}; check the spelling, or pass a local checkpoint folder") from None
        return False


def _is_connection_error(exc: BaseException) -> bool:
    import requests

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
