"""The batching queue between the HTTP routes and a model (text-embeddings-inference's design).

Each request's inputs are tokenized on arrival (a small thread pool, one tokenizer copy per thread), each input
becomes one :class:`Item` of one queue per model, and two threads per model serve that queue:

- the *batcher* pops the oldest items while the batch's padded size (``count * longest``) stays within
  ``max_batch_tokens`` and ``count <= max_batch_requests``, sorts them by token length and pads them (the next batch
  is prepared while the current one runs); on a CPU it pads the sorted batch as a few tight groups
  (:func:`embedkit.batching.low_padding_groups`): a CPU forward pass costs about its padded tokens, and 64 of
  ``benchmarks/serve.py``'s texts (5-40 words) padded to the longest one are ~42 % padding, ~15 % as groups;
- the *inference worker* runs the padded batch through the same steps as :meth:`embedkit.Embedder.encode`
  (``backend.forward`` -> :func:`embedkit.pooling.pool` -> :func:`embedkit.pooling.finalize`, or the ONNX graph's
  pooled output; :mod:`.runner`), checks every value is finite, and resolves each request's future when its last
  input is done.

Back-pressure is a non-blocking :class:`Permits` count (one permit per input): the route answers 429 at once when
none is free, instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import batching
from ..errors import EmbedkitError
from .runner import Post, RerankRunner, Runner

__all__ = ["BackendFailure", "BatchQueue", "Item", "Job", "Permits", "Post", "RerankRunner", "Runner", "Tokenizers"]

logger = logging.getLogger("embedkit")


class Permits:
    """A non-blocking counter of in-flight inputs (``--max-concurrent-requests``): :meth:`try_acquire` never waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def try_acquire(self, n: int) -> bool:
        """Take ``n`` permits if they are free now; ``False`` otherwise (the caller answers 429)."""
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        """Give ``n`` permits back."""
        with self._lock:
            self.used = max(0, self.used - n)


class Job:
    """One request: its inputs' results, filled by the inference worker, and an asyncio future resolved when the
    last one is done (or the first batch holding one of them fails)."""

    def __init__(self, n: int, post: Post, loop: asyncio.AbstractEventLoop) -> None:
        self.n = n
        self.post = post
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.results: list[Any] = [None] * n
        self.remaining = n
        self.dead = False  # cancelled (client gone) or failed: its remaining items are dropped
        self.enqueued = time.perf_counter()
        self.started: float | None = None
        self.inference = 0.0

    def _resolve(self, exc: BaseException | None) -> None:
        if self.future.done():
            return
        if exc is None:
            self.future.set_result(self.results)
        else:
            self.future.set_exception(exc)

    def finish(self, exc: BaseException | None = None) -> None:
        """Resolve the future from any thread."""
        self.loop.call_soon_threadsafe(self._resolve, exc)

    @property
    def queue_time(self) -> float:
        """Seconds from entering the queue to the start of its first batch."""
        return (self.started or self.enqueued) - self.enqueued


@dataclass
class Item:
    """One input of one request: its unpadded features and where its result goes."""

    features: dict[str, list[int]]
    job: Job
    index: int
    length: int = field(init=False)

    def __post_init__(self) -> None:
        self.length = len(self.features["input_ids"])


class BackendFailure(EmbedkitError):
    """The model failed on a batch (not because of one input's content): the server reports unhealthy until a batch
    succeeds again."""


