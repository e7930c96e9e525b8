"""The two real StepModels (ONNX Runtime and torch) on tiny models of both families.

Every test drives `add` / `step` / `keep` the way the scheduler does, greedily
(argmax with the end tokens masked, so the random models never stop early), and
compares each row's tokens with the same prompt generated alone by the existing
engines (`OrtEngine.generate_ids`, transformers' `generate`): padding, merging
pasts, cohorts and dropping rows must change nothing a row produces.
"""

from __future__ import annotations

import numpy as np
import pytest

from lamini_serve.engines.base import InvalidRequest
from lamini_serve.engines.onnx_steps import OnnxSteps
from lamini_serve.engines.sampling import log_softmax
from lamini_serve.engines.torch_steps import TorchSteps
from lamini_serve.generation import SamplingParams
from lamini_serve.models import Family, ModelSpec

KINDS = ("llama", "gpt2", "t5")
# "llama-fused": the tiny llama through `lamini export --format fused` (GroupQueryAttention,
# rows padded on the right)
ONNX_KINDS = KINDS + ("llama-fused",)


@pytest.fixture(scope="module")
def exports(tiny_models, tmp_path_factory):
    """{kind: fp32 ONNX export folder} (fp32: greedy tokens match PyTorch's exactly)."""
    from lamini_serve.export.exporter import ExportOptions, export_model

    root = tmp_path_factory.mktemp("step-exports")
    for kind in ONNX_KINDS:
        fmt = "fused" if kind.endswith("-fused") else "onnx"
        export_model(str(tiny_models[kind.split("-")[0]]), root / kind, ExportOptions(quantize="none", format=fmt),
                     report_prompts=0)
    return {kind: root / kind for kind in ONNX_KINDS}


@pytest.fixture(scope="module")
def ort(exports):
    from lamini_serve.engines.ort_engine import OrtEngine

    return {kind: OrtEngine(ModelSpec.resolve(exports[kind]), io_binding=False) for kind in ONNX_KINDS}


@pytest.fixture(scope="module")
def torch_engines(tiny_models):
    from lamini_serve.engines.torch_engine import TorchEngine

    return {kind: TorchEngine(ModelSpec.resolve(tiny_models[kind]), device="cpu", dtype="float32") for kind in KINDS}


def _prompts(*lengths: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(4, 512, size=n).tolist() for n in lengths]  # ids 0..3 are the special tokens


def drive(steps, prompts: dict[str, list[int]], budget: dict[str, int], eos_ids, joins: dict[int, list[str]],
          after=None) -> dict[str, list[int]]:
    """A greedy scheduler in miniature: at iteration i, step the running rows, then add the
    rows `joins[i]` names; every row stops after `budget[name]` tokens and leaves via keep.
    `after(i, running, out)` is called at the end of every iteration."""
    out: dict[str, list[int]] = {name: [] for name in prompts}
    running: list[str] = []
    i = 0
    while running or i <= max(joins):
        parts = []
        if running:
            parts.append(steps.step([out[n][-1] for n in running]))
        if joins.get(i):
            parts.append(steps.add([prompts[n] for n in joins[i]]))
            running += joins[i]
        if parts:
            logits = np.concatenate(parts, axis=0).copy()
            assert logits.dtype == np.float32 and logits.shape == (len(running), steps.vocab_size)
            logits[:, list(eos_ids)] = -np.inf  # as ignore_eos / min_new_tokens do
            for name, tok in zip(running, logits.argmax(-1).tolist()):
                out[name].append(int(tok))
            keep = [r for r, n in enumerate(running) if len(out[n]) < budget[n]]
            if len(keep) < len(running):
                steps.keep(keep)
                running = [running[r] for r in keep]
        if after:
            after(i, running, out)
        i += 1
    return out


def _ort_solo(engine, prompt, n) -> list[int]:
    return engine.generate_ids([prompt], SamplingParams(max_new_tokens=n, ignore_eos=True))[0]


def _torch_solo(engine, prompt, n) -> list[int]:
    import torch

    x = torch.tensor([prompt])
    with torch.inference_mode():
        out = engine.model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                    min_new_tokens=n, max_new_tokens=n, eos_token_id=engine.eos_ids,
                                    pad_token_id=engine.tokenizer.pad_token_id, repetition_penalty=1.0)
    return out[0, 1:].tolist() if engine.spec.family is Family.SEQ2SEQ else out[0, len(prompt):].tolist()


