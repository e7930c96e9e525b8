"""`lamini serve` end to end: a real server process, spoken to with the official `openai` client.

One server serves five tiny models at once (llama on torch and onnx, t5 on torch and
onnx, gpt2 on torch) with an API key; a second, tiny-limits server (--max-batch 1
--max-waiting 1) covers the queue (429) and clients that leave mid-stream.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import signal
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.conftest import run_lamini

KEY = "sk-lamini-test"
MODELS = ("llama", "llama-onnx", "t5", "t5-onnx", "gpt2")
PROMPT = "Give three tips for staying healthy."
METRIC_NAMES = ("lamini:request_success_total", "lamini:requests_total", "lamini:prompt_tokens_total",
                "lamini:generation_tokens_total", "lamini:time_to_first_token_seconds",
                "lamini:inter_token_latency_seconds", "lamini:e2e_request_latency_seconds",
                "lamini:num_requests_running", "lamini:num_requests_waiting")


@pytest.fixture(scope="module")
def server(serve, tiny_models, tiny_exports):
    return serve(f"llama={tiny_models['llama']}", f"llama-onnx={tiny_exports['llama']}", f"t5={tiny_models['t5']}",
                 f"t5-onnx={tiny_exports['t5']}", str(tiny_models["gpt2"]), "--api-key", KEY, "--max-n", "4",
                 "--max-tokens", "512")


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def small(serve, tiny_models, tiny_exports):
    """One request decodes at a time and one may wait: the third concurrent one is refused."""
    return serve(f"slow={tiny_models['llama']}", f"fast={tiny_exports['llama']}", "--max-batch", "1",
                 "--max-waiting", "1")


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _chat(client, model, stream=False, **kw):
    kw.setdefault("max_tokens", 24)
    kw.setdefault("temperature", 0)
    messages = kw.pop("messages", [{"role": "user", "content": PROMPT}])
    if not stream:
        r = client.chat.completions.create(model=model, messages=messages, **kw)
        return [c.message.content for c in r.choices], [c.finish_reason for c in r.choices], r.usage
    texts, reasons, usage = {}, {}, None
    roles = set()
    for chunk in client.chat.completions.create(model=model, messages=messages, stream=True,
                                                stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.add(c.index)
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    assert roles == set(texts)  # the first chunk of every choice carries the role
    return [texts[i] for i in sorted(texts)], [reasons[i] for i in sorted(texts)], usage


def _complete(client, model, stream=False, **kw):
    kw.setdefault("max_tokens", 24)
    kw.setdefault("temperature", 0)
    kw.setdefault("prompt", "The quick brown fox")
    if not stream:
        r = client.completions.create(model=model, **kw)
        return [c.text for c in r.choices], [c.finish_reason for c in r.choices], r.usage
    texts, reasons, usage = {}, {}, None
    for chunk in client.completions.create(model=model, stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    return [texts[i] for i in sorted(texts)], [reasons[i] for i in sorted(texts)], usage


# ---- answers ------------------------------------------------------------------------------------
def test_models_lists_every_served_model(client):
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert set(cards) == set(MODELS)
    assert cards["llama-onnx"]["engine"] == "onnx" and cards["t5"]["engine"] == "torch"
    assert cards["t5"]["family"] == "seq2seq" and cards["gpt2"]["prompt_format"] == "alpaca"
    assert all(c["owned_by"] == "lamini" and c["role"] == "student" and c["max_model_len"] == 512 for c in cards.values())


@pytest.mark.parametrize("model", MODELS)
def test_streamed_equals_non_streamed_at_temperature_0(client, model):
    said = []
    for call in (_chat, _complete):
        whole = call(client, model, max_tokens=20)
        streamed = call(client, model, stream=True, max_tokens=20)
        assert streamed == whole, call.__name__
        said.append(whole[0][0])
    assert any(said)  # random tiny models still say something


def test_torch_and_onnx_give_the_same_greedy_answers(client):
    for torch_name, onnx_name in (("llama", "llama-onnx"), ("t5", "t5-onnx")):
        assert _chat(client, torch_name) == _chat(client, onnx_name)
        assert _complete(client, torch_name) == _complete(client, onnx_name)


def test_usage_counts_the_tokenizers_tokens(client, tiny_models):
    from lamini_serve.prompts import render_alpaca

    llama_tok, gpt2_tok = _tok(tiny_models["llama"]), _tok(tiny_models["gpt2"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    for model in ("llama", "llama-onnx"):
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=7, temperature=0, logprobs=True,
                                           extra_body={"ignore_eos": True})
        expected = llama_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert r.usage.prompt_tokens == len(expected)
        assert r.usage.completion_tokens == 7 == len(r.choices[0].logprobs.content)
        assert r.usage.total_tokens == len(expected) + 7
    r = client.chat.completions.create(model="gpt2", messages=messages[1:], max_tokens=5, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens == len(gpt2_tok(render_alpaca(messages[1:]))["input_ids"])
    # completions: the text as given; n choices count the prompt once and every choice's tokens
    prompts = ["The quick brown fox", "What is the capital of France?"]
    r = client.completions.create(model="gpt2", prompt=prompts, max_tokens=6, n=2, temperature=1, seed=1,
                                  extra_body={"ignore_eos": True})
    assert len(r.choices) == 4 and [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == sum(len(gpt2_tok(p)["input_ids"]) for p in prompts)
    assert r.usage.completion_tokens == 4 * 6


def test_token_id_prompts_answer_as_their_text(client, tiny_models):
    ids = _tok(tiny_models["gpt2"])("The quick brown fox")["input_ids"]
    assert _complete(client, "gpt2", prompt=ids) == _complete(client, "gpt2")
    texts, _, usage = _complete(client, "gpt2", prompt=[ids, ids[:2]], max_tokens=5)
    assert len(texts) == 2 and usage.prompt_tokens == len(ids) + 2


def _first_ascii_window(text: str, start: int = 4, width: int = 3) -> str:
    for i in range(start, len(text) - width):
        window = text[i:i + width]
        if all(c.isascii() and c.isalnum() for c in window):
            return window
    pytest.skip(f"no plain window in {text!r}")


@pytest.mark.parametrize("model", ("gpt2", "llama-onnx"))
def test_stop_strings_cut_the_answer(client, model):
    (full,), (reason,), _ = _complete(client, model, max_tokens=40, extra_body={"ignore_eos": True})
    assert reason == "length"
    stop = _first_ascii_window(full)
    expected = full[:full.index(stop)]
    for stream in (False, True):
        texts, reasons, usage = _complete(client, model, stream=stream, max_tokens=40, stop=[stop, "\x00never"],
                                          extra_body={"ignore_eos": True})
        assert texts == [expected] and reasons == ["stop"]
        assert usage.completion_tokens < 40


def test_seed_repeats_and_different_seeds_differ(client):
    kw = dict(max_tokens=16, temperature=1.0, n=3, extra_body={"ignore_eos": True})
    for call, model in ((_complete, "gpt2"), (_chat, "llama-onnx"), (_chat, "llama")):  # (tiny t5 is too peaked to vary)
        kw["prompt" if call is _complete else "messages"] = "hi there" if call is _complete else [
            {"role": "user", "content": "hi there"}]
        a = call(client, model, seed=7, **kw)[0]
        b = call(client, model, seed=7, **kw)[0]
        c = call(client, model, seed=8, **kw)[0]
        assert a == b, model
        assert a != c, model
        assert len(set(a)) > 1, model  # the choices of one request differ (each its own derived seed)
        assert call(client, model, seed=7, stream=True, **kw)[0] == a  # streamed too
        kw.pop("prompt", None), kw.pop("messages", None)


def test_max_tokens_ends_with_length_and_exact_counts(client):
    for model in MODELS:
        r = client.completions.create(model=model, prompt="The quick brown fox", max_tokens=9, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 9, model
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                           max_completion_tokens=5, temperature=0)
        c = r.choices[0]
        assert (c.finish_reason == "length") == (r.usage.completion_tokens == 5), model
        assert r.usage.completion_tokens <= 5


def test_chat_logprobs_have_openai_shape(client):
    r = client.chat.completions.create(model="llama-onnx", messages=[{"role": "user", "content": PROMPT}], max_tokens=6,
                                       temperature=0, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for lp in content:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 3
        assert lp.top_logprobs[0].logprob == pytest.approx(lp.logprob, abs=1e-5)  # greedy: the best one
        assert bytes(lp.bytes).decode("utf-8", "replace") == lp.token


@pytest.mark.parametrize("model,kind", [("gpt2", "gpt2"), ("llama", "llama"), ("llama-onnx", "llama")])
def test_echo_logprobs_equal_the_models_own_log_probabilities(client, tiny_models, model, kind):
    """lm-evaluation-harness's loglikelihood request: echo, logprobs, max_tokens 0."""
    import torch
    from transformers import AutoModelForCausalLM

    prompt = "What is the capital of France? The capital of France is Paris."
    tok = _tok(tiny_models[kind])
    ids = tok(prompt)["input_ids"]
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_models[kind]), dtype=torch.float32).eval()
    with torch.inference_mode():
        lps = torch.log_softmax(lm(torch.tensor([ids])).logits[0].float(), -1)
    expected = [lps[i - 1, ids[i]].item() for i in range(1, len(ids))]
    for logprobs in (1, 0):
        r = client.completions.create(model=model, prompt=prompt, echo=True, logprobs=logprobs, max_tokens=0,
                                      temperature=0)
        c = r.choices[0]
        assert c.text == prompt and c.finish_reason == "length"
        assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 0
        got = c.logprobs.token_logprobs
        assert got[0] is None and len(got) == len(ids)
        np.testing.assert_allclose(got[1:], expected, atol=1e-3)
        assert "".join(c.logprobs.tokens) == prompt
        if logprobs == 1:  # the top entry is the model's argmax
            for i, top in enumerate(c.logprobs.top_logprobs[1:]):
                best = max(top.values())
                assert best == pytest.approx(lps[i].max().item(), abs=1e-3)
    # echo with generation: the prompt, then the answer
    whole = client.completions.create(model=model, prompt=prompt, echo=True, max_tokens=5, temperature=0).choices[0].text
    alone = client.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0).choices[0].text
    assert whole == prompt + alone