class BatchQueue:
    """One model's queue, batcher thread and inference thread.

    Args:
        embedder: an :class:`~embedkit.Embedder` (or :class:`~embedkit.M3Embedder`) already loaded.
        max_batch_tokens: padded tokens per batch (``count * longest``); one input longer than that runs alone.
        max_batch_requests: inputs per batch at most (``None``: no cap but the token budget).
        metrics: a :class:`~embedkit.serve.metrics.Metrics` (or ``None``).
        on_health: called with ``True`` after a batch succeeds and ``False`` after a backend failure.
        runner: what runs a padded batch (default :class:`Runner` of ``embedder``; :class:`RerankRunner` for a
            :class:`~embedkit.Reranker`, whose items are tokenized pairs).
    """

    def __init__(self, embedder: Any, *, max_batch_tokens: int, max_batch_requests: int | None = None,
                 metrics: Any = None, on_health: Callable[[bool], None] | None = None, name: str = "model",
                 runner: Any = None) -> None:
        self.runner = runner if runner is not None else Runner(embedder)
        self.embedder = embedder
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.metrics = metrics
        self.on_health = on_health
        self.name = name
        tok = embedder.tokenizer
        self.pad_id = batching.pad_token_id(tok)
        self.side = getattr(tok, "padding_side", "right")
        self.multiple_of = 16 if getattr(embedder, "precision", "fp32") in ("bf16", "fp16") else 1
        self.split = not str(getattr(embedder, "device", "cpu")).startswith("cuda")  # a GPU wants one wide batch
        self._pending: deque[Item] = deque()
        self._cond = threading.Condition()
        self._ready: deque[tuple[list[Item], list[tuple[np.ndarray, dict[str, np.ndarray]]]]] = deque()
        self._ready_cond = threading.Condition()
        self._busy = False
        self._stop = False
        self._threads = [threading.Thread(target=self._batcher, name=f"embedkit-batcher-{name}", daemon=True),
                         threading.Thread(target=self._worker, name=f"embedkit-infer-{name}", daemon=True)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ submit side (event loop)
    def submit(self, features: batching.Features, post: Post, loop: asyncio.AbstractEventLoop) -> Job:
        """Enter one request's tokenized inputs into the queue; await ``job.future`` for the results."""
        n = len(features["input_ids"])
        job = Job(n, post, loop)
        items = [Item({k: v[i] for k, v in features.items()}, job, i) for i in range(n)]
        with self._cond:
            self._pending.extend(items)
            self._set_queue_size()
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Drop a request's items that are still queued (its client went away)."""
        job.dead = True

    def _set_queue_size(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_size.set(len(self._pending))

    @property
    def idle(self) -> bool:
        """Nothing queued, prepared or running."""
        with self._cond, self._ready_cond:
            return not self._pending and not self._ready and not self._busy

    # ------------------------------------------------------------------ batcher thread
    def _pop_batch(self) -> list[Item]:
        """The oldest live items while ``count * longest <= max_batch_tokens`` (the first always goes)."""
        batch: list[Item] = []
        longest = 0
        cap = self.max_batch_requests or 1 << 30
        while self._pending and len(batch) < cap:
            item = self._pending[0]
            if item.job.dead:
                self._pending.popleft()
                continue
            width = max(longest, item.length)
            if batch and (len(batch) + 1) * width > self.max_batch_tokens:
                break
            batch.append(self._pending.popleft())
            longest = width
        return batch

    def _batcher(self) -> None:
        while True:
            with self._ready_cond:  # at most one batch prepared ahead of the one running
                while self._ready and not self._stop:
                    self._ready_cond.wait()
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop and not self._pending:
                    return
                batch = self._pop_batch()
                self._set_queue_size()
            if not batch:
                continue
            batch.sort(key=lambda it: -it.length)
            keys = batch[0].features.keys()
            feats = {k: [it.features[k] for it in batch] for k in keys}
            order = np.arange(len(batch))
            groups = (batching.low_padding_groups(order, [it.length for it in batch]) if self.split else [order])
            padded = [(rows, batching.pad_features(feats, rows, self.pad_id, self.side, self.multiple_of))
                      for rows in groups]
            if self.metrics is not None:
                self.metrics.batch_next_size.set(len(batch))
                self.metrics.batch_next_tokens.set(sum(it.length for it in batch))
            with self._ready_cond:
                self._ready.append((batch, padded))
                self._ready_cond.notify_all()

    # ------------------------------------------------------------------ inference thread
    def _worker(self) -> None:
        while True:
            with self._ready_cond:
                while not self._ready and not (self._stop and not self._batcher_alive()):
                    self._ready_cond.wait(0.1)
                if not self._ready:
                    return
                batch, groups = self._ready.popleft()
                self._busy = True
                self._ready_cond.notify_all()
            try:
                self._run(batch, groups)
            finally:
                with self._ready_cond:
                    self._busy = False
                    self._ready_cond.notify_all()

    def _batcher_alive(self) -> bool:
        return self._threads[0].is_alive()

    def _run(self, batch: list[Item], groups: list[tuple[np.ndarray, dict[str, np.ndarray]]]) -> None:
        start = time.perf_counter()
        for it in batch:
            if it.job.started is None:
                it.job.started = start
        ran = sum(self._run_group([batch[j] for j in rows], padded) for rows, padded in groups)
        if ran and self.metrics is not None:
            self.metrics.batch_inference.observe(time.perf_counter() - start)

    def _run_group(self, batch: list[Item], padded: dict[str, np.ndarray]) -> bool:
        """Run one padded group and resolve what it finishes; ``False`` when every client in it had gone."""
        live = [j for j, it in enumerate(batch) if not it.job.dead]
        if not live:
            return False
        if len(live) < len(batch):  # a client left while its items were being padded: run the rest only
            batch = [batch[j] for j in live]
            padded = _trim({k: v[live] for k, v in padded.items()}, self.side, self.multiple_of)
        rows = np.array([it.index for it in batch])
        try:
            results = self.runner.run(padded, [it.job.post for it in batch], rows)
        except Exception as exc:  # noqa: BLE001 - one batch fails, the server stays up
            healthy = isinstance(exc, EmbedkitError)
            logger.error("%s: a batch of %d input(s) failed: %s", self.name, len(batch), exc,
                         exc_info=not healthy)
            if self.on_health is not None and not healthy:
                self.on_health(False)
            failure = exc if healthy else BackendFailure(f"the model failed on a batch: {exc}")
            for job in {id(it.job): it.job for it in batch}.values():
                job.dead = True
                job.finish(failure)
            return True
        if self.on_health is not None:
            self.on_health(True)
        for it, result in zip(batch, results, strict=True):
            job = it.job
            if isinstance(result, Exception):  # this input's output is not finite: its request fails alone
                if not job.dead:
                    job.dead = True
                    logger.error("%s: %s", self.name, result)
                    job.finish(result)
                continue
            if job.dead:
                continue
            job.results[it.index] = result
            job.remaining -= 1
            if job.remaining == 0:
                job.inference = time.perf_counter() - job.started
                job.finish()
        return True

    # ------------------------------------------------------------------ shutdown
    def close(self, timeout: float | None = None) -> bool:
        """Finish what is queued, then stop both threads; ``True`` when they ended within ``timeout``."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        with self._ready_cond:
            self._ready_cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


def _trim(padded: dict[str, np.ndarray], side: str, multiple_of: int) -> dict[str, np.ndarray]:
    """Cut columns that are padding in every row (after rows were dropped), keeping the ``multiple_of`` rounding."""
    mask = padded["attention_mask"]
    width = int(mask.sum(1).max()) if mask.size else 0
    if multiple_of > 1 and width % multiple_of:
        width += multiple_of - width % multiple_of
    width = min(width, mask.shape[1])
    if side == "left":
        return {k: v[:, v.shape[1] - width:] for k, v in padded.items()}
    return {k: v[:, :width] for k, v in padded.items()}


class Tokenizers:
    """Tokenization off the event loop: a small thread pool, each thread with its own copy of the tokenizer (a fast
    tokenizer's truncation settings are shared state; one copy per thread keeps them from racing)."""

    def __init__(self, tokenizer: Any, workers: int = 2) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.tokenizer = tokenizer
        self.budget = batching.chars_per_token(tokenizer)
        self._local = threading.local()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embedkit-tokenize")

    def _tok(self) -> Any:
        tok = getattr(self._local, "tok", None)
        if tok is None:
            tok = self._local.tok = copy.deepcopy(self.tokenizer)
        return tok

    def tokenize(self, texts: list[str], max_length: int, truncate: bool = True) -> batching.Features:
        """As :meth:`embedkit.Embedder.tokenize` (``truncate=False``: the full token counts, nothing cut)."""
        if truncate:
            return batching.tokenize(self._tok(), texts, max_length, budget=self.budget)
        return batching.tokenize(self._tok(), texts, max_length, truncation=False)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(tokenizer_copy, *args)`` in this thread (for ``/tokenize``)."""
        return fn(self._tok(), *args)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        """Stop the pool."""
        self.pool.shutdown(wait=False, cancel_futures=True)
