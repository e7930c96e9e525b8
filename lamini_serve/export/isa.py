"""Which instruction set the int8 kernels should target: detected, or named by the user."""

from __future__ import annotations

from lamini_serve.errors import LaminiError
from lamini_serve.hardware import cpu_flags, is_arm

# Best first. Names follow optimum's AutoQuantizationConfig constructors.
ISAS = ("avx512_vnni", "avx512", "avx2", "arm64")
_NEEDS = {"avx512_vnni": {"avx512_vnni", "avx512f"}, "avx512": {"avx512f"}, "avx2": {"avx2"}}


def supported_isas(flags: set[str] | None = None, arm: bool | None = None) -> list[str]:
    arm = is_arm() if arm is None else arm
    if arm:
        return ["arm64"]
    flags = cpu_flags() if flags is None else flags
    return [isa for isa in ISAS[:-1] if _NEEDS[isa] <= flags]


def resolve_isa(isa: str = "auto", flags: set[str] | None = None, arm: bool | None = None) -> str:
    """`auto` gives the best this CPU has; a named one is checked against the CPU."""
    have = supported_isas(flags, arm)
    if isa == "auto":
        if not have:
            raise LaminiError("this CPU has none of AVX2, AVX-512 or ARM64 NEON that ONNX Runtime's int8 kernels use; "
                              "export with --quantize none")
        return have[0]
    if isa not in ISAS:
        raise LaminiError(f"unknown instruction set {isa!r}; choose one of auto, {', '.join(ISAS)}")
    if isa not in have:
        found = ", ".join(have) or "none of them"
        raise LaminiError(f"this CPU lacks {isa} (it has: {found}); pass --isa auto, or export on the machine that will run the model")
    return isa


def quantization_config(isa: str, per_channel: bool = True):
    """optimum's dynamic int8 configuration for an instruction set (weights int8, activations quantized per call)."""
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    return getattr(AutoQuantizationConfig, isa)(is_static=False, per_channel=per_channel)
