"""A request's inputs before tokenization: texts checked, token ids checked against the model's vocabulary, and
``prompt_name`` turned into the spec's text preparation (:meth:`EmbedderSpec.prepare_query` / ``prepare_passage`` /
``prepare``) and max length."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import Problem
from .registry import ServedModel

QUERY_PROMPTS = ("query",)
PASSAGE_PROMPTS = ("document", "passage", "corpus")


def texts_of(inputs: Any, param: str) -> list[str]:
    """A request's texts as a list (422 when there are none, or one is empty)."""
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    if not items:
        raise Problem(422, f"'{param}' is empty: send at least one text", "empty", param=param)
    for i, t in enumerate(items):
        if t == "":
            raise Problem(422, f"'{param}[{i}]' is an empty string", "empty", param=param)
    return items


def prompt_of(model: ServedModel, prompt_name: str | None) -> tuple[Callable[[str], str], int]:
    """``prompt_name`` -> (the text preparation, the max length): ``query`` -> the spec's query instruction and
    ``query_max_length``; ``document`` / ``passage`` -> the passage instruction; another name of the folder's
    prompts -> that prompt as instruction; ``None`` -> the text as it is (``Embedder.encode``)."""
    spec = model.engine.spec
    if prompt_name is None:
        return spec.prepare, spec.passage_max_length
    if prompt_name in QUERY_PROMPTS:
        return spec.prepare_query, spec.query_max_length
    if prompt_name in PASSAGE_PROMPTS:
        return spec.prepare_passage, spec.passage_max_length
    if prompt_name in model.prompts:
        instruction = model.prompts[prompt_name]
        return (lambda t: spec.prepare(t, instruction)), spec.passage_max_length
    names = sorted({"query", "document", *model.prompts})
    raise Problem(422, f"unknown prompt_name {prompt_name!r}; this model knows {', '.join(names)}", "validation",
                  param="prompt_name")


def token_features(model: ServedModel, ids: list[list[int]], max_length: int, truncate: bool
                    ) -> dict[str, list[list[int]]]:
    """Features of inputs given as this model's token ids (the OpenAI route's ``[int]`` / ``[[int]]``)."""
    tok = model.engine.tokenizer
    vocab = len(tok)
    rows = []
    for i, seq in enumerate(ids):
        if not seq:
            raise Problem(422, f"'input[{i}]' is an empty list of token ids", "empty", param="input")
        bad = next((t for t in seq if t < 0 or t >= vocab), None)
        if bad is not None:
            raise Problem(422, f"'input[{i}]' holds token id {bad}, outside this model's vocabulary (0..{vocab - 1})",
                          "validation", param="input")
        if len(seq) > max_length:
            if not truncate:
                raise Problem(422, f"'input[{i}]' has {len(seq)} tokens, over the limit of {max_length}",
                              "validation", param="input")
            seq = seq[:max_length]
        rows.append(list(seq))
    out = {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]}
    if "token_type_ids" in getattr(tok, "model_input_names", ()):
        out["token_type_ids"] = [[0] * len(r) for r in rows]
    return out


class Inputs:
    """A request's inputs: texts, or token ids (the OpenAI route's ``[int]`` / ``[[int]]``)."""

    def __init__(self, inputs: Any, param: str) -> None:
        self.token_ids = isinstance(inputs, list) and bool(inputs) and not isinstance(inputs[0], str)
        if self.token_ids:
            self.items = [inputs] if isinstance(inputs[0], int) else inputs
        else:
            self.items = texts_of(inputs, param)