# ---- errors -------------------------------------------------------------------------------------
def _error(exc_info, status):
    exc = exc_info.value
    assert exc.status_code == status
    body = exc.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return body["error"]


def test_api_key_is_required_and_checked(server, client):
    with pytest.raises(openai.AuthenticationError) as e:
        OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).models.list()
    assert _error(e, 401)["code"] == "invalid_api_key"
    for path in ("/v1/models", "/metrics"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(server.url + "/v1/completions", json={"model": "gpt2", "prompt": "hi"}, headers={"Authorization": "Bearer"})
    assert r.status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # open: load balancers probe it


def test_unknown_model_is_404_listing_the_served_ones(client):
    with pytest.raises(openai.NotFoundError) as e:
        _chat(client, "gpt-4")
    err = _error(e, 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert all(m in err["message"] for m in MODELS)


@pytest.mark.parametrize("kw,param,words", [
    (dict(temperature=5), "temperature", "2"),
    (dict(n=5), "n", "4"),
    (dict(top_p=0), "top_p", ""),
    (dict(max_tokens=513), "max_tokens", "512"),
    (dict(max_tokens=500, prompt="word " * 40), "max_tokens", "512"),
    (dict(prompt="The quick brown fox jumps over the lazy dog. " * 60, max_tokens=None), "prompt", "512"),
    (dict(stop=["a", "b", "c", "d", "e"]), "stop", ""),
    (dict(extra_body={"min_tokens": 3}), "min_tokens", ""),
    (dict(logprobs=21), "logprobs", ""),
    (dict(prompt=[]), "prompt", "empty"),
    (dict(max_tokens=0), "max_tokens", "echo"),
    (dict(echo=True, logprobs=1, max_tokens=0, model="t5"), "echo", "encoder-decoder"),
    (dict(prompt=[10**6]), "prompt", "vocabulary"),
    (dict(prompt=[2**32], echo=True), "prompt", "vocabulary"),
    (dict(prompt=[5, 10**7], echo=True, logprobs=1, max_tokens=0), "prompt", "vocabulary"),
])
def test_bad_parameters_are_400_naming_the_field(client, kw, param, words):
    model = kw.pop("model", "gpt2")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, **{"prompt": "hi", "max_tokens": 4, **kw})
    err = _error(e, 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param, err
    assert words in err["message"]


def test_bad_chat_bodies_are_400(client, server):
    bad = [
        dict(messages=[{"role": "tool", "content": "x"}]),
        dict(messages=[{"role": "assistant", "content": "x"}]),
        dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        dict(messages=[]),
        dict(top_logprobs=2),
    ]
    for body in bad:
        r = httpx.post(server.base_url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                       json={"model": "llama", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}], **body})
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.base_url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}",
                                                                   "Content-Type": "application/json"}, content=b"{nope")
    assert r.status_code == 400
    # text parts and the developer role are accepted
    r = client.chat.completions.create(model="llama", max_tokens=3, messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}])
    assert r.choices[0].finish_reason in ("stop", "length")


