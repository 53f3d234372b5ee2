"""What the server serves: one :class:`ServedModel` per model folder, by name and kind.

A kind is a loader plus the routes that accept it: ``embedder`` (dense vectors; with bge-m3 heads also sparse; the
embedding routes) and ``reranker`` (a ``*ForSequenceClassification`` cross-encoder; ``/rerank`` and ``/v1/rerank``).
:func:`load_model` picks the kind from the folder's ``config.json`` (as ``embedkit.rerank`` detects a reranker).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EmbedkitError

logger = logging.getLogger("embedkit")


@dataclass
class ServeConfig:
    """Everything ``embedkit serve`` was told (the CLI flags, one field each)."""

    models: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    precision: str = "fp32"
    device: str | None = None
    max_batch_tokens: int = 16384
    max_batch_requests: int | None = None
    max_client_batch_size: int = 32
    max_concurrent_requests: int = 512
    payload_limit: int = 2_000_000
    auto_truncate: bool = True
    served_model_names: list[str] = field(default_factory=list)
    workers: int = 1
    tokenization_workers: int = 2

    def names(self) -> list[str]:
        """The name of each model: ``--served-model-name`` in order, else the folder's name."""
        out = []
        for i, model in enumerate(self.models):
            if i < len(self.served_model_names):
                out.append(self.served_model_names[i])
            else:
                out.append(Path(model).name if model != "minilm" else "minilm")
        if len(set(out)) != len(out):
            raise EmbedkitError(f"two served models have the same name: {out}",
                                hint="give each one a --served-model-name (in the order of the models)")
        return out

    def to_json(self) -> str:
        """The config as JSON (handed to uvicorn's worker processes through the environment)."""
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """The inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


@dataclass
class ServedModel:
    """One loaded model: its engine (an ``Embedder`` / ``M3Embedder``, or a ``Reranker`` for kind ``reranker``),
    its queue and tokenizer pool."""

    name: str
    kind: str
    path: Path
    engine: Any
    queue: Any
    tokenizers: Any
    prompts: dict[str, str] = field(default_factory=dict)
    healthy: bool = True

    @property
    def sparse(self) -> bool:
        """Whether this model has bge-m3's sparse head (``/embed_sparse``)."""
        return getattr(getattr(self.engine, "heads", None), "sparse_linear", None) is not None

    def close(self) -> None:
        """Finish queued work and stop the model's threads."""
        if self.queue is not None:
            self.queue.close()
        if self.tokenizers is not None:
            self.tokenizers.close()


def folder_prompts(path: Path) -> dict[str, str]:
    """The ``prompts`` of the folder's ``config_sentence_transformers.json`` (``{}`` when none); the spec already
    holds ``query`` / ``document`` (with their provenance), other names are served as ``prompt_name`` values."""
    cfg = path / "config_sentence_transformers.json"
    try:
        prompts = json.loads(cfg.read_text(encoding="utf-8")).get("prompts") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: v for k, v in prompts.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(
        prompts, dict) else {}


def load_embedder(path: str, name: str, config: ServeConfig, metrics: Any = None,
                  on_health: Callable[[str, bool], None] | None = None) -> ServedModel:
    """Load a model folder as ``Embedder`` (``M3Embedder`` with sparse output when it has bge-m3's sparse head)
    with the server's precision and token budget, and start its queue."""
    from ..embedder import Embedder
    from ..folder.m3_heads import SPARSE, head_files
    from ..models import resolve_model_path
    from .queue import BatchQueue, Tokenizers

    folder = resolve_model_path(path)
    options = dict(precision=config.precision, device=config.device, show_progress=False,
                   max_batch_tokens=config.max_batch_tokens)
    if head_files(folder, SPARSE):
        from ..m3 import M3Embedder

        engine = M3Embedder(folder, return_sparse=True, **options)
    else:
        engine = Embedder(folder, **options)
    queue = BatchQueue(engine, max_batch_tokens=config.max_batch_tokens,
                       max_batch_requests=config.max_batch_requests, metrics=metrics, name=name,
                       on_health=(lambda ok: on_health(name, ok)) if on_health else None)
    return ServedModel(name=name, kind="embedder", path=Path(engine.path), engine=engine, queue=queue,
                       tokenizers=Tokenizers(engine.tokenizer, config.tokenization_workers),
                       prompts=folder_prompts(Path(engine.path)))


