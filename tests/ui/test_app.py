"""The page's handlers, called without a browser, against real HTTP servers.

A fault-injecting OpenAI-compatible server stands in where a model must fail
(a stream whose connection drops, a model that never answers, a wrong key).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

pytest.importorskip("gradio")

from lamini_serve.testing.openai_server import FakeOpenAIServer, FaultPlan, answer_for  # noqa: E402
from lamini_serve.ui import instructions  # noqa: E402
from lamini_serve.ui.app import UI, EVAL_SAMPLING, MAX_COLUMNS  # noqa: E402
from lamini_serve.ui.client import Endpoint, Sampling, stream_all  # noqa: E402
from lamini_serve.ui.store import Store  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # gr.Warning outside a page is a UserWarning


async def collect(agen):
    return [x async for x in agen]


def run(coro):
    return asyncio.run(coro)


def make_ui(url, tmp_path, key=None, timeout=30.0) -> UI:
    ui = UI(Endpoint(url, key, timeout), Store(tmp_path / "votes.db"), instructions.load(), tmp_path / "report",
            rounds=50)
    ui.refresh()
    return ui


def test_models_stream_together_and_a_failing_one_only_marks_its_own_column():
    faults = {"broken": "break", "silent": "timeout"}
    with FakeOpenAIServer(models=("teacher", "good", "broken", "silent"), model_faults=faults, stream_delay=0.05,
                          faults=FaultPlan(timeout_sleep=5)) as url:
        convs = {m: [{"role": "user", "content": f"Tell me about {m} things, at some length please."}]
                 for m in ("good", "broken", "silent")}
        frames = run(collect(stream_all(Endpoint(url, timeout=1.5), convs, Sampling(max_tokens=64))))
    final = {s.model: s for s in frames[-1]}
    want = answer_for("chat", {"messages": convs["good"]})
    assert final["good"].text == want and final["good"].error is None and final["good"].tokens > 3
    assert final["good"].ttft is not None and "tokens/s" in final["good"].stats()
    assert final["broken"].error and 0 < len(final["broken"].text) < len(want)
    assert "timed out" in final["silent"].error and final["silent"].text == ""
    assert "error" in final["broken"].stats()
    # the good column grew while the others were still going: it streamed, frame by frame
    lengths = [len(next(s.text for s in f if s.model == "good")) for f in frames]
    assert len(set(lengths)) > 3 and lengths == sorted(lengths)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_endpoint_that_is_down_or_refuses_the_key_is_one_line_on_the_banner(tmp_path):
    ui = make_ui(f"http://127.0.0.1:{free_port()}/v1", tmp_path)
    assert ui.models == [] and "cannot reach" in ui.problem and "lamini serve" in ui.problem
    banner, picker, *_ = ui.on_load()
    assert banner["visible"] and "not answering" in banner["value"] and picker["choices"] == []
    with FakeOpenAIServer(models=("teacher", "smol"), api_key="right") as url:
        ui = make_ui(url, tmp_path, key="wrong")
        assert "refused the API key" in ui.problem and "LAMINI_API_KEY" in ui.problem
        ui = make_ui(url, tmp_path, key="right")
        assert ui.problem is None and [m.id for m in ui.models] == ["teacher", "smol"]
        banner, picker, rate_models, status = ui.on_load()
        assert not banner["visible"] and picker["value"] == ["teacher", "smol"]
        assert picker["choices"][0] == ("teacher (reference)", "teacher") and "reference" in status


def test_side_by_side_sends_to_every_picked_model_keeps_turns_and_regenerates(tmp_path):
    server = FakeOpenAIServer(models=("teacher", "a", "b"))
    with server as url:
        ui = make_ui(url, tmp_path)
        skipped = run(collect(ui.side_send("   ", ["teacher", "a"], {}, 0.7, 1.0, 32, None)))
        assert skipped[-1][0] == {"__type__": "update"} and server.requests == []  # nothing sent for an empty prompt
        frames = run(collect(ui.side_send("Hello there", ["teacher", "a"], {}, 0.7, 1.0, 32, 3)))
        assert "repetition_penalty" not in server.requests[-1]  # 1.0 is not sent: any endpoint takes it
        run(collect(ui.side_send("Hello there", ["teacher"], {}, 0.2, 0.9, 8, 5, 1.3)))
        sent = server.requests[-1]
        assert (sent["repetition_penalty"], sent["temperature"], sent["top_p"], sent["max_tokens"], sent["seed"]) \
            == (1.3, 0.2, 0.9, 8, 5) and sent["stream"] is True
        box, *rest = frames[-1]
        bots, stats, hist = rest[:MAX_COLUMNS], rest[MAX_COLUMNS:2 * MAX_COLUMNS], rest[-1]
        assert box == "" and set(hist) == {"teacher", "a"}
        for m in ("teacher", "a"):
            assert [t["role"] for t in hist[m]] == ["user", "assistant"] and hist[m][1]["content"]
        assert bots[0] == hist["teacher"] and bots[1] == hist["a"] and "tokens/s" in stats[0]
        frames = run(collect(ui.side_send("And again?", ["teacher", "a"], hist, 0.7, 1.0, 32, 3)))
        hist2 = frames[-1][-1]
        assert [t["content"] for t in hist2["a"][::2]] == ["Hello there", "And again?"]
        # regenerate answers the last message again: same number of turns
        frames = run(collect(ui.side_regenerate(["teacher", "a"], hist2, 0.7, 1.0, 32, 3)))
        hist3 = frames[-1][-1]
        assert len(hist3["a"]) == 4 and hist3["a"][2]["content"] == "And again?"


def test_the_seed_box_is_empty_for_random_and_refuses_what_is_not_a_number():
    import gradio as gr

    from lamini_serve.ui.app import _sampling

    assert _sampling(0.7, 1.0, 32, "").seed is None and _sampling(0.7, 1.0, 32, " 12 ").seed == 12
    assert "seed" not in _sampling(0.7, 1.0, 32, None).request()
    with pytest.raises(gr.Error):
        _sampling(0.7, 1.0, 32, "twelve")


def test_arena_pairs_are_random_and_a_vote_after_the_names_are_shown_does_not_count(tmp_path):
    with FakeOpenAIServer(models=("teacher", "a", "b")) as url:
        ui = make_ui(url, tmp_path)
        pairs = {(b["a"], b["b"]) for b in (ui.new_battle() for _ in range(200))}
        assert len(pairs) == 6  # every ordered pair: sides are random too
        frames = run(collect(ui.arena_send("Which is better?", None, 0.7, 1.0, 32, None)))
        battle = frames[-1][3]
        assert battle["conv_a"][-1]["role"] == "assistant" and battle["conv_a"][-1]["content"]
        assert not battle["revealed"]
        # no vote before anything was asked
        assert ui.arena_vote("tie", None, "", "s")[0] == {"__type__": "update"}
        revealed, text, *buttons = ui.arena_vote("model_b", battle, "alice", "sess-1")
        assert len(buttons) == 4 and all(b["interactive"] is False for b in buttons)
        assert revealed["revealed"] and battle["a"] in text and battle["b"] in text and "recorded" in text
        # the names are shown now: voting again on the same round does not count
        again = ui.arena_vote("model_a", revealed, "alice", "sess-1")
        assert again[0] == {"__type__": "update"}
        votes = ui.store.votes()
        assert len(votes) == 1 and votes[0].winner == "model_b" and votes[0].rater == "alice"
        assert votes[0].model_a == battle["a"] and votes[0].conversation_b == battle["conv_b"]
        assert votes[0].settings["model_a"]["temperature"] == 0.7
        # a new prompt after the reveal starts a new round with a new battle
        frames = run(collect(ui.arena_send("Next one", revealed, 0.7, 1.0, 32, None)))
        assert frames[-1][3]["id"] != battle["id"] and len(frames[-1][3]["conv_a"]) == 2


def test_human_evaluation_answers_are_made_once_and_every_rater_grades_the_same_text(tmp_path):
    with FakeOpenAIServer(models=("teacher", "a", "b")) as url:
        server_ui = make_ui(url, tmp_path)
        models = ["teacher", "a", "b"]
        first = run(server_ui.eval_next("alice", models))
        bob = run(server_ui.eval_next("bob", models))
        cur_a, cur_b = first[0], bob[0]
        assert cur_a["item"] == cur_b["item"] == "u001"
        assert dict(zip(cur_a["models"], cur_a["answers"])) == dict(zip(cur_b["models"], cur_b["answers"]))
        stored = {m: server_ui.store.answer(server_ui.instructions.name, "u001", m, EVAL_SAMPLING.request())
                  for m in models}
        assert dict(zip(cur_a["models"], cur_a["answers"])) == stored
        # the order is drawn per rater and item, and the same on a reload
        assert run(server_ui.eval_next("alice", models))[0]["models"] == cur_a["models"]
        # a grade missing: nothing stored
        run(server_ui.eval_submit("alice", models, cur_a, "s", "A", None, "B", None, None, None))
        assert server_ui.store.ratings() == []
        nxt = run(server_ui.eval_submit("alice", models, cur_a, "s", "A", "C", "D", None, None, None))
        rows = {r["model"]: r for r in server_ui.store.ratings()}
        assert {rows[m]["grade"] for m in models} == {"A", "C", "D"}
        assert rows[cur_a["models"][0]]["grade"] == "A" and rows[cur_a["models"][2]]["grade"] == "D"
        assert rows["a"]["answer"] == stored["a"] and rows["a"]["settings"]
        assert nxt[0]["item"] == "u002" and "alice**: 1 of 72" in nxt[-2]
        assert "bob" not in nxt[-2]  # bob has graded nothing yet


def test_stored_answers_are_asked_for_once_even_when_raters_arrive_together(tmp_path):
    server = FakeOpenAIServer(models=("teacher", "a"), latency=0.2)
    with server as url:
        ui = make_ui(url, tmp_path)

        async def both():
            return await asyncio.gather(*(ui.eval_next(r, ["teacher", "a"]) for r in ("alice", "bob", "carol")))

        outs = run(both())
    assert len({tuple(sorted(zip(o[0]["models"], o[0]["answers"]))) for o in outs}) == 1
    assert sum(server.served.values()) == 2  # one request per model, however many raters
    for body in server.requests:  # greedy, with lamini chat's repetition penalty (vLLM's extension)
        assert body["temperature"] == 0.0 and body["repetition_penalty"] == 1.1 and not body.get("stream")
    assert EVAL_SAMPLING.temperature == 0.0 and ui.store.ratings() == []


def test_the_leaderboard_tab_writes_the_report(tmp_path):
    with FakeOpenAIServer(models=("teacher", "a")) as url:
        ui = make_ui(url, tmp_path)
        summary, rows, board, heat, grades, downloads = ui.leaderboard()
        assert "0 arena votes" in summary and rows == [] and board is None
        frames = run(collect(ui.arena_send("hi", None, 0.7, 1.0, 16, None)))
        ui.arena_vote("model_a", frames[-1][3], "", "s")
        summary, rows, board, heat, grades, downloads = ui.leaderboard()
        assert "1 arena votes" in summary and len(rows) == 2 and board.endswith("leaderboard.png")
        assert any(d.endswith("leaderboard.csv") for d in downloads)


def test_arena_buttons_wake_only_when_both_answers_are_whole_and_a_failed_round_is_not_voted(tmp_path):
    with FakeOpenAIServer(models=("good", "broken"), model_faults={"broken": "break"}, stream_delay=0.01) as url:
        ui = make_ui(url, tmp_path)
        frames = run(collect(ui.arena_send("Tell me a long story about a lighthouse keeper.", None, 0.7, 1.0,
                                           64, None)))
        for f in frames[:-1]:  # while anything streams, no vote button is on
            assert [b["interactive"] for b in f[5:9]] == [False] * 4
        battle, note = frames[-1][3], frames[-1][4]
        assert battle["done"] and battle["failed"] and [b["interactive"] for b in frames[-1][5:9]] == [False] * 4
        side = "A" if battle["a"] == "broken" else "B"
        assert f"Model {side} could not answer" in note and "broken" not in note and "good" not in note
        assert "error" not in str(battle["conv_a"] + battle["conv_b"])  # nothing of the error in the transcript
        assert ui.arena_vote("model_a", battle, "", "s")[0] == {"__type__": "update"}
        assert ui.arena_vote("model_a", {**battle, "done": False, "failed": False}, "", "s")[0] == \
            {"__type__": "update"}  # a vote while answers stream does not count either
        assert ui.store.votes() == []
        again = run(collect(ui.arena_send("Another?", battle, 0.7, 1.0, 8, None)))
        assert again[-1][3]["id"] != battle["id"]  # a new pair after a failed round


def test_grades_go_to_the_rater_the_answers_were_dealt_to(tmp_path):
    with FakeOpenAIServer(models=("teacher", "a")) as url:
        ui = make_ui(url, tmp_path)
        cur = run(ui.eval_next("alice", ["teacher", "a"]))[0]
        out = run(ui.eval_submit("mallory", ["teacher", "a"], cur, "s", "A", "A", None, None, None, None))
        assert out[0] == {"__type__": "update"} and ui.store.ratings() == []
        run(ui.eval_submit("alice", ["teacher", "a"], cur, "s", "A", "B", None, None, None, None))
        assert {r["rater"] for r in ui.store.ratings()} == {"alice"}


def test_stop_marks_the_columns_that_were_streaming_whatever_came_after():
    from lamini_serve.ui.app import _stopped, _streaming

    at_click = ["first token 0.1 s · 12 tokens · streaming", "first token 0.1 s · total 0.3 s · 40 tokens · 99 tokens/s", ""]
    flags = _streaming(*at_click)
    assert flags == [True, False, False]
    # the first stream's last update landed after the cancel, without "streaming"
    later = ["first token 0.1 s · total 0.4 s · 15 tokens · 37 tokens/s", at_click[1], ""]
    assert _stopped(flags, *later) == [later[0] + " · stopped", at_click[1], ""]
    assert _stopped(flags, *at_click)[0] == "first token 0.1 s · 12 tokens · stopped"
