"""`lamini chat MODEL`: talk to any model in the terminal, tokens streamed as they come."""

from __future__ import annotations

import sys
from typing import Callable, Iterable, TextIO

import click

HELP_TEXT = "Commands: /reset forgets the conversation, /exit (or Ctrl-D) quits."


def run_session(
    engine,
    params,
    lines: Iterable[str],
    out: TextIO,
    system: str | None = None,
    on_prompt: Callable[[], None] = lambda: None,
) -> list[tuple[str, str]]:
    """A multi-turn conversation: each line is a user turn, each answer is streamed to `out`.

    Returns the (user, assistant) turns that were kept.
    """
    from lamini_serve.prompts import conversation

    history: list[tuple[str, str]] = []
    on_prompt()
    for line in lines:
        text = line.strip()
        if text in ("/exit", "/quit", "/bye"):
            break
        if text == "/reset":
            history.clear()
            out.write("(conversation forgotten)\n")
        elif text in ("/help", "/?"):
            out.write(HELP_TEXT + "\n")
        elif text:
            answer = stream_answer(engine, conversation(text, history, system), params, out)
            history.append((text, answer))
        on_prompt()
    return history


def stream_answer(engine, messages, params, out: TextIO) -> str:
    pieces = []
    for piece in engine.stream(messages, params):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    return "".join(pieces)


def _interactive_lines() -> Iterable[str]:
    while True:
        try:
            yield input()
        except EOFError:
            return


@click.command()
@click.argument("model")
@click.option("-p", "--prompt", default=None,
              help="Answer this one prompt and exit (`-` reads it from standard input).")
@click.option("--system", default=None, help="A system message (chat-format models only).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 is greedy decoding; try 0.7 for varied answers.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--repetition-penalty", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Above 1 discourages small models from looping.  [default: 1.1; with --endpoint, the server's]")
@click.option("--seed", type=int, default=None, help="Seed for sampling, for repeatable answers.")
@click.option("--format", "prompt_format", type=click.Choice(["raw", "alpaca", "chat"]), default=None,
              help="Override the prompt format recorded in the checkpoint.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps")
@click.option("--dtype", default="auto", show_default=True, help="auto (bf16 on GPUs that have it, else fp32), float32, bfloat16, float16")
@click.option("--variant", default=None, help="ONNX exports: which graph, e.g. fp32 or fp16 (default: the deployable int8).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX exports: ONNX Runtime threads (default: all cores, the fastest measured).")
@click.option("--endpoint", default=None, metavar="URL",
              help="Chat with MODEL as served by an OpenAI-compatible server (`lamini serve`, vLLM...), "
                   "e.g. http://127.0.0.1:8000/v1. The key is read from LAMINI_API_KEY.")
def chat(model, prompt, system, max_new_tokens, temperature, top_p, repetition_penalty, seed, prompt_format, device, dtype,
         variant, threads, endpoint):
    """Chat with MODEL: `embedded`, a checkpoint folder, an export from `lamini export`, or a hub id.

    Multi-turn and streamed. With -p, answer one prompt and exit.

    \b
      lamini chat embedded
      lamini chat embedded -p "Give three tips for staying healthy."
      lamini chat ./runs/quickstart/t5-small --max-new-tokens 128
      lamini chat ./runs/teacher-onnx          (ONNX Runtime, int8)
      lamini chat teacher --endpoint http://127.0.0.1:8000/v1   (a served model)
    """
    from lamini_serve.engines import load_engine
    from lamini_serve.generation import SamplingParams
    from lamini_serve.prompts import conversation
    from lamini_serve.teacher.embedded import resolve_model

    params = SamplingParams(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        repetition_penalty=1.1 if repetition_penalty is None else repetition_penalty, seed=seed,
    )
    if prompt == "-":  # `echo "question" | lamini chat M -p -` asks what `-p "question"` asks
        prompt = sys.stdin.read().strip()
    if endpoint:
        local_only = [name for name, value in (("--format", prompt_format), ("--variant", variant), ("--threads", threads),
                                               ("--device", device != "auto"), ("--dtype", dtype != "auto")) if value]
        if local_only:
            raise click.UsageError(f"{local_only[0]} is for models run here, not with --endpoint (the server prompts its models)")
        engine = EndpointEngine(endpoint, model, send_repetition_penalty=repetition_penalty is not None)
        name = f"{model} at {endpoint}"
    else:
        spec = resolve_model(model, prompt_format=prompt_format)
        click.echo(f"Loading {spec.describe()} ...", err=True)
        if spec.runtime != "onnx" and (variant or threads):
            raise click.UsageError("--variant and --threads are for ONNX exports (folders made by `lamini export`)")
        ort_options = {k: v for k, v in (("variant", variant), ("threads", threads)) if v}
        engine = load_engine(spec, device=device, dtype=dtype, **ort_options)
        name = spec.name
    out = sys.stdout
    if prompt is not None:
        if not prompt.strip():
            raise click.UsageError("the prompt is empty")
        stream_answer(engine, conversation(prompt, (), system), params, out)
        return
    tty = sys.stdin.isatty()
    if tty:
        click.echo(f"Chatting with {name}. {HELP_TEXT}", err=True)
    run_session(
        engine, params, _interactive_lines(), out, system,
        on_prompt=(lambda: click.echo(">>> ", nl=False, err=True)) if tty else (lambda: None),
    )


class EndpointEngine:
    """A model behind an OpenAI-compatible endpoint, with the `stream` face of the local engines."""

    def __init__(self, url: str, model: str, send_repetition_penalty: bool = False):
        import os

        from openai import OpenAI

        from lamini_serve.errors import LaminiError

        if not url.startswith(("http://", "https://")):
            raise LaminiError(f"--endpoint {url!r} is not an http(s) URL; give one like http://127.0.0.1:8000/v1")
        self.url, self.model, self.send_repetition_penalty = url.rstrip("/"), model, send_repetition_penalty
        self.client = OpenAI(base_url=self.url, api_key=os.environ.get("LAMINI_API_KEY") or "none", max_retries=0)

    def stream(self, messages, params):
        import openai

        from lamini_serve.errors import LaminiError

        extra = {"repetition_penalty": params.repetition_penalty} if self.send_repetition_penalty else {}
        try:
            chunks = self.client.chat.completions.create(
                model=self.model, messages=list(messages), stream=True, max_tokens=params.max_new_tokens,
                temperature=params.temperature, top_p=params.top_p, seed=params.seed,
                stop=list(params.stop) or None, extra_body=extra or None)
            for chunk in chunks:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield choice.delta.content
        except openai.APIConnectionError:
            raise LaminiError(f"cannot reach {self.url}; is the server running (`lamini serve ...`)?") from None
        except openai.AuthenticationError:
            raise LaminiError(f"{self.url} refused the key; set LAMINI_API_KEY to the server's --api-key") from None
        except openai.APIStatusError as exc:
            from lamini_serve.teacher.client import status_error_message

            raise LaminiError(f"{self.url} answered {exc.status_code}: {status_error_message(exc)}") from None
