"""`lamini ui`: the browser page that puts students beside the teacher; `lamini ui report`."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click

from lamini_serve.errors import LaminiError
from lamini_serve.serve.cli import LISTENING, LOCAL_HOSTS


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _auth(value: str | None):
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise click.BadParameter("expected USER:PASSWORD, e.g. --auth alice:s3cret", param_hint="--auth")
    return (user, password)


@click.group(invoke_without_command=True)
@click.option("--endpoint", envvar="LAMINI_ENDPOINT", default=None, metavar="URL",
              help="The OpenAI-compatible endpoint to compare models on "
                   "(default: $LAMINI_ENDPOINT, else http://127.0.0.1:8000/v1, where `lamini serve` listens).")
@click.option("--api-key-env", default="LAMINI_API_KEY", show_default=True, metavar="NAME",
              help="The environment variable that holds the endpoint's API key.")
@click.option("--serve", "serve_models", multiple=True, metavar="NAME=PATH | PATH",
              help="Start `lamini serve` with this model for the page (repeatable), e.g. "
                   "--serve embedded --serve smol=runs/herd/smol-6l.")
@click.option("--herd", default=None, metavar="DIR|RECIPE",
              help="Start `lamini serve --herd DIR` for the page: the teacher, the students and their exports.")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The SQLite file for votes and grades (default: $LAMINI_HOME/ui/votes.db).")
@click.option("--instructions", default=None, metavar="FILE.jsonl",
              help='The human evaluation\'s instructions, one {"instruction": ..., "input": ...} per line '
                   "(default: the 72 built-in ones).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the page listens.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--share", is_flag=True, help="Also publish the page on a public gradio.live link (off by default).")
@click.option("--auth", default=None, metavar="USER:PASSWORD", help="Ask for this login before the page opens.")
@click.option("--timeout", type=click.FloatRange(min=1), default=120, show_default=True,
              help="Seconds a model may stay silent before its column says it timed out.")
@click.option("--grade-repetition-penalty", type=click.FloatRange(min=1), default=1.1, show_default=True,
              help="Repetition penalty of the A-D tab's stored answers (greedy, as `lamini chat`); 1: none, "
                   "for endpoints without vLLM's sampling extensions.")
@click.pass_context
def ui(ctx, endpoint, api_key_env, serve_models, herd, db, instructions, host, port, share, auth, timeout,
       grade_repetition_penalty):
    """Chat with the herd beside its teacher in the browser: side by side, arena, A-D grades, leaderboard.

    \b
      lamini ui                                   # against `lamini serve` on :8000
      lamini ui --serve embedded --serve smol=runs/herd/smol-6l
      lamini ui --herd quickstart-cpu             # serve what the quickstart trained, and open the page
      lamini ui --endpoint http://gpu-box:8000/v1 --api-key-env MY_KEY
      lamini ui report --out report/              # the leaderboard's PNGs, CSVs and report.md

    Prints `lamini ui: open http://HOST:PORT` on standard output once the page is up.
    """
    given = [p for p in ctx.params if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
    if ctx.invoked_subcommand is not None:
        if given:
            raise click.UsageError(f"--{given[0].replace('_', '-')} belongs to the page, not to "
                                   f"`lamini ui {ctx.invoked_subcommand}`; put that command's own options after it")
        return
    if (serve_models or herd) and "endpoint" in given:
        raise click.UsageError("--endpoint and --serve/--herd exclude each other: the page uses the server it starts")
    if importlib.util.find_spec("gradio") is None:
        raise LaminiError("lamini ui needs gradio, which is not installed; install it with: "
                          "pip install 'lamini-serve[ui]'")
    credentials = _auth(auth)
    if credentials is None and host not in LOCAL_HOSTS:
        _err(f"lamini ui: warning: the page listens on {host} without --auth: anyone who reaches it may use the "
             "endpoint (and its API key) through it")
    from lamini_serve.ui import instructions as instruction_sets
    from lamini_serve.ui.client import DEFAULT_ENDPOINT, Endpoint, api_key_from
    from lamini_serve.ui.store import Store

    items = instruction_sets.load(instructions)
    store = Store(db)
    key = api_key_from(api_key_env)
    served = bool(serve_models or herd)
    started: list[subprocess.Popen] = []
    # SIGTERM and SIGHUP (a closed terminal) stop the page, and the server it started, as Ctrl-C does.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if served:
            endpoint = _start_server(serve_models, herd, key, started)
        _run(Endpoint(endpoint or DEFAULT_ENDPOINT, key, timeout), store, items, host, port, share, credentials,
             grade_repetition_penalty)
    except KeyboardInterrupt:
        _err("lamini ui: stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        store.close()
        for proc in started:
            _stop_server(proc)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _die_with_parent() -> None:
    """In the child: ask Linux for SIGTERM when the parent dies, even by SIGKILL (elsewhere: nothing)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start_server(models, herd, key, started: list) -> str:
    """`lamini serve` in its own process group on a free port (appended to `started` at once, so whatever
    happens next stops it); its messages go to our standard error. Returns its URL."""
    cmd = [sys.executable, "-m", "lamini_serve", "serve", *models, "--host", "127.0.0.1", "--port", "0"]
    if herd:
        cmd += ["--herd", herd]
    env = dict(os.environ)
    if key:
        env["LAMINI_API_KEY"] = key
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True,
                            preexec_fn=_die_with_parent)
    started.append(proc)
    for line in proc.stdout:
        if line.startswith(LISTENING):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return line[len(LISTENING):].strip()
    code = proc.wait()
    raise LaminiError(f"lamini serve stopped (exit {code}) before it listened; its message is above")


