"""What this machine's processor offers: feature flags, and whether it computes bfloat16 natively."""

from __future__ import annotations

import platform
from pathlib import Path

# x86 instructions that multiply bfloat16 in hardware (AVX-512 BF16 on Zen 4 / Cooper Lake and
# newer, AMX on Sapphire Rapids and newer). Without them bf16 is emulated and slower than fp32.
NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> set[str]:
    """CPU feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return set()
    for line in info.read_text(errors="replace").splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def is_arm() -> bool:
    return platform.machine().lower() in ("arm64", "aarch64")


def cpu_native_bf16(flags: set[str] | None = None) -> bool:
    """True where the CPU multiplies bfloat16 in hardware (checked on x86 only; elsewhere False)."""
    flags = cpu_flags() if flags is None else flags
    return bool(NATIVE_BF16 & flags)
