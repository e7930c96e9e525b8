from click.testing import CliRunner

from lamini_serve.chat import run_session
from lamini_serve.cli import cli
from lamini_serve.engines.torch_engine import TorchEngine
from lamini_serve.generation import SamplingParams
from lamini_serve.prompts import conversation


class Recording:
    """Wraps a real engine and remembers the conversations it was asked to answer."""

    def __init__(self, engine):
        self.engine, self.calls, self.answers = engine, [], []

    def stream(self, messages, params):
        self.calls.append([dict(m) for m in messages])
        pieces = []
        for piece in self.engine.stream(messages, params):
            pieces.append(piece)
            yield piece
        self.answers.append("".join(pieces))


def test_one_shot_prints_the_greedy_answer(tiny_models):
    path = str(tiny_models["gpt2"])
    r = CliRunner().invoke(cli, ["chat", path, "-p", "hi", "--max-new-tokens", "10", "--repetition-penalty", "1.0"])
    assert r.exit_code == 0, r.output
    expected = TorchEngine.from_name(path, device="cpu").generate([conversation("hi")], SamplingParams(max_new_tokens=10))[0].text
    assert expected and expected in r.stdout


def test_prompt_from_stdin(tiny_models):
    """`-p -` answers what standard input says: the same answer as passing that text with -p."""
    args = ["chat", str(tiny_models["gpt2"]), "--max-new-tokens", "8", "--repetition-penalty", "1.0"]

    def answer(prompt_args, stdin=None):
        r = CliRunner().invoke(cli, args + prompt_args, input=stdin)
        assert r.exit_code == 0, r.output
        return r.stdout.strip()

    piped = {text: answer(["-p", "-"], stdin=text + "\n") for text in ("hi", "Give three tips for staying healthy.")}
    assert len(set(piped.values())) == 2 and all(piped.values())  # the input decides the answer
    for text, got in piped.items():
        assert got == answer(["-p", text])


def test_multi_turn_keeps_history_and_reset_forgets(tiny_models):
    import io

    eng = Recording(TorchEngine.from_name(str(tiny_models["llama"]), device="cpu"))
    out = io.StringIO()
    history = run_session(eng, SamplingParams(max_new_tokens=6), ["first", "second", "/reset", "third", "/exit", "never"], out, system="Be brief.")
    assert [len(c) for c in eng.calls] == [2, 4, 2]  # system+user; +previous turn; forgotten
    assert eng.calls[1][1] == {"role": "user", "content": "first"}
    assert eng.calls[1][2] == {"role": "assistant", "content": eng.answers[0]}
    assert eng.calls[1][3] == {"role": "user", "content": "second"}
    assert eng.calls[2][1] == {"role": "user", "content": "third"}
    assert history == [("third", eng.answers[2])]
    assert "(conversation forgotten)" in out.getvalue()


def test_interactive_cli_answers_each_line(tiny_models):
    r = CliRunner().invoke(cli, ["chat", str(tiny_models["gpt2"]), "--max-new-tokens", "5"], input="hello\nagain\n")
    assert r.exit_code == 0, r.output
    assert len([ln for ln in r.stdout.splitlines() if ln.strip()]) == 2