def _stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def _run(endpoint, store, items, host, port, share, credentials, grade_penalty: float = 1.1) -> None:
    from dataclasses import replace

    from lamini_serve.ui.app import EVAL_SAMPLING, UI, build

    ui_state = UI(endpoint, store, items, eval_sampling=replace(EVAL_SAMPLING, repetition_penalty=grade_penalty))
    ui_state.refresh()
    if ui_state.problem:
        _err(f"lamini ui: warning: {ui_state.problem} (the page shows this until the endpoint answers)")
    else:
        _err(f"lamini ui: {len(ui_state.models)} models on {endpoint.url}: "
             + ", ".join(m.label for m in ui_state.models))
    demo = build(ui_state)
    demo.queue(default_concurrency_limit=16)
    try:
        demo.launch(server_name=host, server_port=port, share=share, auth=credentials, prevent_thread_lock=True,
                    quiet=True, show_api=False, ssr_mode=False, allowed_paths=[str(ui_state.report_dir)],
                    inbrowser=False)
    except OSError as exc:
        raise LaminiError(f"cannot open the page on {host}:{port} ({exc}); pick another --port") from None
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    sys.stdout.write(f"lamini ui: open {url}\n")
    sys.stdout.flush()
    if getattr(demo, "share_url", None):
        _err(f"lamini ui: public link {demo.share_url}")
    _err(f"lamini ui: votes and grades go to {store.path}; Ctrl-C stops")
    try:
        while True:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        _err("lamini ui: shutting down")
        demo.close()


@ui.command("report")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The SQLite file `lamini ui` wrote (default: $LAMINI_HOME/ui/votes.db).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The folder for the PNGs, CSVs and report.md.")
@click.option("--rounds", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap rounds for the 95% intervals (0: none).")
@click.option("--seed", type=int, default=0, show_default=True)
def report(db, out, rounds, seed):
    """Write the leaderboard without the page: Bradley-Terry ratings, win rates, A-D grades.

    \b
      lamini ui report --db votes.db --out report/
    """
    from lamini_serve.ui.ranking import write_report
    from lamini_serve.ui.store import Store

    with Store(db, readonly=True) as store:
        written = write_report(store, out, rounds=rounds, seed=seed)
    for name, path in written.files.items():
        click.echo(f"{name:<16} {path}")
