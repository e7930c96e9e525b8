"""How close each model's answers are to the teacher's, and an automatic A-D rater.

On a held-out instruction set (the 72 built-in instructions, the user's JSONL, or the
held-out split of the herd's data) every model answers greedily; each answer is compared
with the teacher's answer to the same instruction:

- ROUGE-L (word longest common subsequence, `lamini_serve.rouge`), averaged per answer;
- chrF (character n-gram F-score, sacrebleu's, over the whole set);
- the length ratio: the model's words over the teacher's, summed over the set.

The rater asks a judge model (the teacher by default, or any endpoint) for the LaMini-LM
paper's grade, A to D, with the same four definitions the human evaluation in `lamini ui`
uses. It is a proxy for human rating, and small judges are weak ones: its answers that do
not parse as one grade are counted as such, never guessed.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lamini_serve.errors import LaminiError
from lamini_serve.paths import atomic_write_text
from lamini_serve.rouge import rouge_l
from lamini_serve.ui.store import GRADE_MEANINGS, GRADES

UNPARSED = "unparsed"
JUDGE_PROMPT = """You are grading an AI assistant's response to a user's instruction.

Instruction:
{instruction}

Response:
{response}

Grade the response with one letter:
{definitions}

Reply with the letter alone (A, B, C or D)."""
# the grade: a capital A-D, alone or after "Grade:"/"Rating:", followed by nothing, punctuation or a new line
# ("B", "(C).", "Grade: A - good", "D\nThe answer...") but not a word that starts a sentence ("A good answer")
_GRADE = re.compile(r"^[\s\"'*(\[]*(?:(?i:grade|rating|rate)[\s*]*[:=]?[\s*]*)?[\"'*(\[]*([ABCD])"
                    r"(?=[\"'*)\]]*(?:\s*$|[.:,;!]|\s+-\s|\s*\n))")
_OTHER = re.compile(r"(?<![\w'])[ABCD](?![\w'])")


def parse_grade(text: str) -> str:
    """"A".."D", or UNPARSED for anything that is not one grade ("A, B or C" is not one)."""
    m = _GRADE.match(text or "")
    if not m:
        return UNPARSED
    rest = text[m.end():].split("\n", 1)[0]
    return UNPARSED if _OTHER.search(rest) else m.group(1)


def judge_prompt(instruction: str, response: str) -> str:
    defs = "\n".join(f"{g}: {GRADE_MEANINGS[g]}" for g in GRADES)
    return JUDGE_PROMPT.format(instruction=instruction, response=response.strip() or "(empty)", definitions=defs)


# ---- who answers -------------------------------------------------------------------------
class Responder:
    """Greedy answers from one model, in-process or behind an endpoint."""

    name: str

    def answer(self, prompts: Sequence[str], max_tokens: int) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class EngineResponder(Responder):
    """A model on the in-process engine `lamini serve` uses (torch or onnx), batched."""

    def __init__(self, name: str, engine):
        self.name, self.engine = name, engine

    def answer(self, prompts: Sequence[str], max_tokens: int) -> list[str]:
        from lamini_serve.engines.base import EngineError
        from lamini_serve.eval.lms import bounded
        from lamini_serve.generation import SamplingParams

        eng = self.engine
        params = SamplingParams(max_new_tokens=max_tokens, stop=tuple(eng.default_stops))
        try:
            jobs = [(eng.chat_ids([{"role": "user", "content": p}]), params) for p in prompts]
        except EngineError as exc:
            raise LaminiError(f"{self.name}: {exc}") from None
        return [t.strip() for t in asyncio.run(bounded(eng, jobs))]

    def close(self) -> None:
        self.engine.close()


class EndpointResponder(Responder):
    """A model behind an OpenAI-compatible endpoint, through the `openai` client."""

    def __init__(self, name: str, base_url: str, model: str, api_key: str | None, concurrency: int = 4):
        from lamini_serve.ui.client import Endpoint

        self.name, self.model, self.concurrency = name, model, concurrency
        self.endpoint = Endpoint(base_url, api_key, timeout=600)

    def answer(self, prompts: Sequence[str], max_tokens: int) -> list[str]:
        """Greedy answers, `concurrency` requests at a time (the UI's one-answer call)."""
        from lamini_serve.ui.client import Sampling, answer

        greedy = Sampling(temperature=0, max_tokens=max_tokens)

        async def run() -> list[str]:
            gate = asyncio.Semaphore(self.concurrency)

            async def one(prompt: str) -> str:
                async with gate:
                    return (await answer(self.endpoint, self.model, [{"role": "user", "content": prompt}],
                                         greedy)).strip()

            return list(await asyncio.gather(*(one(p) for p in prompts)))

        return asyncio.run(run())


def load_responder(model) -> Responder:
    """A `Responder` for an `EvalModel` (checkpoints and exports on the in-process engine)."""
    if model.kind == "endpoint":
        import os

        return EndpointResponder(model.name, model.source, model.served, model.extra.get("api_key")
                                 or os.environ.get("LAMINI_API_KEY"))
    from lamini_serve.engines.inprocess import InProcessEngine

    return EngineResponder(model.name, InProcessEngine.load(model.name, model.spec, model.kind))


# ---- the instruction set -------------------------------------------------------------------
@dataclass(frozen=True)
class Instructions:
    name: str  # changes with the content, so stored answers of an edited set are not reused
    prompts: tuple[str, ...]


def load_instructions(source: str | None, herd_data: tuple[str, float, int] | None = None,
                      limit: int | None = None) -> Instructions:
    """`builtin` (default), `held-out` (the herd's held-out split: (data folder, eval share, seed)),
    or a JSONL file of {"instruction", "input"} rows."""
    if source == "held-out":
        if herd_data is None:
            raise LaminiError("--instructions held-out needs --herd RECIPE (its data's held-out split); "
                              "or use builtin or a JSONL file")
        from lamini_serve.train.data import load_pairs, split_pairs

        data, share, seed = herd_data
        _, held = split_pairs(load_pairs(data), share, seed)
        prompts = tuple(p["instruction"] for p in held)
        import hashlib

        name = "held-out-" + hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:12]
    else:
        from lamini_serve.ui.instructions import load

        iset = load(source)
        name, prompts = iset.name, tuple(item.prompt for item in iset.items)
    if limit is not None:
        prompts = prompts[:limit]
        name += f"-first{limit}"
    if not prompts:
        raise LaminiError("the instruction set is empty")
    return Instructions(name, prompts)


