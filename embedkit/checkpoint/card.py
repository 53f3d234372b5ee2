"""The model card (``README.md``) embedkit writes next to a saved model."""

from __future__ import annotations

import json
from typing import Any

from ..recipe import PLACEHOLDER_PATH, recipe_from_spec
from ..spec import EmbedderSpec, describe


def model_card(spec: EmbedderSpec, *, name: str, source: str | None = None, base_model: str | None = None,
               architecture: str | None = None, dtype: str | None = None, num_parameters: int | None = None,
               training: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
               notes: list[str] | None = None) -> str:
    """Markdown model card: recipe, provenance, and how to load the model in four libraries with the same vectors."""
    q_instr = json.dumps(spec.query_instruction, ensure_ascii=False) if spec.query_instruction else None
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
             "tags: [embedkit, sentence-transformers, feature-extraction, sentence-similarity]"]
    if base_model:
        lines.append(f"base_model: {base_model}")
    lines += ["---", "", f"# {name}", "", "Text-embedding model saved by [embedkit](https://pypi.org/project/embedkit/)."]
    facts = [("source", source), ("base model", base_model), ("architecture", architecture), ("dtype", dtype),
             ("parameters", f"{num_parameters:,}" if num_parameters else None)]
    lines += [""] + [f"- **{k}**: `{v}`" for k, v in facts if v]
    lines += ["", "## Embedding recipe", "", "| field | value | decided by |", "|---|---|---|"]
    for field, value, rule in describe(spec):
        lines.append(f"| {field} | `{json.dumps(value, ensure_ascii=False)}` | {rule} |")
    if training:
        lines += ["", "## Training", ""] + [f"- **{k}**: {v}" for k, v in training.items()]
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    flag_instr = f", query_instruction_for_retrieval={q_instr}" if q_instr else ""
    flag_fmt = (f", query_instruction_format={json.dumps(spec.query_instruction_format)}"
                if spec.query_instruction and spec.query_instruction_format != "{}{}" else "")
    lines += [
        "", "## Usage (all four give the same vectors)", "",
        "### embedkit", "", "```python", "from embedkit import Embedder", "",
        'model = Embedder("path/to/this/folder")',
        'q = model.encode_queries(["what is an embedding?"])',
        'p = model.encode_corpus(["An embedding is a vector that represents a text."])',
        "scores = q @ p.T", "```", "",
        "### sentence-transformers", "", "```python", "from sentence_transformers import SentenceTransformer", "",
        'model = SentenceTransformer("path/to/this/folder"'
        + (f", truncate_dim={spec.truncate_dim}" if spec.truncate_dim else "") + ")",
        'q = model.encode(["what is an embedding?"], prompt_name="query")',
        'p = model.encode(["An embedding is a vector that represents a text."], prompt_name="document")',
        "```", "",
        "### FlagEmbedding", "", "```python", "from FlagEmbedding import FlagModel", "",
        f'model = FlagModel("path/to/this/folder", pooling_method="{spec.pooling}"{flag_instr}{flag_fmt},',
        f"                  normalize_embeddings={spec.normalize}, query_max_length={spec.query_max_length},",
        f"                  passage_max_length={spec.passage_max_length}"
        + (f", truncate_dim={spec.truncate_dim}" if spec.truncate_dim else "") + ", use_fp16=False)",
        'q = model.encode_queries(["what is an embedding?"])', "```", "",
        "### transformers", "",
        "A standalone script (transformers + torch only; `embedkit recipe FOLDER` prints it with the real path):", "",
        "```python", recipe_from_spec(spec, PLACEHOLDER_PATH, name=name).rstrip("\n"),
    ]
    lines += ["```", ""]
    return "\n".join(lines)
