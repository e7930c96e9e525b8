"""lm-evaluation-harness models for every kind of model `lamini eval` scores.

- a checkpoint (local folder or hub id), either family: lm-eval's own `HFLM`, with the
  `causal` or `seq2seq` backend read from the checkpoint;
- an ONNX export folder: `EngineLM`, over the same in-process engine `lamini serve` runs
  (its teacher-forced `score` for log-likelihoods, its batch scheduler for generation);
- a model behind an OpenAI-compatible endpoint (`lamini serve`, vLLM): lm-eval's
  `local-completions`, which scores by `echo` + `logprobs` on token-id prompts.

Every one of them is wrapped in `prompted()` when the model has an instruction prompt
format (a student or teacher made by lamini-serve): the task's context is put in the model's
prompt (the Alpaca wrapper of the LaMini students, or the teacher's chat template), as the
LaMini-LM paper scored its students. Base models are scored on the raw text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any, Callable, Sequence

from lamini_serve.errors import LaminiError
from lamini_serve.models import Family


def _lm_base():
    from lm_eval.api.model import LM, TemplateLM

    return LM, TemplateLM


def prompted(inner, render: Callable[[str], str]):
    """`inner` whose log-likelihood and generation requests see `render(context)`."""
    LM, _ = _lm_base()

    class _Prompted(LM):
        def __init__(self):
            super().__init__()
            self.inner, self.render = inner, render
            self.tokenizer = getattr(inner, "tokenizer", None)

        def _wrap(self, requests):
            return [dataclasses.replace(r, arguments=(self.render(r.arguments[0]), *r.arguments[1:])) for r in requests]

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self.inner.loglikelihood(self._wrap(requests), disable_tqdm=disable_tqdm)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self.inner.generate_until(self._wrap(requests), disable_tqdm=disable_tqdm)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self.inner.loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)  # raw text: no prompt

    return _Prompted()


def engine_lm(engine):
    """An lm-eval model over an `InProcessEngine` (an ONNX export, or torch in tests)."""
    _, TemplateLM = _lm_base()

    class _EngineLM(TemplateLM):
        def __init__(self):
            super().__init__()
            self.engine = engine
            self.tokenizer = engine.tokenizer
            self.backend = "causal" if engine.is_decoder_only else "seq2seq"

        @property
        def eot_token_id(self) -> int:
            return self.tokenizer.eos_token_id

        @property
        def prefix_token_id(self) -> int:  # what an empty context becomes, as HFLM picks it
            bos = self.tokenizer.bos_token_id
            return bos if bos is not None else self.tokenizer.eos_token_id

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            return encode(self.tokenizer, string, add_special_tokens)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
            if not self.engine.is_decoder_only:
                raise NoLoglikelihood(self.engine.name)
            limit = self.engine.context_length
            out = []
            for _, ctx, cont in requests:
                ids = (list(ctx) + list(cont))[-limit:]  # left-truncated, as HFLM does
                scored = min(len(cont), len(ids) - 1)  # the first token of the window has no log-probability
                lps = self.engine.scheduler.score(ids, 1)[len(ids) - scored:]
                total = sum(lp.logprob for lp in lps)
                greedy = all(lp.top and lp.top[0][0] == lp.token_id for lp in lps)
                out.append((float(total), bool(greedy)))
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            if not self.engine.is_decoder_only:
                raise NoLoglikelihood(self.engine.name)
            out = []
            for (text,) in (r.args for r in requests):
                ids = [self.prefix_token_id] + self.tok_encode(text)
                out.append(float(sum(lp.logprob for lp in self.engine.scheduler.score(ids, None)[1:])))
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            args = [(self.tok_encode(context), kw) for context, kw in (r.args for r in requests)]
            return asyncio.run(_generate_all(self.engine, args))

    return _EngineLM()


def encode(tokenizer, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """lm-eval's tokenization rule (HFLM's): None means what the tokenizer adds by default (a BOS,
    T5's </s>), unless the text already starts with the BOS text (a chat template that writes it)."""
    if add_special_tokens is None and tokenizer.bos_token and text.startswith(tokenizer.bos_token):
        add_special_tokens = False
    special = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    return list(tokenizer(text, return_token_type_ids=False, **special)["input_ids"])


async def bounded(engine, jobs: Sequence[tuple[list[int], Any]], limit: int | None = None) -> list[str]:
    """Each (prompt ids, SamplingParams) through an in-process engine, at most `limit` in flight
    (the engine's batch: more would only wait in its bounded queue); the prompt is left-truncated
    to leave room for the answer. An engine error becomes a one-line LaminiError."""
    from lamini_serve.engines.base import EngineError, Request

    gate = asyncio.Semaphore(limit or getattr(engine.scheduler, "max_batch", 32))
    room = engine.context_length

    async def one(i: int, ids: list[int], params) -> str:
        keep = max(1, room - params.max_new_tokens)
        async with gate:
            req = Request(f"eval-{i}", list(ids)[-keep:], params)
            try:
                return "".join([d.text async for d in engine.generate(req)])
            except EngineError as exc:
                raise LaminiError(f"{engine.name}: {exc}") from None

    return list(await asyncio.gather(*(one(i, ids, p) for i, (ids, p) in enumerate(jobs))))


async def _generate_all(engine, args: Sequence[tuple[list[int], dict]]) -> list[str]:
    from lamini_serve.generation import SamplingParams

    jobs = []
    for ids, kw in args:
        until = kw.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        jobs.append((ids, SamplingParams(max_new_tokens=int(kw.get("max_gen_toks", 256)),
                                         temperature=float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0,
                                         stop=tuple(until))))
    return await bounded(engine, jobs)


class NoLoglikelihood(LaminiError):
    """The model can generate but cannot score a continuation (no log-likelihoods)."""

    def __init__(self, name: str, why: str = "an encoder-decoder ONNX export"):
        super().__init__(f"{name} cannot give log-likelihoods ({why})")


def hf_lm(spec, device: str, batch_size: int | str):
    """lm-eval's HFLM over a checkpoint, with the backend of its family."""
    from lm_eval.models.huggingface import HFLM

    from lamini_serve.models import resolve_device

    tok = spec.load_tokenizer()
    model = spec.load_model(device=device)
    backend = "causal" if spec.family is Family.CAUSAL else "seq2seq"
    return HFLM(pretrained=model, tokenizer=tok, backend=backend, batch_size=batch_size,
                device=resolve_device(device))


def endpoint_lm(base_url: str, model: str, tokenizer_path: str, api_key: str | None, max_length: int,
                batch_size: int = 1):
    """lm-eval's `local-completions` against an OpenAI-compatible server, token-id prompts."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    class _Completions(LocalCompletionsAPI):
        """Tokenizes as HFLM does (`encode`), so the endpoint scores the same token ids."""

        def tok_encode(self, string, left_truncate_len=None, add_special_tokens=None, truncation=False, **kwargs):
            if not isinstance(string, str):
                return [self.tok_encode(x, left_truncate_len, add_special_tokens) for x in string]
            ids = encode(self.tokenizer, string, add_special_tokens)
            return ids[-left_truncate_len:] if left_truncate_len else ids

        @property
        def prefix_token_id(self) -> int:
            bos = self.tokenizer.bos_token_id
            return bos if bos is not None else self.tokenizer.eos_token_id

    lm = _Completions(model=model, base_url=base_url.rstrip("/") + "/completions", tokenizer=tokenizer_path,
                      tokenizer_backend="huggingface", tokenized_requests=True, num_concurrent=1,
                      max_retries=2, batch_size=batch_size, max_length=max_length,
                      auth_token=api_key or "EMPTY", timeout=600)
    lm.add_bos_token = None  # its generation then tokenizes with the tokenizer's defaults too
    return lm


def probe_endpoint(base_url: str, model: str, token_ids: list[int], api_key: str | None) -> dict[str, Any]:
    """Check that the endpoint scores prompts the way local-completions reads them: `echo` +
    `logprobs` on a token-id prompt give one log-probability per prompt token, plus one for
    the generated token. Returns the served model's card from /v1/models."""
    import urllib.error
    import urllib.request

    root = base_url.rstrip("/")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key or 'EMPTY'}"}

    def call(path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(root + path, data=data, headers=headers, method="POST" if body else "GET")
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise LaminiError(f"{root}{path} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise LaminiError(f"cannot reach {root} ({getattr(exc, 'reason', exc)}); start it (lamini serve ...) or "
                              "fix the URL") from None

    cards = {c.get("id"): c for c in call("/models").get("data", [])}
    if model not in cards:
        raise LaminiError(f"{root} serves no model {model!r} (it serves: {', '.join(map(str, cards)) or 'none'})")
    if not token_ids:
        return cards[model]
    out = call("/completions", {"model": model, "prompt": [token_ids], "max_tokens": 1, "temperature": 0,
                                "logprobs": 1, "echo": True})
    try:
        lps = out["choices"][0]["logprobs"]["token_logprobs"]
        ok = len(lps) == len(token_ids) + 1 and all(isinstance(v, (int, float)) for v in lps[1:])
    except (KeyError, IndexError, TypeError):
        ok = False
    if not ok:
        raise NoLoglikelihood(model, f"{root} does not return the prompt's log-probabilities (echo with logprobs); "
                              "lamini serve and vLLM do")
    return cards[model]


def model_card(base_url: str, model: str, api_key: str | None) -> dict[str, Any]:
    """The served model's card from /v1/models, checked to exist (no scoring probe)."""
    return probe_endpoint(base_url, model, [], api_key)
