"""Rule 3 of spec resolution: a small table of known model families, matched on the folder name and
``config.json``'s ``_name_or_path``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Family:
    """A known model family: a pattern on the folder / ``_name_or_path`` name and the recipe it implies."""

    name: str
    pattern: str
    values: dict[str, Any]


FAMILIES: tuple[Family, ...] = (
    Family("bge-m3", r"bge-m3", {"pooling": "cls", "normalize": True}),
    Family(
        "bge-en-v1.5",
        r"bge-(small|base|large)-en-v1\.5",
        {"pooling": "cls", "normalize": True,
         "query_instruction": "Represent this sentence for searching relevant passages: "},
    ),
    Family(
        "bge-zh-v1.5",
        r"bge-(small|base|large)-zh-v1\.5",
        {"pooling": "cls", "normalize": True, "query_instruction": "为这个句子生成表示以用于检索相关文章："},
    ),
    Family("bge", r"(^|[^a-z])bge([^a-z]|$)", {"pooling": "cls", "normalize": True}),
    Family(
        "e5",
        r"(^|[^a-z])e5-",
        {"pooling": "mean", "normalize": True, "query_instruction": "query: ", "passage_instruction": "passage: "},
    ),
    Family("gte-qwen", r"gte-qwen", {"pooling": "last_token", "normalize": True}),
    Family("qwen3-embedding", r"qwen3-embedding", {"pooling": "last_token", "normalize": True}),
    Family(
        "sentence-transformers",
        r"all-minilm|all-mpnet|multi-qa-|paraphrase-",
        {"pooling": "mean", "normalize": True},
    ),
)


def match_family(model_dir: Path, config: dict[str, Any] | None = None) -> Family | None:
    """The first family whose pattern matches the folder name or the config's ``_name_or_path``."""
    names = [model_dir.name.lower()]
    if config and isinstance(config.get("_name_or_path"), str):
        names.append(config["_name_or_path"].lower())
    for fam in FAMILIES:
        if any(re.search(fam.pattern, n) for n in names):
            return fam
    return None
