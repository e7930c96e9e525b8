"""Teachers behind one tiny interface: `run(requests, on_result)`.

- `InProcessTeacher`: any ModelSpec (the embedded teacher by default) on torch, or an
  ONNX export of it (`lamini export`) on ONNX Runtime, fed whole batches, because
  batching is where a CPU finds its speed.
- `HTTPTeacher`: any OpenAI-compatible endpoint (OpenAI, vLLM, `lamini serve`)
  through the async client with limits and retries; a sliding window of tasks
  keeps memory flat for millions of requests.

Both call `on_result` as each unit completes, so the caller can store it at once.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

from lamini_serve.errors import LaminiError
from lamini_serve.teacher.client import ClientConfig, OpenAIClient, Request, Result

OnResult = Callable[[Result], None]


class InProcessTeacher:
    kind = "in-process"
    # Re-sends of an unusable reply (the pipeline's budget): one, because regenerating on a
    # CPU is slow and a greedy answer comes back the same anyway.
    max_retries = 1

    def __init__(self, name: str = "embedded", batch_size: int = 32, device: str = "auto", dtype: str = "auto",
                 pull: bool = False, variant: str | None = None):
        from lamini_serve.models import ModelSpec

        if pull:  # a command: fetch the embedded teacher on first use, saying so
            from lamini_serve.teacher.embedded import resolve_model

            self.spec = resolve_model(name)
        else:
            self.spec = ModelSpec.resolve(name)
        self.batch_size = batch_size
        self.device, self.dtype = device, dtype
        self.variant = _onnx_variant(self.spec, variant)
        label = self.spec.metadata.get("display_name") or (self.variant and _export_source(self.spec)) or name
        # The work keys name the model, not where it runs: an fp32 export answers as the
        # checkpoint it came from, so a run begun on torch resumes on ONNX Runtime. A
        # quantized graph is another teacher (its answers differ), so it has its own name.
        self.id = f"local:{label}" if self.variant in (None, "fp32") else f"local:{label}@{self.variant}"
        self.provenance = {"kind": self.kind, "model": name, "path": str(self.spec.path),
                           "runtime": self.spec.runtime, **({"variant": self.variant} if self.variant else {})}
        # A teacher states which instruction-generation prompt it can follow (lamini.json).
        self.style = self.spec.metadata.get("generation_style", "chat")
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            from lamini_serve.engines import load_engine

            options = {"variant": self.variant} if self.variant else {}
            self._engine = load_engine(self.spec, device=self.device, dtype=self.dtype, **options)
        return self._engine

    def run(self, requests: Iterable[Request], on_result: OnResult) -> None:
        from lamini_serve.generation import SamplingParams

        groups: dict[str, list[Request]] = {}
        for r in requests:
            # A per-request seed cannot hold inside a batch: requests that differ only by
            # seed share one, so that they can be batched at all.
            sampling = {k: v for k, v in r.payload.items() if k not in ("messages", "prompt", "seed")}
            groups.setdefault(repr((r.kind, sorted(sampling.items()))), []).append(r)
        for reqs in groups.values():
            p = reqs[0].payload
            params = SamplingParams(
                max_new_tokens=int(p.get("max_tokens") or 256), temperature=float(p.get("temperature") or 0.0),
                top_p=float(p.get("top_p") or 1.0), seed=p.get("seed"), stop=tuple(p.get("stop") or ()),
                repetition_penalty=float(p.get("repetition_penalty") or 1.0),
            )
            # Similar prompt lengths in one batch waste less padding. (Refilling finished rows
            # was tried: on a CPU the prefill it repeats costs more than the idle rows it saves.)
            reqs = sorted(reqs, key=lambda r: len(r.payload.get("prompt") or str(r.payload.get("messages"))))
            for i in range(0, len(reqs), self.batch_size):
                batch = reqs[i:i + self.batch_size]
                if batch[0].kind == "chat":
                    outs = self.engine.generate([r.payload["messages"] for r in batch], params)
                else:
                    outs = self.engine.complete([r.payload["prompt"] for r in batch], params)
                for r, c in zip(batch, outs):
                    on_result(Result(r.key, c))


class HTTPTeacher:
    kind = "http"

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY", style: str = "chat", **client_kw):
        if not model:
            raise LaminiError("--teacher-url needs --teacher-model: the model name the server knows")
        self.config = ClientConfig(url, model, api_key=os.environ.get(api_key_env) or None, **client_kw)
        # The work keys and the dataset name the model, which decides the text; the address does
        # not (localhost and 127.0.0.1, or a proxy, reach the same server): it is provenance only.
        self.id = model
        self.provenance = {"kind": self.kind, "model": model, "url": self.config.base_url}
        self.style = style
        self.retries = 0

    @property
    def max_retries(self) -> int:
        return self.config.max_retries

    def run(self, requests: Iterable[Request], on_result: OnResult) -> None:
        import asyncio

        asyncio.run(self._run(requests, on_result))

    async def _run(self, requests: Iterable[Request], on_result: OnResult) -> None:
        import asyncio

        window = self.config.concurrency * 2
        it = iter(requests)
        earlier = self.retries  # a caller may run several rounds: the count goes on
        async with OpenAIClient(self.config) as client:
            pending: set[asyncio.Task] = set()

            def fill() -> None:
                while len(pending) < window:
                    req = next(it, None)
                    if req is None:
                        return
                    pending.add(asyncio.create_task(client.send(req)))

            fill()
            try:
                while pending:
                    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        pending.discard(task)
                        result = task.result()  # TeacherFatal stops the run here
                        self.retries = earlier + client.retries
                        on_result(result)
                    fill()
            finally:
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)


def _export_source(spec) -> str | None:
    """The checkpoint an ONNX export was made from, as `lamini export` was given it (None otherwise)."""
    import json
    from pathlib import Path

    from lamini_serve.export.exporter import MANIFEST

    record = Path(spec.path) / MANIFEST
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("source", {}).get("path")
    except (OSError, ValueError):
        return None


def _onnx_variant(spec, variant: str | None) -> str | None:
    """The graph variant an export's teacher runs ("int8", "fp32" ...; None for a torch checkpoint),
    checked now rather than when the first batch loads the engine."""
    if spec.runtime != "onnx":
        if variant:
            raise LaminiError(f"--teacher-variant {variant} needs an ONNX export as the teacher (`lamini export`); "
                              f"{spec.path} is a torch checkpoint")
        return None
    from lamini_serve.engines.ort_engine import variant_files

    variant_files(spec, variant)
    return variant or spec.metadata.get("default_variant") or "int8"


def make_teacher(teacher: str = "embedded", url: str | None = None, model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", batch_size: int = 32, device: str = "auto",
                 variant: str | None = None, **client_kw):
    """The teacher a command asked for: an HTTP endpoint when a URL is given, else an in-process model."""
    if url:
        if variant:
            raise LaminiError("--teacher-variant picks a graph of an in-process ONNX teacher; "
                              "an endpoint (--teacher-url) serves its own model: drop one of the two")
        return HTTPTeacher(url, model or "", api_key_env=api_key_env, **client_kw)
    return InProcessTeacher(teacher, batch_size=batch_size, device=device, pull=True, variant=variant)