# ---- one batch of different lengths: each row as if alone ------------------------------------
@pytest.mark.parametrize("kind", ONNX_KINDS)
def test_onnx_batch_of_different_lengths_answers_as_each_prompt_alone(kind, ort):
    eng = ort[kind]
    prompts = dict(zip("abc", _prompts(9, 2, 17, seed=1)))
    budget = {"a": 8, "b": 12, "c": 5}  # rows leave at different steps
    got = drive(OnnxSteps(eng), prompts, budget, eng.eos_ids, {0: ["a", "b", "c"]})
    assert got == {n: _ort_solo(eng, prompts[n], budget[n]) for n in prompts}


@pytest.mark.parametrize("kind", KINDS)
def test_torch_batch_of_different_lengths_answers_as_each_prompt_alone(kind, torch_engines):
    eng = torch_engines[kind]
    prompts = dict(zip("abc", _prompts(9, 2, 17, seed=1)))
    budget = {"a": 8, "b": 12, "c": 5}
    got = drive(TorchSteps.from_engine(eng), prompts, budget, eng.eos_ids, {0: ["a", "b", "c"]})
    assert got == {n: _torch_solo(eng, prompts[n], budget[n]) for n in prompts}


# ---- continuous batching (ONNX) ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ONNX_KINDS)
def test_onnx_rows_join_and_leave_a_running_batch(kind, ort):
    """A (long prompt) starts; B (short) joins while A decodes; A finishes and leaves;
    then C (longer than anything running) and D (short) join together. Every row's
    tokens equal its solo run, and the causal batch is never wider than its longest row."""
    eng = ort[kind]
    steps = OnnxSteps(eng)
    prompts = dict(zip("abcd", _prompts(20, 3, 30, 2, seed=2)))
    budget = {"a": 4, "b": 14, "c": 6, "d": 9}
    joins = {0: ["a"], 2: ["b"], 6: ["c", "d"]}
    widths, cohorts, scored = {}, {}, {}

    def after(i, running, out):
        if kind == "t5":
            cohorts[i] = steps.cohorts
            return
        # the mask should be exactly as wide as the longest running row's cache (prompt + tokens fed)
        widths[i] = (steps.width, max((len(prompts[n]) + len(out[n]) - 1 for n in running), default=0))
        if i == 4:  # scoring in the middle of a batch leaves the batch alone
            scored["logits"] = steps.score(prompts["c"])

    got = drive(steps, prompts, budget, eng.eos_ids, joins, after)
    assert got == {n: _ort_solo(eng, prompts[n], budget[n]) for n in prompts}
    if kind == "t5":  # a cohort per add; A's cohort goes when A leaves
        assert cohorts[0] == 1 and cohorts[2] == 2 and cohorts[3] == 1 and cohorts[6] == 2
    else:
        assert all(width == tight for width, tight in widths.values()), widths
        assert widths[2][0] == 20 + 2 and widths[3][0] == 3 + 1  # A (the longest) left at iteration 3: the batch shrank
        assert widths[6][0] == 30  # C joined: the running rows' pasts were padded (on the left; fused: the right)
        assert scored["logits"].shape == (29, steps.vocab_size)


def test_onnx_keep_nothing_then_start_again(ort):
    eng = ort["llama"]
    steps = OnnxSteps(eng)
    [p, q] = _prompts(5, 7, seed=3)
    steps.add([p])
    steps.keep([])
    assert steps.rows == 0 and steps.width == 0
    first = steps.add([q])
    assert first.argmax() == OnnxSteps(eng).add([q]).argmax()


# ---- teacher forcing ----------------------------------------------------------------------------
def _gathered(logits, ids):
    return log_softmax(np.asarray(logits, dtype=np.float32))[np.arange(len(ids) - 1), ids[1:]]