# ---- answers, stored per model ----------------------------------------------------------
def answers_path(out: Path, kind: str, model: str) -> Path:
    return out / kind / f"{model}.json"


def cached(out: Path, kind: str, model: str, key: dict) -> list[str] | None:
    try:
        rec = json.loads(answers_path(out, kind, model).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec.get("texts") if rec.get("key") == key else None


def store(out: Path, kind: str, model: str, key: dict, texts: Sequence[str]) -> None:
    atomic_write_text(answers_path(out, kind, model), json.dumps({"key": key, "texts": list(texts)}, indent=1) + "\n")


# ---- the figures ----------------------------------------------------------------------------
def chrf(candidates: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus chrF (0-100)."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(list(candidates), [list(references)]).score)


def digest(texts: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:16]


def words(text: str) -> int:
    return len(text.split())


def agreement(answers: Sequence[str], teacher: Sequence[str]) -> dict[str, float]:
    """ROUGE-L (mean), chrF (corpus) and the length ratio of `answers` against the teacher's."""
    n = len(teacher)
    if len(answers) != n or not n:
        raise ValueError("answers and teacher answers must be the same, non-empty length")
    total = sum(words(t) for t in teacher)
    return {
        "rouge_l": sum(rouge_l(a, t) for a, t in zip(answers, teacher)) / n,
        "chrf": chrf(answers, teacher),
        "length_ratio": sum(words(a) for a in answers) / total if total else float("nan"),
        "n": n,
    }


def grade_counts(grades: Sequence[str]) -> dict[str, int]:
    return {g: sum(1 for x in grades if x == g) for g in (*GRADES, UNPARSED)}


def judge(responder: Responder, instructions: Sequence[str], answers: Sequence[str],
          max_tokens: int = 16) -> tuple[list[str], list[str]]:
    """(grades, the judge's raw replies) for each answer."""
    replies = responder.answer([judge_prompt(i, a) for i, a in zip(instructions, answers)], max_tokens)
    return [parse_grade(r) for r in replies], replies
