"""What this machine's processor offers: feature flags, and whether it computes bfloat16 natively."""

from __future__ import annotations

import platform
from pathlib import Path

# x86 instructions that multiply bfloat16 in hardware (AVX-512 BF16 on Zen 4 / Cooper Lake and
# newer, AMX on Sapphire Rapids and newer). Without them bf16 is emulated and slower than fp32.
NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})


def _cpuinfo(keys: tuple[str, ...]) -> str | None:
    """The value of the first /proc/cpuinfo line starting with one of `keys` (Linux; None elsewhere)."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return None
    for line in info.read_text(errors="replace").splitlines():
        if line.startswith(keys):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> set[str]:
    """CPU feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    return set((_cpuinfo(("flags", "Features")) or "").split())


def cpu_name() -> str:
    """The processor's model name, as benchmarks record it."""
    return _cpuinfo(("model name",)) or platform.processor() or platform.machine()


def is_arm() -> bool:
    return platform.machine().lower() in ("arm64", "aarch64")


def cpu_native_bf16(flags: set[str] | None = None) -> bool:
    """True where the CPU multiplies bfloat16 in hardware (x86: AVX-512 BF16 or AMX).

    Read from /proc/cpuinfo on Linux; elsewhere torch's own CPU probe is asked (x86 only).
    ARM chips with BF16 (Graviton 3 and newer) are not counted: unmeasured here.
    """
    if flags is None:
        flags = cpu_flags()
        if not flags and not is_arm():
            try:
                import torch

                return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
            except (ImportError, AttributeError):
                return False
    return bool(NATIVE_BF16 & flags)
