"""Prometheus metrics with text-embeddings-inference's names (``te_*``), one registry per app."""

from __future__ import annotations

from typing import Any

from .._optional import require

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The server's counters, gauges and histograms (``GET /metrics`` renders :meth:`render`).

    TEI's names: ``te_request_count{method}``, ``te_request_success{method}``, ``te_request_failure{err}``,
    ``te_request_duration``, ``te_request_tokenization_duration``, ``te_request_queue_duration``,
    ``te_request_inference_duration`` (seconds), ``te_queue_size``, ``te_batch_next_size``,
    ``te_batch_next_tokens``, ``te_batch_inference_duration``; embedkit adds ``te_request_cancelled`` (clients that
    went away while queued) and ``te_request_input_count``.
    """

    def __init__(self) -> None:
        prom = require("prometheus_client", "embedkit serve's /metrics")
        self.registry = prom.CollectorRegistry()
        self._prom = prom
        r = self.registry
        self.request_count = prom.Counter("te_request_count", "Requests received", ["method"], registry=r)
        self.request_success = prom.Counter("te_request_success", "Requests answered 200", ["method"], registry=r)
        self.request_failure = prom.Counter("te_request_failure", "Requests that failed", ["err"], registry=r)
        self.request_cancelled = prom.Counter("te_request_cancelled", "Clients gone while queued", registry=r)
        self.input_count = prom.Counter("te_request_input_count", "Inputs received", registry=r)
        h = dict(buckets=DURATION_BUCKETS, registry=r)
        self.request_duration = prom.Histogram("te_request_duration", "Request duration (s)", **h)
        self.tokenization = prom.Histogram("te_request_tokenization_duration", "Tokenization (s)", **h)
        self.queue = prom.Histogram("te_request_queue_duration", "Time in the queue (s)", **h)
        self.inference = prom.Histogram("te_request_inference_duration", "Inference per request (s)", **h)
        self.batch_inference = prom.Histogram("te_batch_inference_duration", "Inference per batch (s)", **h)
        self.queue_size = prom.Gauge("te_queue_size", "Inputs waiting in the queue", registry=r)
        self.batch_next_size = prom.Gauge("te_batch_next_size", "Inputs in the last batch formed", registry=r)
        self.batch_next_tokens = prom.Gauge("te_batch_next_tokens", "Tokens in the last batch formed", registry=r)

    def render(self) -> tuple[bytes, str]:
        """``(body, content type)`` of the Prometheus text format."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST

    def failure(self, err: str) -> None:
        """Count one failed request by its kind (``validation``, ``overloaded``, ``payload``, ``auth``...)."""
        self.request_failure.labels(err=err).inc()

    def observe_job(self, job: Any, tokenization: float, total: float) -> None:
        """Record one answered request's stage durations."""
        self.tokenization.observe(tokenization)
        self.queue.observe(job.queue_time)
        self.inference.observe(job.inference)
        self.request_duration.observe(total)
