"""The Gradio page of `lamini ui`: side by side, arena, human evaluation, leaderboard.

It is a client of any OpenAI-compatible endpoint (`lamini serve` by default). The
handlers live on `UI`, so each can be called and tested without a browser; the
page (`build`) only wires them to components.

No `from __future__ import annotations` here: Gradio reads the `gr.Request`
annotation of a handler to pass the request in.
"""

import asyncio
import os
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool

import gradio as gr  # noqa: E402

from lamini_serve.errors import LaminiError  # noqa: E402
from lamini_serve.ui import client as C  # noqa: E402
from lamini_serve.ui.instructions import InstructionSet  # noqa: E402
from lamini_serve.ui.store import GRADE_MEANINGS, GRADES, WINNERS, Store, Vote  # noqa: E402

MAX_COLUMNS = 4   # side by side: 2 to 4 models
MAX_SLOTS = 6     # human evaluation: answers graded per instruction
EVAL_OUTPUTS = 2 + 2 * MAX_SLOTS + 2  # what the human evaluation's handlers update: see eval_next
KEEP_REPORTS = 20  # leaderboard refreshes kept on disk
# The human evaluation's answers: made once, greedy, with `lamini chat`'s repetition penalty, so every
# rater sees the same answers (lamini ui --grade-repetition-penalty 1 for endpoints without that extension).
EVAL_SAMPLING = C.Sampling(temperature=0.0, top_p=1.0, max_tokens=256, seed=0, repetition_penalty=1.1)
GRADE_CHOICES = [(f"{g}: {GRADE_MEANINGS[g].split(':')[0]}", g) for g in GRADES]
DEFINITIONS = "\n".join(f"- **{g}**: {GRADE_MEANINGS[g]}" for g in GRADES)
WINNER_WORDS = {"model_a": "A is better", "model_b": "B is better", "tie": "a tie", "both_bad": "both are bad"}
EXAMPLES = [
    "Give three tips for staying healthy.",
    "Write an email to your manager asking for Friday off to attend a family event.",
    "Explain what photosynthesis is to a ten-year-old.",
    "Rewrite this sentence in a more formal tone: Hey, can you send me that report real quick?",
    "Write a haiku about autumn leaves.",
    "If a train travels 60 kilometres per hour for 2.5 hours, how far does it go?",
]
CSS = """
.lamini-banner {border-left: 4px solid #d9534f; padding: 6px 12px; background: #fdf1f0;}
.lamini-stats {font-size: 0.85em; color: #555;}
.lamini-answer {overflow-wrap: anywhere;}
"""


def _sampling(temperature, top_p, max_tokens, seed, repetition_penalty=1.0) -> C.Sampling:
    """The sampling controls' values; the seed box is text (a gr.Number sends 0 when left empty)."""
    text = "" if seed is None else str(seed).strip()
    try:
        seed = int(text) if text else None
    except ValueError:
        raise gr.Error(f"seed {text!r} is not a whole number; type one, or leave it empty for a random answer") \
            from None
    return C.Sampling(float(temperature), float(top_p), int(max_tokens), seed, float(repetition_penalty))


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "no-session"


def _turn(history: list, text: str) -> list:
    return [*history, {"role": "assistant", "content": text}]


def _streaming(*stats) -> list[bool]:
    """Which columns were still streaming when Stop was pressed."""
    return [bool(s) and s.endswith(" · streaming") for s in stats]


def _stopped(was_streaming: list[bool], *stats):
    """The figures under the columns once Stop cut their streams: each column that was still
    streaming says "stopped", whatever its stream's last update (which may land after the
    cancel) wrote."""
    out = []
    for i, s in enumerate(stats):
        if s and i < len(was_streaming) and was_streaming[i]:
            s = s.removesuffix(" · streaming").removesuffix(" · stopped") + " · stopped"
        out.append(s)
    return out


def _display(messages: list) -> list:
    """What a chatbot shows: the conversation, an answer still empty shown as an ellipsis."""
    return [m if m["content"] else {**m, "content": "..."} for m in messages]