@pytest.mark.parametrize("kind", ["llama", "gpt2", "llama-fused"])
def test_score_is_a_full_forward_and_matches_the_cached_steps(kind, ort, torch_engines):
    import torch

    [ids] = _prompts(14, seed=4)
    base = kind.split("-")[0]
    onnx_steps, torch_steps = OnnxSteps(ort[kind]), TorchSteps.from_engine(torch_engines[base])
    with torch.inference_mode():
        full = torch_engines[base].model(input_ids=torch.tensor([ids])).logits[0, :-1].float().numpy()
    for steps, ref in ((onnx_steps, ort[kind].forced_logits(ids[:1], ids[1:])), (torch_steps, full)):
        got = steps.score(ids)
        assert got.dtype == np.float32 and got.shape == (len(ids) - 1, steps.vocab_size)
        assert np.abs(_gathered(got, ids) - _gathered(ref, ids)).max() < 1e-4
        # the cached path (add, then one token per step) gives the same rows
        cached = [steps.add([ids[:1]])[0]] + [steps.step([t])[0] for t in ids[1:-1]]
        steps.keep([])
        assert np.abs(_gathered(np.stack(cached), ids) - _gathered(got, ids)).max() < 1e-4
    assert np.abs(_gathered(onnx_steps.score(ids), ids) - _gathered(full, ids)).max() < 1e-4  # fp32 export == PyTorch


def test_encoder_decoder_models_do_not_score(ort, torch_engines):
    for steps in (OnnxSteps(ort["t5"]), TorchSteps.from_engine(torch_engines["t5"])):
        with pytest.raises(InvalidRequest):
            steps.score([5, 6, 7])


# ---- what the scheduler reads -------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_context_vocab_and_batching_mode(kind, ort, torch_engines):
    onnx_steps, torch_steps = OnnxSteps(ort[kind]), TorchSteps.from_engine(torch_engines[kind])
    for steps in (onnx_steps, torch_steps):
        # tiny llama/gpt2: max_position_embeddings / n_positions 512; tiny t5: no limit in the
        # tokenizer (model_max_length 1e30), so 512
        assert steps.context_length == 512 and steps.vocab_size == 512
    assert onnx_steps.joins_running_batch and not torch_steps.joins_running_batch


def test_torch_static_batch_refuses_to_join_a_running_batch(torch_engines):
    steps = TorchSteps.from_engine(torch_engines["llama"])
    [p, q] = _prompts(4, 6, seed=5)
    steps.add([p])
    with pytest.raises(RuntimeError, match="static batch"):
        steps.add([q])
    steps.keep([])
    assert steps.add([q]).shape == (1, steps.vocab_size)


# ---- a fused graph decodes with its cache in place ----------------------------------------------
def test_fused_graphs_decode_in_place_as_the_copying_path_does(ort, monkeypatch):
    """GroupQueryAttention writes each step's key/values into the past arrays themselves (past
    and present bound to one buffer): the arrays are not replaced between steps while they have
    room, and the tokens equal those of the path that copies the cache into a new present."""
    from lamini_serve.engines import ort_engine
    from lamini_serve.engines.ort_engine import CausalRun

    eng = ort["llama-fused"]
    assert ort_engine.LOGITS_AT in eng.decoder.inputs  # and its head runs at the positions asked for only
    prompts = dict(zip("abc", _prompts(9, 2, 17, seed=3)))
    budget = {"a": 8, "b": 12, "c": 5}
    joins = {0: ["a", "b"], 3: ["c"]}
    seen: list[tuple[int, int]] = []  # (mask width, id of the first past array) after each iteration
    steps = OnnxSteps(eng)

    def after(i, running, out):
        if steps._batch is not None:
            seen.append((steps.width, id(next(iter(steps._batch.past.values())))))

    in_place = drive(steps, prompts, budget, eng.eos_ids, joins, after)
    assert steps._batch is None or steps._batch.in_place
    # between a join (3) and the first row leaving (5), steps 4 and 5 write into the same arrays
    assert seen[3][1] == seen[4][1], seen
    monkeypatch.setattr(CausalRun, "_step_in_place", None)
    original = CausalRun.__init__

    def copying(self, *a, **kw):
        original(self, *a, **kw)
        self.in_place = False

    monkeypatch.setattr(CausalRun, "__init__", copying)
    copied = drive(OnnxSteps(eng), prompts, budget, eng.eos_ids, joins)
    assert in_place == copied
    assert ort_engine.with_capacity({"k": np.zeros((2, 1, 5, 4))}, 70)["k"].shape == (2, 1, 128, 4)
