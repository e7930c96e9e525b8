"""Property-based fuzzing of the live server from its own /openapi.json (schemathesis).

Whatever the body (valid, or broken in any way the schema allows schemathesis to
imagine), the server answers with a status below 500. Bodies name a served model
(an unknown one is a plain 404, covered in test_server.py), so generation itself
is fuzzed; the server's limits are small to keep each example fast.
"""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

KEY = "sk-fuzz"
SERVED = ("gpt2", "llama-onnx", "t5")
EXAMPLES = int(os.environ.get("LAMINI_FUZZ_EXAMPLES", "25"))  # more for a longer hunt: LAMINI_FUZZ_EXAMPLES=500


@pytest.fixture(scope="module")
def fuzz_server(serve, tiny_models, tiny_exports):
    return serve(str(tiny_models["gpt2"]), f"llama-onnx={tiny_exports['llama']}", str(tiny_models["t5"]),
                 "--api-key", KEY, "--max-tokens", "16", "--max-n", "2")


OPERATIONS = [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
              ("GET", "/health"), ("GET", "/metrics")]


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("method,path", OPERATIONS)
def test_no_input_makes_the_server_fail(api_schema, fuzz_server, method, path, mode):
    """EXAMPLES per operation and mode: bodies the schema allows, and bodies it does not."""
    from hypothesis import given

    operation = api_schema[path][method]
    answered = []
    if mode == "negative" and method == "GET":
        pytest.skip("no body or parameters to break")

    @given(case=operation.as_strategy(schemathesis.GenerationMode(mode)))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        if isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = SERVED[len(str(case.body)) % len(SERVED)]
            if mode == "positive":  # within the server's limits more often, so that it generates
                for key, top in (("max_tokens", 16), ("n", 2)):
                    if isinstance(case.body.get(key), int) and case.body[key] > top:
                        case.body[key] = case.body[key] % top + 1
        response = case.call(base_url=fuzz_server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        answered.append(response.status_code)
        assert response.status_code < 500, (f"{method} {path} {case.body!r} -> {response.status_code}: "
                                            f"{response.text[:500]}")
        if response.status_code >= 400:
            assert set(response.json()["error"]) >= {"message", "type", "param", "code"}

    check()
    assert answered
