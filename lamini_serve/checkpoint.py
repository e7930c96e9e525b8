"""What a checkpoint or export folder holds, read and written in one place.

`lamini.json` records how a model must be prompted (written by the teacher pull,
`lamini train` and `lamini export`); an export keeps optimum's standard ONNX file
names. A leaf module: nothing here loads a model.
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from lamini_serve.errors import LaminiError
from lamini_serve.prompts import PromptFormat

METADATA_FILE = "lamini.json"
METADATA_VERSION = 1


class Family(str, Enum):
    """A model's family: decoder-only (causal) or encoder-decoder (seq2seq)."""

    CAUSAL = "causal"
    SEQ2SEQ = "seq2seq"

# read(fname, required=False, text=False) -> parsed JSON, raw text, or None when absent
Reader = Callable[..., Any]


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


def graph_kinds(family: Family) -> tuple[str, ...]:
    """The graphs an export of this family holds."""
    return ("encoder", "decoder") if Family(family) is Family.SEQ2SEQ else ("causal",)


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


def local_reader(folder: Path):
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
