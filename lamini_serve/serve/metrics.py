"""Prometheus metrics for `lamini serve`, named like vLLM's but prefixed `lamini:`.

Its own CollectorRegistry (one per app), every series labelled `model_name`:

    lamini:requests_total{status}                   every answered request, by HTTP status
    lamini:request_success_total{finished_reason}   choices that finished (stop, length)
    lamini:prompt_tokens_total, lamini:generation_tokens_total
    lamini:time_to_first_token_seconds              histogram (vLLM streams: the first chunk)
    lamini:inter_token_latency_seconds              histogram (in-process engines)
    lamini:e2e_request_latency_seconds              histogram
    lamini:num_requests_running, lamini:num_requests_waiting   gauges read from the engines at scrape time
"""

from __future__ import annotations

from typing import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0)


class _EngineGauges:
    """Running and waiting requests, read from each engine when scraped."""

    def __init__(self, engines: Callable[[], Mapping[str, object]]):
        self.engines = engines

    def collect(self):
        running = GaugeMetricFamily("lamini:num_requests_running", "Requests decoding now.", labels=["model_name"])
        waiting = GaugeMetricFamily("lamini:num_requests_waiting", "Requests waiting for a slot.", labels=["model_name"])
        for name, engine in self.engines().items():
            for family, attr in ((running, "running"), (waiting, "waiting")):
                value = getattr(engine, attr, None)
                if isinstance(value, (int, float)):
                    family.add_metric([name], float(value))
        yield running
        yield waiting


class Metrics:
    def __init__(self, engines: Callable[[], Mapping[str, object]]):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("lamini:requests", "Requests answered, by HTTP status.", ["model_name", "status"], registry=r)
        self.success = Counter("lamini:request_success", "Choices finished, by finish reason.",
                               ["model_name", "finished_reason"], registry=r)
        self.prompt_tokens = Counter("lamini:prompt_tokens", "Prompt tokens processed.", ["model_name"], registry=r)
        self.generation_tokens = Counter("lamini:generation_tokens", "Tokens generated.", ["model_name"], registry=r)
        self.ttft = Histogram("lamini:time_to_first_token_seconds", "Time to the first token.", ["model_name"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("lamini:inter_token_latency_seconds", "Time between tokens of one choice.", ["model_name"],
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("lamini:e2e_request_latency_seconds", "Request latency, first byte in to last out.",
                             ["model_name"], buckets=E2E_BUCKETS, registry=r)
        r.register(_EngineGauges(engines))

    def request_done(self, model: str, status: int) -> None:
        self.requests.labels(model, str(status)).inc()

    def tokens(self, model: str, prompt: int, generated: int) -> None:
        if prompt:
            self.prompt_tokens.labels(model).inc(prompt)
        if generated:
            self.generation_tokens.labels(model).inc(generated)

    def finished(self, model: str, reason: str) -> None:
        self.success.labels(model, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