class UI:
    def __init__(self, endpoint: C.Endpoint, store: Store, instructions: InstructionSet,
                 report_dir: Path | None = None, rounds: int = 1000, eval_sampling: C.Sampling = EVAL_SAMPLING):
        self.endpoint = endpoint
        self.eval_sampling = eval_sampling
        self.store = store
        self.instructions = instructions
        self.report_dir = Path(report_dir or tempfile.mkdtemp(prefix="lamini-ui-report-"))
        self.rounds = rounds
        self.models: list[C.ModelInfo] = []
        self.problem: str | None = None
        self._answer_locks: dict[tuple, asyncio.Lock] = {}

    # -- the endpoint -----------------------------------------------------------------
    def refresh(self) -> None:
        try:
            self.models = C.list_models(self.endpoint)
            self.problem = None if self.models else f"{self.endpoint.url} serves no models"
        except LaminiError as exc:
            self.models, self.problem = [], str(exc)

    def choices(self) -> list[tuple[str, str]]:
        return [(m.label, m.id) for m in self.models]

    def banner(self):
        if self.problem:
            return gr.update(value=f"**The endpoint is not answering.** {self.problem}. Then press *Reconnect*.",
                             visible=True)
        return gr.update(value="", visible=False)

    def on_load(self):
        """Page load / Reconnect: list the models again; the teacher and one student are picked by default."""
        self.refresh()
        ids = [m.id for m in self.models]
        teacher = [m.id for m in self.models if m.role == "teacher"]
        picked = (teacher + [i for i in ids if i not in teacher])[:2]
        return (self.banner(), gr.update(choices=self.choices(), value=picked),
                gr.update(choices=self.choices(), value=ids[:MAX_SLOTS]), self.status_line())

    def status_line(self) -> str:
        if self.problem:
            return ""
        teacher = next((m.id for m in self.models if m.role == "teacher"), None)
        return (f"Endpoint `{self.endpoint.url}` · {len(self.models)} models"
                + (f" · reference: **{teacher}**" if teacher else ""))

    # -- side by side -----------------------------------------------------------------
    def columns(self, picked, histories):
        """Column updates for the picked models: visibility, the model's name, its conversation."""
        picked = list(picked or [])[:MAX_COLUMNS]
        out = []
        for k in range(MAX_COLUMNS):
            if k < len(picked):
                m = picked[k]
                label = next((x.label for x in self.models if x.id == m), m)
                out.append(gr.update(visible=True))
                out.append(gr.update(label=label, value=_display((histories or {}).get(m, []))))
            else:
                out.append(gr.update(visible=False))
                out.append(gr.update(value=[]))
        return [*out, *([""] * MAX_COLUMNS)]  # the figures under the columns belonged to the last answers

    async def side_send(self, prompt, picked, histories, temperature, top_p, max_tokens, seed, repetition_penalty=1.0):
        """Send `prompt` to every picked model; stream all columns together."""
        n_out = 1 + 2 * MAX_COLUMNS + 1
        prompt = (prompt or "").strip()
        picked = list(picked or [])
        if not prompt:
            gr.Warning("Type a message first.")
            yield [gr.skip()] * n_out
            return
        if not picked:
            gr.Warning("Pick at least one model above.")
            yield [gr.skip()] * n_out
            return
        histories = dict(histories or {})
        convs = {m: [*histories.get(m, []), {"role": "user", "content": prompt}] for m in picked[:MAX_COLUMNS]}
        sampling = _sampling(temperature, top_p, max_tokens, seed, repetition_penalty)
        async for out in self._side_stream(convs, histories, picked, sampling):
            yield ["", *out]

    async def side_regenerate(self, picked, histories, temperature, top_p, max_tokens, seed, repetition_penalty=1.0):
        """Answer the last message again, in every picked column."""
        n_out = 2 * MAX_COLUMNS + 1
        picked = list(picked or [])[:MAX_COLUMNS]
        histories = dict(histories or {})
        convs = {}
        for m in picked:
            h = list(histories.get(m, []))
            while h and h[-1]["role"] == "assistant":
                h.pop()
            if h:
                convs[m] = h
        if not convs:
            gr.Warning("Nothing to regenerate yet: send a message first.")
            yield [gr.skip()] * n_out
            return
        sampling = _sampling(temperature, top_p, max_tokens, seed, repetition_penalty)
        async for out in self._side_stream(convs, histories, picked, sampling):
            yield out

    async def _side_stream(self, convs, histories, picked, sampling):
        cols = [*picked[:MAX_COLUMNS], *[None] * (MAX_COLUMNS - len(picked[:MAX_COLUMNS]))]
        stats = {m: "waiting for the first token..." for m in convs}

        def frame():
            return [*(_display(histories.get(m, [])) if m in convs else gr.skip() for m in cols),
                    *(stats[m] if m in convs else gr.skip() for m in cols), dict(histories)]

        for m in convs:  # the question shows at once, before any answer
            histories[m] = _turn(convs[m], "")
        yield frame()
        async for states in C.stream_all(self.endpoint, convs, sampling):
            for st in states:
                histories[st.model] = _turn(convs[st.model], st.text)
                stats[st.model] = st.stats()
            yield frame()

    def side_clear(self):
        return [*([[]] * MAX_COLUMNS), *([""] * MAX_COLUMNS), {}]

    # -- arena ------------------------------------------------------------------------
    def new_battle(self) -> dict | None:
        ids = [m.id for m in self.models]
        if len(ids) < 2:
            return None
        a, b = random.sample(ids, 2)  # a random pair, on random sides
        return {"id": uuid.uuid4().hex, "a": a, "b": b, "conv_a": [], "conv_b": [], "revealed": False,
                "settings": {}}

    async def arena_send(self, prompt, battle, temperature, top_p, max_tokens, seed, repetition_penalty=1.0):
        """Both anonymous models answer; the vote buttons wake up only when both answers are whole."""
        n_out = 5 + len(WINNERS)
        prompt = (prompt or "").strip()
        if not prompt:
            gr.Warning("Type a message first.")
            yield [gr.skip()] * n_out
            return
        if battle is None or battle.get("revealed") or battle.get("failed"):
            if not self.models:
                await asyncio.to_thread(self.refresh)
            battle = self.new_battle()
            if battle is None:
                gr.Warning("The arena needs at least two models on the endpoint.")
                yield [gr.skip()] * n_out
                return
        battle = {**battle, "done": False}
        sampling = _sampling(temperature, top_p, max_tokens, seed, repetition_penalty)
        battle["settings"] = {"model_a": sampling.request(), "model_b": sampling.request()}
        convs = {battle["a"]: [*battle["conv_a"], {"role": "user", "content": prompt}],
                 battle["b"]: [*battle["conv_b"], {"role": "user", "content": prompt}]}
        hidden = "The models' names are shown after your vote."
        off = [gr.update(interactive=False)] * len(WINNERS)
        yield ["", _display(convs[battle["a"]]), _display(convs[battle["b"]]), battle, hidden, *off]
        async for states in C.stream_all(self.endpoint, convs, sampling):
            by = {s.model: s for s in states}
            battle = {**battle, "conv_a": _turn(convs[battle["a"]], by[battle["a"]].text),
                      "conv_b": _turn(convs[battle["b"]], by[battle["b"]].text)}
            note = hidden
            if all(s.done for s in states):
                failed = [side for side, m in (("A", battle["a"]), ("B", battle["b"])) if by[m].error]
                battle["done"], battle["failed"] = True, bool(failed)
                if failed:  # the error text may name the model: it is not shown, and the round is not voted on
                    note = (f"Model {' and model '.join(failed)} could not answer (the endpoint failed or timed "
                            "out), so this round cannot be voted on. Send a new prompt for a new pair.")
            on = [gr.update(interactive=battle["done"] and not battle.get("failed"))] * len(WINNERS)
            yield [gr.skip(), _display(battle["conv_a"]), _display(battle["conv_b"]), battle, note, *on]

    def arena_vote(self, winner: str, battle, rater: str, session: str):
        """Record the vote and show the names; a vote after the names were shown does not count."""
        skip = [gr.skip()] * (2 + len(WINNERS))
        if not battle or not battle.get("conv_a"):
            gr.Warning("Ask both models something first.")
            return skip
        if battle.get("revealed"):
            gr.Warning("The names were already shown, so this vote does not count. Send a new prompt for a new round.")
            return skip
        if not battle.get("done"):
            gr.Warning("Wait until both answers are complete.")
            return skip
        if battle.get("failed"):
            gr.Warning("A model failed to answer in this round; send a new prompt for a new pair.")
            return skip
        counted = self.store.add_vote(Vote(battle["id"], battle["a"], battle["b"], winner, battle["conv_a"],
                                           battle["conv_b"], battle["settings"], (rater or "").strip() or session,
                                           session, self.endpoint.url, time.time()))
        battle = {**battle, "revealed": True}
        note = "Vote recorded." if counted else "This round already had a vote; it counts once."
        reveal = (f"Model A was **{battle['a']}**, model B was **{battle['b']}**. You said {WINNER_WORDS[winner]}. "
                  f"{note} Send a new prompt (or press *New round*) for the next pair.")
        return [battle, reveal, *[gr.update(interactive=False)] * len(WINNERS)]

    def arena_new(self):
        return [None, [], [], "", *[gr.update(interactive=False)] * len(WINNERS)]

    # -- human evaluation -------------------------------------------------------------
    def eval_progress(self, rater: str, models, rated: dict[str, set[str]] | None = None) -> str:
        total = len(self.instructions.items)
        models = set(models or [])
        lines = [f"Instruction set **{self.instructions.name}**: {total} instructions."]
        if rater:
            if rated is None:
                rated = self.store.rated(self.instructions.name, rater)
            full = sum(1 for i in self.instructions.items if models and models <= rated.get(i.id, set()))
            lines.append(f"**{rater}**: {full} of {total} instructions graded for the {len(models)} chosen models "
                         f"({sum(len(v) for v in rated.values())} answers graded in all).")
        raters = self.store.raters(self.instructions.name)
        if raters:
            lines.append("Raters so far: " + ", ".join(f"{r} ({n})" for r, n in raters.items()) + ".")
        return "  \n".join(lines)

    async def stored_answer(self, item, model: str) -> str:
        """The answer every rater sees: made once, at temperature 0, and kept in the database."""
        name, settings = self.instructions.name, self.eval_sampling.request()
        got = self.store.answer(name, item.id, model, settings)
        if got is not None:
            return got
        lock = self._answer_locks.setdefault((name, item.id, model), asyncio.Lock())
        async with lock:
            got = self.store.answer(name, item.id, model, settings)
            if got is not None:
                return got
            text = await C.answer(self.endpoint, model, [{"role": "user", "content": item.prompt}],
                                  self.eval_sampling)
            return self.store.put_answer(name, item.id, model, item.prompt, text, settings, self.endpoint.url)

    async def eval_next(self, rater, models):
        """The rater's next instruction: its answers, without names, in an order drawn for this rater."""
        rater = (rater or "").strip()
        models = list(models or [])[:MAX_SLOTS]
        if not rater:
            gr.Warning("Type your name first: it keeps your progress.")
            return [gr.skip()] * EVAL_OUTPUTS
        if not models:
            gr.Warning("Choose the models to grade.")
            return [gr.skip()] * EVAL_OUTPUTS
        rated = self.store.rated(self.instructions.name, rater)
        item = next((i for i in self.instructions.items if not set(models) <= rated.get(i.id, set())), None)
        progress = self.eval_progress(rater, models, rated)
        if item is None:
            empty = [gr.update(visible=False)] * (2 * MAX_SLOTS)
            return [None, f"All {len(self.instructions.items)} instructions are graded. Thank you, {rater}!",
                    *empty, progress, gr.update(interactive=False)]
        try:
            answers = await asyncio.gather(*(self.stored_answer(item, m) for m in models))
        except LaminiError as exc:
            gr.Warning(f"No answer to grade: {exc}")
            return [gr.skip()] * EVAL_OUTPUTS
        order = list(range(len(models)))
        random.Random(f"{rater}\x00{self.instructions.name}\x00{item.id}").shuffle(order)
        current = {"item": item.id, "rater": rater, "models": [models[k] for k in order],
                   "answers": [answers[k] for k in order]}
        header = f"**Instruction** ({item.category or 'user'} · {item.id})\n\n{item.instruction}"
        if item.input:
            header += f"\n\n**Input**\n\n{item.input}"
        slots = []
        for k in range(MAX_SLOTS):
            if k < len(models):
                text = current["answers"][k] or "(empty answer)"
                slots.append(gr.update(value=f"**Answer {k + 1}**\n\n{text}", visible=True))
                slots.append(gr.update(value=None, visible=True, label=f"Grade for answer {k + 1}"))
            else:
                slots += [gr.update(visible=False), gr.update(value=None, visible=False)]
        return [current, header, *slots, progress, gr.update(interactive=True)]

    async def eval_submit(self, rater, models, current, session, *grades):
        rater = (rater or "").strip()
        if not current:
            gr.Warning("Press *Start* to get an instruction first.")
            return [gr.skip()] * EVAL_OUTPUTS
        if rater != current.get("rater"):
            gr.Warning(f"These answers were dealt to {current.get('rater')}: put that name back, or press "
                       "*Start / resume* under the new one.")
            return [gr.skip()] * EVAL_OUTPUTS
        given = list(grades)[:len(current["models"])]
        if any(g not in GRADES for g in given):
            gr.Warning("Give every answer a grade (A, B, C or D) before you submit.")
            return [gr.skip()] * EVAL_OUTPUTS
        item = self.instructions.get(current["item"])
        for model, answer, grade in zip(current["models"], current["answers"], given):
            self.store.rate(self.instructions.name, item.id, model, rater, grade, instruction=item.prompt,
                            answer=answer, settings=self.eval_sampling.request(), session=session)
        return await self.eval_next(rater, models)

    # -- leaderboard ------------------------------------------------------------------
    def leaderboard(self):
        from lamini_serve.ui.ranking import PROVISIONAL, interval_text, write_report

        out = self.report_dir / f"{time.time_ns()}-{uuid.uuid4().hex[:6]}"
        report = write_report(self.store, out, rounds=self.rounds)
        for old in sorted(self.report_dir.iterdir())[:-KEEP_REPORTS]:  # the newest few stay for downloads
            shutil.rmtree(old, ignore_errors=True)
        rows = [[r["rank"], r["model"], r["rating"], interval_text(r),
                 f"{r['battles']}" + (" (provisional)" if r["battles"] < PROVISIONAL else ""),
                 r["wins"], r["ties"], r["losses"]] for r in report.rows]
        files = report.files
        downloads = [str(p) for k, p in files.items() if k.endswith("_csv") or k == "report"]
        return (report.summary, rows, *(str(files[k]) if k in files else None
                                        for k in ("leaderboard", "winrate", "human_eval")), downloads)