def test_a_body_over_the_limit_is_413(client, server):
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model="gpt2", prompt="x" * (1 << 20), max_tokens=1)
    assert _error(e, 413)["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it comes
        for _ in range(20):
            yield b"x" * 65536

    r = httpx.post(server.base_url + "/completions", headers={"Authorization": f"Bearer {KEY}"}, content=chunks())
    assert r.status_code == 413


def test_a_full_queue_is_429_with_retry_after(small):
    def ask(_):
        return httpx.post(small.base_url + "/completions", timeout=60, json={
            "model": "fast", "prompt": "hi", "max_tokens": 500, "ignore_eos": True})

    with cf.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) >= 2 and 429 in codes, codes
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 'lamini:requests_total{model_name="fast",status="429"}' in httpx.get(small.url + "/metrics").text


def _gauge(served, model, name="lamini:num_requests_running", headers=None) -> float:
    text = httpx.get(served.url + "/metrics", headers=headers).text
    m = re.search(rf'^{re.escape(name)}\{{model_name="{re.escape(model)}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_client_that_leaves_mid_stream_frees_its_slot(small):
    body = {"model": "slow", "prompt": "hi", "max_tokens": 500, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", small.base_url + "/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: {") for line in got)
            assert _gauge(small, "slow") == 1
            left = time.perf_counter()
        # the stream is closed: the row is dropped at the next step, long before its 500 tokens
        while _gauge(small, "slow") != 0:
            assert time.perf_counter() - left < 0.5, "the row kept decoding after its client left"
            time.sleep(0.01)
    # one slot, one waiting place: a second request waits, and both are served, only if the first got
    # the freed slot. (The second is sent once the first runs: sent together, the second could find the
    # first still queued on a busy machine, which is a full queue however free the slot is.)
    def ask(tokens):
        return httpx.post(small.base_url + "/completions", timeout=60, json={
            "model": "slow", "prompt": "hi", "max_tokens": tokens, "ignore_eos": True}).status_code

    with cf.ThreadPoolExecutor(2) as pool:
        first = pool.submit(ask, 200)
        deadline = time.perf_counter() + 30
        while _gauge(small, "slow") != 1 and not first.done():
            assert time.perf_counter() < deadline, "the first request never started"
            time.sleep(0.01)
        second = pool.submit(ask, 3)
        codes = [first.result(), second.result()]
    assert codes == [200, 200]


def test_metrics_expose_the_vllm_like_names(server, client):
    _chat(client, "gpt2", max_tokens=3)
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in METRIC_NAMES:
        assert name in text, name
    assert 'lamini:requests_total{model_name="gpt2",status="200"}' in text
    assert _gauge(server, "gpt2", headers={"Authorization": f"Bearer {KEY}"}) == 0


def test_onnx_continuous_batching_end_to_end(client):
    """A short request sent while a long one decodes joins its batch and finishes first;
    both answers equal the same requests sent alone."""
    long_kw = dict(prompt="The quick brown fox", max_tokens=400, extra_body={"ignore_eos": True})
    short_kw = dict(prompt="What is the capital of France?", max_tokens=5, extra_body={"ignore_eos": True})
    long_alone, short_alone = _complete(client, "llama-onnx", **long_kw)[0], _complete(client, "llama-onnx", **short_kw)[0]
    done = {}

    def run_long():
        text = ""
        for chunk in client.completions.create(model="llama-onnx", stream=True, temperature=0, **long_kw):
            if not started.is_set():
                started.set()
            text += "".join(c.text for c in chunk.choices)
        done["long"] = (time.perf_counter(), text)

    started = threading.Event()
    t = threading.Thread(target=run_long)
    t.start()
    assert started.wait(60)
    short = _complete(client, "llama-onnx", **short_kw)[0]
    done["short"] = (time.perf_counter(), short)
    t.join(60)
    assert done["short"][0] < done["long"][0], "the short request waited for the long one"
    assert short == short_alone and done["long"][1] == long_alone[0]


def test_lamini_chat_endpoint_prints_the_servers_answer(server, client):
    for model in ("llama", "t5"):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                           max_tokens=20, temperature=0, top_p=1)
        proc = run_lamini("chat", model, "--endpoint", server.base_url, "-p", PROMPT, "--max-new-tokens", "20",
                          env={"LAMINI_API_KEY": KEY}, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == r.choices[0].message.content + "\n"
    proc = run_lamini("chat", "llama", "--endpoint", server.base_url, "-p", "hi", env={"LAMINI_API_KEY": "bad"})
    assert proc.returncode != 0 and "LAMINI_API_KEY" in proc.stderr and "Traceback" not in proc.stderr


def test_openapi_documents_the_bodies(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"ChatCompletionRequest", "CompletionRequest", "ChatCompletion", "Completion", "ModelList"} <= set(schemas)
    props = schemas["ChatCompletionRequest"]["properties"]
    assert {"messages", "temperature", "top_p", "n", "stream", "logprobs", "top_logprobs", "seed", "stop"} <= set(props)
    assert not any("422" in op.get("responses", {}) for path in spec["paths"].values() for op in path.values())


# ---- the command --------------------------------------------------------------------------------
@pytest.mark.parametrize("args,code,words", [
    ((), 2, "no models to serve"),
    (("x=",), 2, "NAME=PATH"),
    (("./no/such/folder",), 1, "no such folder"),
    (("bad name=x",), 2, "NAME=PATH"),
])
def test_bad_command_lines_are_one_line_errors(args, code, words):
    proc = run_lamini("serve", *args, "--port", "0", timeout=120)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and words in proc.stderr


def test_duplicate_names_and_bad_engines_are_refused(tiny_models, tiny_exports):
    g = str(tiny_models["gpt2"])
    proc = run_lamini("serve", g, f"gpt2={tiny_models['llama']}", "--port", "0", timeout=120)
    assert proc.returncode == 2 and "two models are named 'gpt2'" in proc.stderr
    proc = run_lamini("serve", g, "--engine", "gpt2=onnx", "--port", "0", timeout=120)
    assert proc.returncode == 1 and "lamini export" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_lamini("serve", g, "--engine", "gpt2=vllm", "--port", "0", timeout=120,
                      env={"LAMINI_VLLM_PYTHON": ""})
    assert proc.returncode == 1 and "lamini setup vllm" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_lamini("serve", g, "--engine", "x=torch", "--port", "0", timeout=120)
    assert proc.returncode == 2 and "--engine x=torch" in proc.stderr


def test_herd_serves_teacher_students_and_exports(serve, tiny_models, tiny_exports, teacher_path, tmp_path):
    import shutil

    herd = tmp_path / "herd"
    for name, kind in (("tiny-llama", "llama"), ("tiny-t5", "t5")):
        shutil.copytree(tiny_models[kind], herd / name)
        meta = json.loads((herd / name / "lamini.json").read_text())
        (herd / name / "lamini.json").write_text(json.dumps({**meta, "role": "student", "student": name}))
    shutil.copytree(tiny_exports["llama"], tmp_path / "herd-onnx" / "tiny-llama")
    from tests.conftest import REAL_HOME

    served = serve("--herd", str(herd), env={"LAMINI_HOME": str(REAL_HOME)})
    cards = {m["id"]: m for m in httpx.get(served.base_url + "/models").json()["data"]}
    assert set(cards) == {"teacher", "tiny-llama", "tiny-t5", "tiny-llama-int8"}
    assert cards["teacher"]["role"] == "teacher" and cards["tiny-t5"]["role"] == "student"
    assert cards["tiny-llama-int8"]["engine"] == "onnx"
    r = httpx.post(served.base_url + "/chat/completions", timeout=120, json={
        "model": "teacher", "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["message"]["content"]
    assert served.stop() == 0
    assert "shutting down" in served.stderr()


def test_sigterm_shuts_down_gracefully_mid_stream(serve, tiny_models):
    served = serve(str(tiny_models["gpt2"]))
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", served.base_url + "/completions", json={
                "model": "gpt2", "prompt": "hi", "max_tokens": 300, "ignore_eos": True, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)
            os.kill(served.proc.pid, signal.SIGTERM)
            rest = "\n".join(lines)
    assert served.proc.wait(30) == 0
    assert "data: [DONE]" in rest or "error" in rest or rest == ""
    assert "shutting down" in served.stderr() and "Traceback" not in served.stderr()


def test_the_listening_line_is_the_only_stdout(serve, tiny_models):
    served = serve(str(tiny_models["t5"]), "--host", "127.0.0.1")
    assert [line for line in served.lines if line.strip()] == [f"lamini serve: listening on {served.base_url}\n"]
    assert "curl" in served.stderr()
    assert served.stop() == 0


# ---- vLLM engines: the body as sent, the bytes as answered (a fake engine, no GPU) ---------------
class _FakeVllm:
    kind, relayed, max_model_len, spec = "vllm", True, 2048, None

    def __init__(self):
        self.state, self.bodies = "loading", []

    async def request(self, path, body):
        from lamini_serve.engines.base import Unavailable

        if self.state != "ready":
            raise Unavailable(f"fake is {self.state}", retry_after=5)
        self.bodies.append((path, body))
        if body.get("stream"):
            content, ctype = b'data: {"choices":[{"text":"a"}]}\n\ndata: [DONE]\n\n', "text/event-stream; charset=utf-8"
        else:
            content = json.dumps({"choices": [{"text": "ab", "finish_reason": "length"}],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()
            ctype = "application/json"
        status = 400 if body.get("max_tokens") == 999 else 200
        class Chunks(httpx.AsyncByteStream):  # as a server sends it: in pieces, not read yet
            async def __aiter__(self):
                yield content[:7]
                yield content[7:]

        client = httpx.AsyncClient(transport=httpx.MockTransport(
            lambda req: httpx.Response(status, stream=Chunks(), headers={"content-type": ctype})))
        return await client.send(client.build_request("POST", "http://fake" + path), stream=True)


def test_vllm_engines_are_passed_through_and_503_until_ready():
    from fastapi.testclient import TestClient

    from lamini_serve.serve.app import create_app

    fake = _FakeVllm()
    http = TestClient(create_app({"big": fake}, api_key="k"))
    auth = {"Authorization": "Bearer k"}
    body = {"model": "big", "prompt": "hi", "max_tokens": 2, "vendor_extra": {"x": 1}}
    r = http.post("/v1/completions", json=body, headers=auth)
    assert r.status_code == 503 and r.headers["retry-after"] == "5" and r.json()["error"]["type"] == "service_unavailable"
    health = http.get("/health")
    assert health.status_code == 503 and "retry-after" in health.headers and health.json()["not_ready"] == ["big"]
    fake.state = "ready"
    assert http.get("/health").status_code == 200
    r = http.post("/v1/completions", json=body, headers=auth)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    assert fake.bodies[-1] == ("/v1/completions", body)  # as sent, unknown fields included
    r = http.post("/v1/chat/completions", json={"model": "big", "messages": [{"role": "user", "content": "hi"}],
                                                "stream": True}, headers=auth)
    assert r.status_code == 200 and r.content == b'data: {"choices":[{"text":"a"}]}\n\ndata: [DONE]\n\n'
    assert r.headers["content-type"].startswith("text/event-stream")
    r = http.post("/v1/completions", json={**body, "max_tokens": 999}, headers=auth)
    assert r.status_code == 400  # vLLM's own status, passed on
    card = http.get("/v1/models", headers=auth).json()["data"][0]
    assert card["engine"] == "vllm" and card["max_model_len"] == 2048
    metrics = http.get("/metrics", headers=auth).text
    assert 'lamini:generation_tokens_total{model_name="big"} 2.0' in metrics


def test_cors_only_for_the_origins_given():
    from fastapi.testclient import TestClient

    from lamini_serve.serve.app import create_app

    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    closed = TestClient(create_app({}, api_key="k"))
    assert "access-control-allow-origin" not in closed.options("/v1/chat/completions", headers=preflight).headers
    assert "access-control-allow-origin" not in closed.get("/health", headers={"Origin": "https://app.example"}).headers
    open_ = TestClient(create_app({}, api_key="k", cors_origins=["https://app.example"]))
    r = open_.options("/v1/chat/completions", headers=preflight)  # preflights carry no key
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    r = open_.get("/v1/models", headers={"Origin": "https://app.example"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example"
    r = open_.get("/v1/models", headers={"Origin": "https://evil.example", "Authorization": "Bearer k"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_herd_by_recipe_name_or_file(tiny_models, tmp_path, monkeypatch):
    """`--herd RECIPE` serves the folder the recipe trains, with the recipe's teacher."""
    import shutil

    import yaml

    from lamini_serve.errors import LaminiError
    from lamini_serve.serve import registry

    herd = tmp_path / "out" / "herd"
    shutil.copytree(tiny_models["llama"], herd / "s1")
    meta = json.loads((herd / "s1" / "lamini.json").read_text())
    (herd / "s1" / "lamini.json").write_text(json.dumps({**meta, "role": "student", "student": "s1"}))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": "d.parquet", "output": str(herd), "teacher": str(tiny_models["gpt2"]),
                                      "students": [{"name": "s1", "init": {"from_teacher": True, "layers": 1}}]}))
    planned = {p.name: p for p in registry.plan([], str(recipe), ("s1=torch", "teacher=torch"), log=lambda m: None)}
    assert set(planned) == {"teacher", "s1"}
    assert planned["teacher"].source == str(tiny_models["gpt2"]) and planned["teacher"].role == "teacher"
    with pytest.raises(LaminiError, match="no such folder or recipe"):
        registry.plan([], str(tmp_path / "nothing"), log=lambda m: None)
    monkeypatch.chdir(tmp_path)  # where runs/herd (quickstart-cpu's output) does not exist
    with pytest.raises(LaminiError, match="not trained yet; train it first: lamini train"):
        registry.plan([], "quickstart-cpu", log=lambda m: None)


def test_a_model_on_another_server_is_relayed(serve, server, client, tmp_path):
    """NAME=URL#MODEL: a second gateway relays to the first (as it would to a vLLM container):
    the same answers, streamed and not; the upstream key from $LAMINI_UPSTREAM_API_KEY;
    a refused key or a model the server lacks is a 503 that says so."""
    front = serve(f"up={server.base_url}#llama-onnx", f"t5={server.base_url}#t5", "--teacher", "up",
                  env={"LAMINI_UPSTREAM_API_KEY": KEY})
    relay = OpenAI(base_url=front.base_url, api_key="x", max_retries=0, timeout=120)
    cards = {m.id: m for m in relay.models.list().data}
    assert cards["up"].engine == "remote" and cards["up"].role == "teacher" and cards["up"].state == "ready"
    for stream in (False, True):
        assert _chat(relay, "up", stream=stream)[:2] == _chat(client, "llama-onnx")[:2]
        assert _complete(relay, "t5", stream=stream)[0] == _complete(client, "t5")[0]

    wrong = serve(f"up={server.base_url}#llama-onnx", f"none={server.base_url}#no-such-model",
                  env={"LAMINI_UPSTREAM_API_KEY": "wrong"}, health=False)
    health = httpx.get(wrong.url + "/health", timeout=10)
    assert health.status_code == 503 and set(health.json()["not_ready"]) == {"up", "none"}
    r = httpx.post(wrong.base_url + "/chat/completions", timeout=10, json={
        "model": "up", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and "refuses the key" in r.json()["error"]["message"]
    assert "LAMINI_UPSTREAM_API_KEY" in r.json()["error"]["message"]

    proc = run_lamini("serve", "http://127.0.0.1:9/v1", "--port", "0", timeout=60)
    assert proc.returncode == 2 and "NAME=http://127.0.0.1:9/v1" in proc.stderr
