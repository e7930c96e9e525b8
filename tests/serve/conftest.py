"""Fixtures for the server's tests: tiny ONNX exports. (`serve`, which starts real
`lamini serve` processes, is in tests/conftest.py: the UI's tests use it too.)"""

from __future__ import annotations

from pathlib import Path

import pytest

EXPORT_KINDS = ("llama", "gpt2", "t5")


def export_tiny(tiny_models, root: Path, kinds=EXPORT_KINDS) -> dict[str, Path]:
    """{kind: fp32 ONNX export folder} (fp32: greedy tokens match PyTorch's exactly)."""
    from lamini_serve.export.exporter import ExportOptions, export_model

    for kind in kinds:
        if not (root / kind).is_dir():
            export_model(str(tiny_models[kind]), root / kind, ExportOptions(quantize="none"), report_prompts=0)
    return {kind: root / kind for kind in kinds}


@pytest.fixture(scope="session")
def tiny_exports(tiny_models, tmp_path_factory):
    return export_tiny(tiny_models, tmp_path_factory.mktemp("serve-exports"), ("llama", "t5"))
