"""`lamini serve`: the teacher and its students behind one OpenAI-compatible endpoint."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading

import click


LISTENING = "lamini serve: listening on "  # then the URL: the one line scripts wait for on standard output
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")  # addresses only this machine reaches


def _err(msg: str) -> None:
    click.echo(msg, err=True)


@click.command()
@click.argument("models", nargs=-1, metavar="[NAME=PATH | PATH]...")
@click.option("--herd", metavar="DIR|RECIPE", default=None,
              help="Serve a trained herd: `teacher`, every student in DIR/herd.json, and their exports "
                   "(DIR-onnx/<student>, from `lamini export --herd`) as <student>-int8. A recipe "
                   "(quickstart-cpu, or its YAML file) names the folder it trains.")
@click.option("--engine", "engines", multiple=True, metavar="NAME=vllm|onnx|torch",
              help="Run NAME on this engine instead of the one chosen for it (repeatable).")
@click.option("--teacher", default=None, metavar="NAME",
              help="The served model listed as the teacher in /v1/models (default: the embedded one, `teacher`).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option("--api-key", envvar="LAMINI_API_KEY", default=None,
              help="Require `Authorization: Bearer KEY` on every route but /health and the API docs "
                   "(default: $LAMINI_API_KEY; none: open).")
@click.option("--require-api-key", is_flag=True, envvar="LAMINI_REQUIRE_API_KEY",
              help="Refuse to start without an API key (the Docker image's default: it listens on 0.0.0.0).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Cores the in-process models share (default: all).")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="In-process models: requests decoded together.")
@click.option("--max-waiting", type=click.IntRange(min=1), default=256, show_default=True,
              help="In-process models: requests queued before 429.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=4096, show_default=True,
              help="The most tokens one choice may ask for.")
@click.option("--max-n", type=click.IntRange(min=1), default=8, show_default=True, help="The most choices per prompt.")
@click.option("--max-body", type=click.IntRange(min=1024), default=1 << 20, show_default=True,
              help="The largest request body in bytes (413 above).")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="URL",
              help="Allow browsers from this origin (repeatable; default: no CORS).")
@click.option("--vllm-arg", "vllm_args", multiple=True, metavar="NAME=ARG",
              help="Pass ARG to NAME's vLLM server, e.g. --vllm-arg 'teacher=--max-model-len 2048' (repeatable).")
@click.option("--kv-cache-gib", type=click.FloatRange(min=0, min_open=True), default=1, show_default=True,
              help="GPU memory for each vLLM model's KV cache.")
def serve(models, herd, engines, teacher, host, port, api_key, require_api_key, threads, max_batch, max_waiting,
          max_tokens, max_n, max_body, cors_origins, vllm_args, kv_cache_gib):
    """Serve models behind one OpenAI-compatible endpoint (/v1/chat/completions, /v1/completions).

    \b
      lamini serve embedded runs/herd/t5-small
      lamini serve teacher=embedded t5=runs/herd/t5-small --port 8001
      lamini serve --herd quickstart-cpu --api-key "$KEY"
      lamini serve --herd runs/herd --engine smol-6l=torch

    Each model is named NAME (NAME=PATH) or after its folder (`embedded` -> teacher).
    Once every in-process model is loaded it prints one line to standard output,
    `lamini serve: listening on http://HOST:PORT/v1`; vLLM models answer 503 with
    Retry-After until they are ready (see GET /health).
    """
    from lamini_serve.serve import registry

    if require_api_key and not api_key:
        raise registry.UsageProblem("no API key, and this server requires one (--require-api-key): set LAMINI_API_KEY "
                                    "or pass --api-key KEY")
    _serve(registry, models, herd, engines, teacher, host, port, api_key, threads, max_batch, max_waiting,
           max_tokens, max_n, max_body, cors_origins, vllm_args, kv_cache_gib)


def _serve(registry, models, herd, engines, teacher, host, port, api_key, threads, max_batch, max_waiting,
           max_tokens, max_n, max_body, cors_origins, vllm_args, kv_cache_gib):
    planned = registry.plan(models, herd, engines, teacher, log=_err)
    if not api_key and host not in LOCAL_HOSTS:
        _err(f"lamini serve: warning: listening on {host} without an API key: anyone who reaches it may use it; "
             "set --api-key or LAMINI_API_KEY")
    width = max(len(p.name) for p in planned)
    for p in planned:
        _err(f"  {p.name:<{width}}  {p.kind:<5}  {p.why}; from {p.source} ({p.origin})")
    extra = registry.vllm_args(vllm_args)
    loaded = registry.load(planned, threads=threads, max_batch=max_batch, max_waiting=max_waiting,
                           vllm_extra=extra, kv_cache_gib=kv_cache_gib, log=_err)
    from lamini_serve.serve.app import Limits, create_app

    app = create_app(loaded, api_key=api_key or None, cors_origins=cors_origins,
                     limits=Limits(max_body_bytes=max_body, max_n=max_n, max_tokens=max_tokens),
                     roles={p.name: p.role for p in planned})
    sock = _bind(host, port)
    try:
        _event_loop_run(_run(app, loaded, sock, host, bool(api_key), next(iter(loaded))))
    finally:
        sock.close()


def _event_loop_run(main) -> None:
    """asyncio.run, on uvloop where it is installed (not on Windows): every relayed token is a
    socket read and a socket write on this loop, and uvloop's cost a fraction of asyncio's."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(main)
    return uvloop.run(main)


def _bind(host: str, port: int) -> socket.socket:
    from lamini_serve.errors import LaminiError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
    # proto says TCP, and with Nagle on, the first event after a stream's headers waited for the
    # client's delayed ACK: 40 ms added to every streamed answer's first token.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LaminiError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                          "pick another --port (0: any free one)") from None
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"


async def _run(app, engines, sock, host, with_key: bool, example: str) -> None:
    import asyncio
    import logging

    import uvicorn

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Idle connections are kept longer than clients keep them (httpx and the openai SDK: 5 s), so a
    # client never reuses a connection the server is closing at that moment (a ReadError under load).
    server = _Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10, access_log=False,
                                    timeout_keep_alive=75))
    for engine in engines.values():
        if getattr(engine, "relayed", False):
            await engine.start()

    async def announce():
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.02)
        url = _url(host, sock.getsockname()[1])
        sys.stdout.write(f"{LISTENING}{url}\n")
        sys.stdout.flush()
        _err(f"Serving {len(engines)} model{'s' if len(engines) != 1 else ''} on {url}")
        auth = ' -H "Authorization: Bearer $LAMINI_API_KEY"' if with_key else ""
        _err(f"try: curl {url}/chat/completions -H 'Content-Type: application/json'{auth} "
             f"-d '{{\"model\": \"{example}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'")

    task = asyncio.ensure_future(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        task.cancel()
        _err("lamini serve: shutting down")
        for engine in engines.values():
            try:
                if getattr(engine, "relayed", False):
                    await engine.aclose()
                else:
                    await asyncio.to_thread(engine.close)
            except Exception as exc:  # closing the others matters more
                _err(f"lamini serve: closing {getattr(engine, 'name', '?')} failed: {exc}")


def _Server(config):
    """uvicorn's server, whose Ctrl-C / SIGTERM shut down gracefully and then return
    (uvicorn re-raises the signal afterwards, which would skip closing the engines)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    return Server(config)
