"""What every engine and client shares: sampling parameters and the one result record.

A generation result is a `Completion` whoever produced it (TorchEngine, OrtEngine,
the HTTP teacher client, `lamini serve`), and "the model stopped at its token
limit" is decided in one place, `cut_at_limit`, for data, train and stats alike.
This module is a leaf: it imports nothing of lamini-serve but its error type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

from lamini_serve.errors import LaminiError


def cut_at_limit(finish_reason: str | None) -> bool:
    """True for an answer the model stopped at its max_tokens (OpenAI's finish_reason "length")."""
    return finish_reason == "length"


@dataclass
class SamplingParams:
    """How to pick tokens. temperature 0 means greedy (deterministic)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per time a token was generated
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # always produce max_new_tokens (benchmarks)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise LaminiError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise LaminiError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LaminiError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise LaminiError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise LaminiError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise LaminiError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        self.stop = tuple(self.stop)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"

    @property
    def cut(self) -> bool:
        """Whether the answer ended at the token limit rather than by itself."""
        return cut_at_limit(self.finish_reason)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Text up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def finish(text: str, stops: Sequence[str], prompt_tokens: int, completion_tokens: int, ended: bool,
           max_new_tokens: int) -> Completion:
    """The one rule, for every engine, that turns a decoded answer into a Completion.

    `ended`: the model produced an end-of-sequence token. The text is cut at the first
    stop string; an incomplete multi-byte character at the end (decoded as U+FFFD when
    the token limit split it) is dropped, as the stream and vLLM drop it.
    """
    text, stopped = cut_at_stop(text, stops)
    reason = "stop" if (ended or stopped or completion_tokens < max_new_tokens) else "length"
    return Completion(text[:visible_end(text)].lstrip(), prompt_tokens, completion_tokens, reason)


def visible_end(text: str) -> int:
    """Where the shown answer ends: before trailing whitespace and U+FFFD (bytes of a
    character that never completed). Streams and `finish` cut at the same place."""
    end = len(text)
    while end and (text[end - 1].isspace() or text[end - 1] == "\ufffd"):
        end -= 1
    return end


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might be the start of a stop string (not yet safe to show)."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return keep


class TextGate:
    """Decides, piece by piece, which generated text is safe to show: the one stop-string
    and whitespace rule behind every stream (`lamini chat`, `lamini serve`) and `finish`.

    Text that may begin a stop string is held back until it is clear; the text ends at
    the first stop string (`stopped` turns True). With `strip` (answers shown to a
    person) leading whitespace is dropped and trailing whitespace and U+FFFD wait: they
    may end the answer, which `finish` strips. The pieces `feed` and `close` return
    join to exactly the finished answer.
    """

    def __init__(self, stops: Sequence[str] = (), strip: bool = True):
        self.stops, self.strip = tuple(s for s in stops if s), strip
        self.text, self.shown, self.started, self.stopped = "", 0, not strip, False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        if not self.started:  # answers often open with the format's newline: skip it
            stripped = self.text.lstrip()
            self.shown = len(self.text) - len(stripped)
            self.started = bool(stripped)
            if not self.started:
                return ""
        cut, self.stopped = cut_at_stop(self.text, self.stops)
        safe = cut if self.stopped else self.text[:len(self.text) - held_back(self.text, self.stops)]
        end = visible_end(safe) if self.strip else len(safe)
        return self._show(end)

    def close(self) -> str:
        """What is left to show when the model stops (held-back text that turned out safe)."""
        if self.stopped or not self.started:
            return ""
        self.stopped = True
        return self._show(visible_end(self.text) if self.strip else len(self.text))

    def _show(self, end: int) -> str:
        if end <= self.shown:
            return ""
        piece, self.shown = self.text[self.shown:end], end
        return piece


def visible_pieces(pieces: Iterator[str], stops: Sequence[str]) -> Iterator[str]:
    """Turn raw decoded pieces into what a user should see (see `TextGate`), so that the
    pieces join to `generate`'s answer."""
    gate = TextGate(stops)
    for piece in pieces:
        shown = gate.feed(piece)
        if shown:
            yield shown
        if gate.stopped:
            return
    rest = gate.close()
    if rest:
        yield rest