def _sampling_controls(prefix: str):
    with gr.Accordion("Sampling", open=False, elem_id=f"{prefix}-sampling"):
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="temperature", elem_id=f"{prefix}-temperature")
            top_p = gr.Slider(0.05, 1, value=1.0, step=0.05, label="top_p", elem_id=f"{prefix}-top-p")
            max_tokens = gr.Slider(1, 1024, value=256, step=1, label="max tokens", elem_id=f"{prefix}-max-tokens")
            penalty = gr.Slider(1, 2, value=1.0, step=0.05, label="repetition penalty",
                                elem_id=f"{prefix}-repetition-penalty")
            seed = gr.Textbox(value="", label="seed (empty: random)", elem_id=f"{prefix}-seed", max_lines=1)
    return [temperature, top_p, max_tokens, seed, penalty]


def build(ui: UI) -> gr.Blocks:
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])  # no web fonts: it works offline
    with gr.Blocks(title="lamini ui", theme=theme, css=CSS, analytics_enabled=False) as demo:
        gr.Markdown("## lamini ui: the herd beside its teacher")
        with gr.Row():
            status = gr.Markdown()
            reconnect = gr.Button("Reconnect", size="sm", scale=0)
        banner = gr.Markdown(visible=False, elem_classes=["lamini-banner"], elem_id="banner")

        with gr.Tab("Side by side", id="side"):
            picker = gr.Dropdown(label="Models (2 to 4; the teacher is the reference)", multiselect=True,
                                 max_choices=MAX_COLUMNS, choices=[], elem_id="side-models")
            histories = gr.State({})
            cols, bots, stats = [], [], []
            with gr.Row(equal_height=True):
                for k in range(MAX_COLUMNS):
                    with gr.Column(visible=k < 2, min_width=220) as col:
                        bots.append(gr.Chatbot(type="messages", height=430, label=f"model {k + 1}",
                                               elem_id=f"side-bot-{k}", show_copy_button=True))
                        stats.append(gr.Markdown(elem_classes=["lamini-stats"], elem_id=f"side-stats-{k}"))
                    cols.append(col)
            with gr.Row():
                prompt = gr.Textbox(placeholder="Ask every picked model at once...", show_label=False, scale=6,
                                    elem_id="side-prompt", lines=1, max_lines=6)
                send = gr.Button("Send", variant="primary", scale=1, elem_id="side-send")
            with gr.Row():
                stop = gr.Button("Stop", size="sm", elem_id="side-stop")
                regen = gr.Button("Regenerate", size="sm", elem_id="side-regenerate")
                clear = gr.Button("Clear", size="sm", elem_id="side-clear")
            sampling = _sampling_controls("side")
            gr.Examples(EXAMPLES, inputs=[prompt], label="Examples of user-oriented instructions")
            col_outputs = [x for pair in zip(cols, bots) for x in pair]
            send_args = dict(fn=ui.side_send, inputs=[prompt, picker, histories, *sampling],
                             outputs=[prompt, *bots, *stats, histories], concurrency_limit=None)
            e1 = send.click(**send_args)
            e2 = prompt.submit(**send_args)
            e3 = regen.click(ui.side_regenerate, [picker, histories, *sampling], [*bots, *stats, histories],
                             concurrency_limit=None)
            # one answer at a time per page: a new send, or other models picked, stops the streams going on
            send.click(None, cancels=[e2, e3])
            prompt.submit(None, cancels=[e1, e3])
            regen.click(None, cancels=[e1, e2])
            picker.change(ui.columns, [picker, histories], [*col_outputs, *stats], cancels=[e1, e2, e3], queue=False)
            # cancel first, then mark the figures: a stream's last update can land after a handler
            # that did both at once, and put "streaming" back
            was_streaming = gr.State([])
            stop.click(_streaming, stats, was_streaming, cancels=[e1, e2, e3], queue=False).then(
                _stopped, [was_streaming, *stats], stats, queue=False)
            clear.click(ui.side_clear, None, [*bots, *stats, histories], cancels=[e1, e2, e3], queue=False)

        with gr.Tab("Arena", id="arena"):
            gr.Markdown("Two models drawn at random answer the same prompt. Vote for the better answer: "
                        "their names are shown only after your vote.")
            battle = gr.State(None)
            with gr.Row(equal_height=True):
                bot_a = gr.Chatbot(type="messages", height=400, label="Model A", elem_id="arena-a")
                bot_b = gr.Chatbot(type="messages", height=400, label="Model B", elem_id="arena-b")
            reveal = gr.Markdown(elem_id="arena-reveal")
            with gr.Row():
                votes = {w: gr.Button(label, interactive=False, elem_id=f"vote-{w}") for w, label in
                         (("model_a", "A is better"), ("model_b", "B is better"), ("tie", "Tie"),
                          ("both_bad", "Both are bad"))}
            with gr.Row():
                a_prompt = gr.Textbox(placeholder="Ask both anonymous models...", show_label=False, scale=6,
                                      elem_id="arena-prompt")
                a_send = gr.Button("Send", variant="primary", scale=1, elem_id="arena-send")
            with gr.Row():
                a_rater = gr.Textbox(label="Your name (optional)", scale=2)
                a_new = gr.Button("New round", size="sm", scale=1)
            a_sampling = _sampling_controls("arena")
            vote_group = [votes[w] for w in WINNERS]
            arena_args = dict(fn=ui.arena_send, inputs=[a_prompt, battle, *a_sampling],
                              outputs=[a_prompt, bot_a, bot_b, battle, reveal, *vote_group], concurrency_limit=None)
            ea = a_send.click(**arena_args)
            eb = a_prompt.submit(**arena_args)
            a_send.click(None, cancels=[eb])  # one answer at a time per page: a new send stops the other
            a_prompt.submit(None, cancels=[ea])
            for winner, button in votes.items():
                def vote(b, r, request: gr.Request, _w=winner):
                    return ui.arena_vote(_w, b, r, _session(request))

                button.click(vote, [battle, a_rater], [battle, reveal, *vote_group], queue=False)
            a_new.click(ui.arena_new, None, [battle, bot_a, bot_b, reveal, *vote_group], cancels=[ea, eb],
                        queue=False)

        with gr.Tab("Human evaluation (A-D)", id="rate"):
            gr.Markdown("Grade each answer the way the LaMini-LM paper did. You do not see which model wrote it; "
                        "the answers were made once, greedily, so every rater grades the same text.\n\n"
                        + DEFINITIONS)
            with gr.Row():
                rater = gr.Textbox(label="Your name", scale=1, elem_id="rate-name")
                rate_models = gr.Dropdown(label="Models to grade", multiselect=True, max_choices=MAX_SLOTS,
                                          choices=[], scale=3, elem_id="rate-models")
                start = gr.Button("Start / resume", variant="primary", scale=0, elem_id="rate-start")
            progress = gr.Markdown(ui.eval_progress("", []), elem_id="rate-progress")
            current = gr.State(None)
            instruction = gr.Markdown(elem_id="rate-instruction")
            slots = []
            for k in range(MAX_SLOTS):
                with gr.Group():
                    slots.append(gr.Markdown(visible=False, elem_id=f"rate-answer-{k}", elem_classes=["lamini-answer"]))
                    slots.append(gr.Radio(GRADE_CHOICES, label=f"Grade for answer {k + 1}", visible=False,
                                          elem_id=f"rate-grade-{k}"))
            submit = gr.Button("Submit grades and go on", variant="primary", interactive=False, elem_id="rate-submit")
            eval_outputs = [current, instruction, *slots, progress, submit]
            start.click(ui.eval_next, [rater, rate_models], eval_outputs, concurrency_limit=None)

            async def submit_grades(r, ms, cur, g0, g1, g2, g3, g4, g5, request: gr.Request):
                return await ui.eval_submit(r, ms, cur, _session(request), g0, g1, g2, g3, g4, g5)

            submit.click(submit_grades, [rater, rate_models, current, *slots[1::2]], eval_outputs,
                         concurrency_limit=None)

        with gr.Tab("Leaderboard", id="board"):
            refresh = gr.Button("Refresh", variant="primary", elem_id="board-refresh")
            summary = gr.Markdown()
            table = gr.Dataframe(headers=["rank", "model", "rating", "95% interval", "battles", "wins", "ties",
                                          "losses"], interactive=False, elem_id="board-table")
            with gr.Row():
                board_png = gr.Image(label="Bradley-Terry ratings", type="filepath", elem_id="board-png")
                heat_png = gr.Image(label="Win rates", type="filepath")
            grades_png = gr.Image(label="A-D grades per model", type="filepath")
            downloads = gr.File(label="CSV and report", file_count="multiple")
            refresh.click(ui.leaderboard, None, [summary, table, board_png, heat_png, grades_png, downloads])

        load_outputs = [banner, picker, rate_models, status]
        demo.load(ui.on_load, None, load_outputs, queue=False)
        reconnect.click(ui.on_load, None, load_outputs, queue=False)
    return demo
