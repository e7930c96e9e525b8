"""Self-Instruct-style filters, each switchable, each dropping with a reason.

Rules for instructions: too short or too long, asks for things a text model
cannot see or make (images, files, plots...), starts with punctuation or with
something that is not text, loops (a phrase repeated). Rules for answers are the
garbage checks in `text.looks_like_garbage` plus the loop check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from lamini_serve.data.text import repeats_a_phrase, words
from lamini_serve.errors import LaminiError

MEDIA_WORDS = [
    "image", "images", "graph", "graphs", "picture", "pictures", "photo", "photos", "file", "files",
    "map", "maps", "draw", "plot", "plots", "go to", "video", "videos", "audio", "recording",
    "flowchart", "diagram", "diagrams", "screenshot", "attached", "attachment", "link", "url", "website",
]
_MEDIA = re.compile(r"\b(" + "|".join(re.escape(w) for w in MEDIA_WORDS) + r")\b", re.I)


@dataclass(frozen=True)
class FilterConfig:
    min_words: int = 3
    max_words: int = 150
    media: bool = True  # needs images, files, plots, links...
    bad_start: bool = True  # starts with punctuation or a non-letter, non-digit character
    repetitive: bool = True  # a 4-word phrase 4 times or more
    disabled: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.min_words < 0 or self.max_words < self.min_words:
            raise LaminiError(f"need 0 <= min_words <= max_words, got {self.min_words} and {self.max_words}")
        unknown = set(self.disabled) - set(RULES)
        if unknown:
            raise LaminiError(f"unknown filter(s) {', '.join(sorted(unknown))}; the filters are: {', '.join(RULES)}")

    def on(self, rule: str) -> bool:
        if rule in self.disabled:
            return False
        return getattr(self, rule, True) if rule in {f.name for f in fields(self)} else True


RULES = ("too_short", "too_long", "media", "bad_start", "repetitive")


def instruction_reason(text: str, cfg: FilterConfig = FilterConfig()) -> str | None:
    """Why an instruction should be dropped, or None to keep it."""
    n = len(words(text))
    if cfg.on("too_short") and n < cfg.min_words:
        return f"too short ({n} words < {cfg.min_words})"
    if cfg.on("too_long") and n > cfg.max_words:
        return f"too long ({n} words > {cfg.max_words})"
    if cfg.on("media"):
        m = _MEDIA.search(text)
        if m:
            return f"needs media or files ({m.group(0).lower()!r})"
    if cfg.on("bad_start"):
        first = text.lstrip()[:1]
        if not first or not (first.isalnum() and first.isascii()):
            return f"starts with {first!r}, not a letter or digit"
    if cfg.on("repetitive") and repeats_a_phrase(text):
        return "repeats a phrase"
    return None


def response_reason(text: str, cfg: FilterConfig = FilterConfig()) -> str | None:
    from lamini_serve.data.text import looks_like_garbage

    why = looks_like_garbage(text)
    if why:
        return why
    if cfg.on("repetitive") and repeats_a_phrase(text, n=5, times=4):
        return "repeats a phrase"
    return None
