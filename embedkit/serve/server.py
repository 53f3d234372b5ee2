"""The server's state (:class:`Server`: config, models, permits, metrics, health) and the steps every route shares:
admission (client batch size, permits), the truncation direction, and waiting on a queued job."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import EmbedkitError
from .errors import Problem
from .metrics import Metrics
from .queue import Job, Permits, Post
from .registry import Registry, ServeConfig, ServedModel, UnknownModel, WrongKind, load_model

logger = logging.getLogger("embedkit")


class Server:
    """The server's state: config, models, permits, metrics, health."""

    def __init__(self, config: ServeConfig, models: list[ServedModel] | None = None,
                 loader: Callable[..., ServedModel] | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.registry = Registry()
        self.permits = Permits(config.max_concurrent_requests)
        self.loading = models is None
        self.load_error: str | None = None
        self.draining = False
        self.loader = loader or load_model
        self.started = time.time()
        for m in models or []:
            self.registry.add(m)

    def set_health(self, name: str, ok: bool) -> None:
        """Called by a queue after each batch: a backend failure makes ``/health`` 503 until a batch succeeds."""
        model = self.registry.models.get(name)
        if model is not None:
            model.healthy = ok

    def load(self) -> None:
        """Load every model of the config (in a background thread at startup)."""
        try:
            for path, name in zip(self.config.models, self.config.names(), strict=True):
                logger.info("loading %s as %r", path, name)
                self.registry.add(self.loader(path, name, self.config, self.metrics, self.set_health))
            logger.info("ready: %s", ", ".join(self.registry.models))
        except Exception as exc:  # noqa: BLE001 - reported by /health and the log
            self.load_error = exc.message if isinstance(exc, EmbedkitError) else f"{type(exc).__name__}: {exc}"
            logger.error("loading failed: %s", self.load_error, exc_info=not isinstance(exc, EmbedkitError))
        finally:
            self.loading = False

    def close(self) -> None:
        """Finish queued work and stop every model's threads."""
        for m in self.registry.models.values():
            m.close()

    def model(self, name: str | None, path: str, kind: str = "embedder") -> ServedModel:
        """The model a request names, or the HTTP error saying why not (503 loading / draining, 404 unknown)."""
        if self.loading:
            raise Problem(503, "the model is still loading; retry shortly (GET /health says when it is ready)",
                          "unhealthy", headers={"retry-after": "1"})
        if self.load_error:
            raise Problem(503, f"the model failed to load: {self.load_error}", "unhealthy")
        if self.draining:
            raise Problem(503, "the server is shutting down", "unhealthy")
        try:
            return self.registry.get(name, kind)
        except UnknownModel as exc:
            raise Problem(404, f"{exc.message} ({exc.hint})", "model_not_found", param="model") from None
        except WrongKind as exc:
            raise Problem(422, f"{exc.message} ({exc.hint})", "model_kind", param="model") from None

    def check_client_batch(self, n: int, noun: str, param: str) -> None:
        """413 when one request holds more than ``--max-client-batch-size`` inputs."""
        limit = self.config.max_client_batch_size
        if n > limit:
            raise Problem(413, f"{n} {noun} in one request, over the limit of {limit} (--max-client-batch-size)",
                          "validation", param=param)

    def acquire(self, n: int, noun: str, param: str) -> None:
        """Take ``n`` permits (one per input) without waiting: 413 when ``n`` is more than the server ever takes at
        once, 429 with ``Retry-After`` when too few are free now. The caller releases them."""
        if n > self.permits.limit:
            raise Problem(413, f"{n} {noun} is more than the server ever takes at once "
                          f"({self.permits.limit}, --max-concurrent-requests)", "validation", param=param)
        if not self.permits.try_acquire(n):
            raise Problem(429, f"the server is at its limit of {self.permits.limit} inputs in flight "
                          "(--max-concurrent-requests); retry after a moment", "overloaded",
                          headers={"retry-after": "1"})
        self.metrics.input_count.inc(n)

    async def run_job(self, request: Any, model: ServedModel, features: dict[str, list[list[int]]], post: Post,
                      started: float, tokenization: float) -> tuple[list[Any], dict[str, str]]:
        """Queue the features, wait for them (dropping them if the client leaves), return results + headers."""
        loop = asyncio.get_running_loop()
        job: Job = model.queue.submit(features, post, loop)
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({job.future, watch}, return_when=asyncio.FIRST_COMPLETED)
            if job.future not in done:
                model.queue.cancel(job)
                self.metrics.request_cancelled.inc()
                raise Problem(499, "the client closed the connection", "cancelled")
            try:
                results = job.future.result()
            except EmbedkitError as exc:
                raise Problem(500, exc.message, "backend") from None
        finally:
            watch.cancel()
        total = time.perf_counter() - started
        self.metrics.observe_job(job, tokenization, total)
        tokens = sum(len(r) for r in features["input_ids"])
        headers = {"x-compute-time": f"{total * 1000:.3f}", "x-tokenization-time": f"{tokenization * 1000:.3f}",
                   "x-queue-time": f"{job.queue_time * 1000:.3f}", "x-inference-time": f"{job.inference * 1000:.3f}",
                   "x-compute-tokens": str(tokens)}
        return results, headers


def check_direction(direction: str) -> None:
    """422 for a truncation direction other than ``right`` (embedkit models truncate on the right)."""
    if direction.lower() != "right":
        raise Problem(422, f"truncation_direction {direction!r} is not supported: embedkit models truncate on "
                      "the right, as the model was evaluated", "validation", param="truncation_direction")


async def _disconnected(request: Any) -> None:
    """Return when the client closes the connection (the body was already read; the next ASGI message is
    ``http.disconnect``)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
