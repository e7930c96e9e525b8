"""Which engine runs a model, and loading it: the one place that knows every engine.

An ONNX export (a folder made by `lamini export`) runs on `OrtEngine`; every other
checkpoint on `TorchEngine`. Both take OpenAI-style conversations and return
`generation.Completion`s.
"""

from __future__ import annotations

from typing import Any

from lamini_serve.models import ModelSpec


def load_engine(spec: ModelSpec, device: str = "auto", dtype: str = "auto", **ort_options: Any):
    """The engine that runs `spec`: OrtEngine for an ONNX export, TorchEngine otherwise."""
    if spec.runtime == "onnx":
        from lamini_serve.engines.ort_engine import OrtEngine

        return OrtEngine(spec, **ort_options)
    from lamini_serve.engines.torch_engine import TorchEngine

    return TorchEngine(spec, device=device, dtype=dtype)