def load_reranker(path: str, name: str, config: ServeConfig, metrics: Any = None,
                  on_health: Callable[[str, bool], None] | None = None) -> ServedModel:
    """Load a cross-encoder folder as :class:`~embedkit.Reranker` (the server's precision, device and token budget)
    and start its queue, whose items are tokenized (query, passage) pairs run by
    :class:`~embedkit.serve.runner.RerankRunner`."""
    from ..models import resolve_model_path
    from ..rerank import Reranker
    from .queue import BatchQueue, Tokenizers
    from .runner import RerankRunner

    folder = resolve_model_path(path)
    engine = Reranker(folder, precision=config.precision, device=config.device, show_progress=False,
                      max_batch_tokens=config.max_batch_tokens)
    queue = BatchQueue(engine, max_batch_tokens=config.max_batch_tokens,
                       max_batch_requests=config.max_batch_requests, metrics=metrics, name=name,
                       on_health=(lambda ok: on_health(name, ok)) if on_health else None,
                       runner=RerankRunner(engine))
    return ServedModel(name=name, kind="reranker", path=Path(engine.path), engine=engine, queue=queue,
                       tokenizers=Tokenizers(engine.tokenizer, config.tokenization_workers))


Loader = Callable[..., ServedModel]
LOADERS: dict[str, Loader] = {"embedder": load_embedder, "reranker": load_reranker}
"""Kind -> loader."""


def folder_kind(path: str) -> str:
    """``"reranker"`` when the folder's ``config.json`` declares a ``*ForSequenceClassification`` head
    (:func:`embedkit.rerank.is_reranker_folder`), else ``"embedder"``."""
    from ..rerank import is_reranker_folder

    return "reranker" if is_reranker_folder(path) else "embedder"


def load_model(path: str, name: str, config: ServeConfig, metrics: Any = None,
               on_health: Callable[[str, bool], None] | None = None) -> ServedModel:
    """Load ``path`` with the loader of its kind (:func:`folder_kind`)."""
    return LOADERS[folder_kind(path)](path, name, config, metrics, on_health)


class UnknownModel(EmbedkitError):
    """A request named a model that is not served (HTTP 404)."""


class WrongKind(EmbedkitError):
    """A request asked a model for what its kind does not do (an embedder to rerank, a reranker to embed; HTTP
    422)."""


class Registry:
    """The served models by name."""

    def __init__(self) -> None:
        self.models: dict[str, ServedModel] = {}

    def add(self, model: ServedModel) -> None:
        """Serve ``model`` under its name."""
        self.models[model.name] = model

    def get(self, name: str | None, kind: str = "embedder") -> ServedModel:
        """The model a request's ``model`` field names (the only one of ``kind`` when ``None``); raises
        :class:`UnknownModel` listing the served names, or :class:`WrongKind` when the model named (or every model
        served) is of another kind."""
        of_kind = {n: m for n, m in self.models.items() if m.kind == kind}
        served = ", ".join(f"{n} ({m.kind})" for n, m in sorted(self.models.items()))
        if name and name in self.models and name not in of_kind:
            other = self.models[name].kind
            raise WrongKind(f"model {name!r} is {_a(other)} model: this route needs {_a(kind)} model",
                            hint=f"served: {served}")
        if name is None or name == "":
            if len(of_kind) == 1:
                return next(iter(of_kind.values()))
            if not of_kind and self.models:
                kinds = sorted({m.kind for m in self.models.values()})
                raise WrongKind(f"no {kind} model is served here (only {' and '.join(k + ' models' for k in kinds)})"
                                f": this route needs {_a(kind)} model", hint=f"served: {served}")
            raise UnknownModel(f"{len(of_kind)} {kind} models are served: name one in 'model'",
                               hint=f"served: {', '.join(sorted(of_kind)) or 'none'}")
        if name in of_kind:
            return of_kind[name]
        raise UnknownModel(f"model {name!r} is not served here (kind: {kind})",
                           hint=f"served: {', '.join(sorted(of_kind)) or 'none'}")


def _a(kind: str) -> str:
    return ("an " if kind[:1] in "aeiou" else "a ") + kind
