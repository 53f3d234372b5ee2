"""The model card (``README.md``) embedkit writes next to a saved model.

Everything that comes from the folder or its spec (the name, paths, ``config.json`` values, spec fields) is
written so that it cannot change the card's structure: Python values in the code snippets are ``repr`` literals
(the same check as :mod:`embedkit.recipe`), text is kept on one line with Markdown punctuation escaped, inline code
uses a backtick run longer than any inside the value, and the recipe's code block a fence longer than any run of
backticks in the code.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..recipe import PLACEHOLDER_PATH, python_literal, recipe_from_spec
from ..spec import EmbedderSpec, describe

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~!])")


def _one_line(value: Any) -> str:
    """``str(value)`` with every non-printable character (newlines, U+2028, NUL...) written as its escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(value))


def _text(value: Any) -> str:
    """Plain text inside Markdown: one line, Markdown punctuation backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", _one_line(value))


def _code(value: Any, *, in_table: bool = False) -> str:
    """Inline code showing ``value`` verbatim (one line); in a table cell, ``|`` is escaped as GFM requires."""
    text = _one_line(value)
    if in_table:
        text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip(" ") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _markdown_line(value: Any) -> str:
    """Caller-written Markdown (training facts, notes): kept inline, on one line, so it cannot open a block."""
    return _one_line(value)


def _yaml_string(value: Any) -> str:
    """A YAML double-quoted scalar on one line: ``\\`` and ``"`` escaped, every non-printable character too."""
    out = []
    for c in str(value):
        n = ord(c)
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
    return '"' + "".join(out) + '"'


def _fence(code: str) -> str:
    """A code-fence longer than any backtick run in ``code`` (so a string literal cannot close the block)."""
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    return "`" * max(3, longest + 1)


def _card_top(front: list[str], name: str, intro: str, *, source: str | None, base_model: str | None,
              architecture: str | None, dtype: str | None, num_parameters: int | None) -> list[str]:
    """A card's front matter (``front`` lines after the library, then the base model), title, intro and facts."""
    lines = ["---", "library_name: sentence-transformers", *front]
    if base_model:
        lines.append(f"base_model: {_yaml_string(base_model)}")
    lines += ["---", "", f"# {_text(name)}", "", intro]
    facts = [("source", source), ("base model", base_model), ("architecture", architecture), ("dtype", dtype),
             ("parameters", f"{num_parameters:,}" if num_parameters else None)]
    return lines + [""] + [f"- **{k}**: {_code(v)}" for k, v in facts if v]


def _card_recipe(title: str, rows: list[tuple[str, Any, str]], training: dict[str, Any] | None,
                 metrics: dict[str, Any] | None, notes: list[str] | None) -> list[str]:
    """The recipe table (``(field, value, rule)`` rows) and the training / metrics / notes sections."""
    lines = ["", f"## {title}", "", "| field | value | decided by |", "|---|---|---|"]
    for field, value, rule in rows:
        lines.append(f"| {field} | {_code(json.dumps(value, ensure_ascii=False), in_table=True)} | "
                     f"{_text(rule)} |")
    if training:
        lines += ["", "## Training", ""] + [f"- **{_text(k)}**: {_markdown_line(v)}" for k, v in training.items()]
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {_text(k)} | {_text(v)} |" for k, v in metrics.items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {_markdown_line(n)}" for n in notes]
    return lines


def model_card(spec: EmbedderSpec, *, name: str, source: str | None = None, base_model: str | None = None,
               architecture: str | None = None, dtype: str | None = None, num_parameters: int | None = None,
               training: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
               notes: list[str] | None = None) -> str:
    """Markdown model card: recipe, provenance, and how to load the model in four libraries with the same vectors.

    ``name``, ``source``, ``base_model``, ``architecture``, ``dtype`` and the spec are data (escaped);
    ``training`` / ``metrics`` values and ``notes`` may hold inline Markdown but are kept on one line.
    """
    spec.validate()
    lines = _card_top(["pipeline_tag: sentence-similarity",
                       "tags: [embedkit, sentence-transformers, feature-extraction, sentence-similarity]"],
                      name, "Text-embedding model saved by [embedkit](https://pypi.org/project/embedkit/).",
                      source=source, base_model=base_model, architecture=architecture, dtype=dtype,
                      num_parameters=num_parameters)
    lines += _card_recipe("Embedding recipe", describe(spec), training, metrics, notes)
    placeholder = python_literal(PLACEHOLDER_PATH)
    truncate = f", truncate_dim={python_literal(spec.truncate_dim)}" if spec.truncate_dim else ""
    flag_instr = (f", query_instruction_for_retrieval={python_literal(spec.query_instruction)}"
                  if spec.query_instruction else "")
    flag_fmt = (f", query_instruction_format={python_literal(spec.query_instruction_format)}"
                if spec.query_instruction and spec.query_instruction_format != "{}{}" else "")
    code = recipe_from_spec(spec, PLACEHOLDER_PATH, name=name).rstrip("\n")
    fence = _fence(code)
    lines += [
        "", "## Usage (all four give the same vectors)", "",
        "### embedkit", "", "```python", "from embedkit import Embedder", "",
        f"model = Embedder({placeholder})",
        'q = model.encode_queries(["what is an embedding?"])',
        'p = model.encode_corpus(["An embedding is a vector that represents a text."])',
        "scores = q @ p.T", "```", "",
        "### sentence-transformers", "", "```python", "from sentence_transformers import SentenceTransformer", "",
        f"model = SentenceTransformer({placeholder}{truncate})",
        'q = model.encode(["what is an embedding?"], prompt_name="query")',
        'p = model.encode(["An embedding is a vector that represents a text."], prompt_name="document")',
        "```", "",
        "### FlagEmbedding", "", "```python", "from FlagEmbedding import FlagModel", "",
        f"model = FlagModel({placeholder}, pooling_method={python_literal(spec.pooling)}{flag_instr}{flag_fmt},",
        f"                  normalize_embeddings={python_literal(spec.normalize)}, "
        f"query_max_length={python_literal(spec.query_max_length)},",
        f"                  passage_max_length={python_literal(spec.passage_max_length)}{truncate}, use_fp16=False)",
        'q = model.encode_queries(["what is an embedding?"])', "```", "",
        "### transformers", "",
        "A standalone script (transformers + torch only; `embedkit recipe FOLDER` prints it with the real path):", "",
        f"{fence}python", code, fence,
    ]
    lines += [""]
    return "\n".join(lines)


_ST_ACTIVATION_PATHS = {"sigmoid": "torch.nn.modules.activation.Sigmoid",
                        "identity": "torch.nn.modules.linear.Identity",
                        "tanh": "torch.nn.modules.activation.Tanh"}
"""What sentence-transformers' CrossEncoder reads from ``config.json`` ``sentence_transformers.activation_fn``."""


def reranker_model_card(spec: Any, *, name: str, source: str | None = None, base_model: str | None = None,
                        architecture: str | None = None, dtype: str | None = None, num_parameters: int | None = None,
                        training: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                        notes: list[str] | None = None) -> str:
    """Markdown model card of a cross-encoder (:class:`embedkit.rerank.RerankerSpec`): the reranking recipe with its
    provenance, and how to load the model with embedkit, FlagEmbedding's FlagReranker, sentence-transformers'
    CrossEncoder and TEI with the same scores. Escaping as :func:`model_card` (values as ``repr`` / JSON literals)."""
    from ..rerank.spec import describe_reranker

    spec.validate()
    lines = _card_top(["pipeline_tag: text-ranking",
                       "tags: [embedkit, sentence-transformers, cross-encoder, reranker, text-ranking]"],
                      name, "Cross-encoder reranker saved by [embedkit](https://pypi.org/project/embedkit/): it "
                      "scores a (query, passage) pair with one logit.",
                      source=source, base_model=base_model, architecture=architecture, dtype=dtype,
                      num_parameters=num_parameters)
    lines += _card_recipe("Reranking recipe", describe_reranker(spec), training, metrics, notes)
    placeholder = python_literal(PLACEHOLDER_PATH)
    peer = "FlagReranker" if spec.truncation == "flagembedding" else "CrossEncoder"
    qml = spec.resolved_query_max_length
    flag_args = f", max_length={python_literal(spec.max_length)}"
    if qml is not None:
        flag_args += f", query_max_length={python_literal(qml)}"
    if spec.query_instruction is not None:
        flag_args += (f",\n                     query_instruction_for_rerank={python_literal(spec.query_instruction)}, "
                      f"query_instruction_format={python_literal(spec.query_instruction_format)}")
    pairs = '[("what is a panda?", "The giant panda is a bear."), ("what is a panda?", "Paris is in France.")]'
    ce_pairs = "pairs"
    ce_prep: list[str] = []
    if spec.query_instruction is not None:
        fmt = spec.query_instruction_format.replace("\\n", "\n")
        ce_prep = [f"instruction, fmt = {python_literal(spec.query_instruction)}, {python_literal(fmt)}",
                   "pairs = [(fmt.format(instruction, q), p) for q, p in pairs]  # CrossEncoder adds no instruction"]
    tei_body = json.dumps({"query": "what is a panda?",
                           "texts": ["The giant panda is a bear.", "Paris is in France."], "raw_scores": True,
                           "truncate": True})
    lines += [
        "", "## Usage (the same scores in every library)", "",
        f"Pairs that fit in {spec.max_length} tokens score the same everywhere. Longer pairs are cut as this model's "
        f"recipe says ({_code(spec.truncation)}, as {peer} cut them): FlagReranker cuts the query to its own limit "
        "and then only the passage, CrossEncoder cuts the longer text first. TEI cuts the longer text first too "
        "(with `truncate: true`), but at the model's own position limit rather than at `max_length`.", "",
        "### embedkit", "", "```python", "from embedkit import Reranker", "",
        f"model = Reranker({placeholder})  # the recipe above is read from config.json",
        f"scores = model.compute_score({pairs})  # logits; normalize=True for sigmoid",
        "```", "",
        "### FlagEmbedding", "", "```python", "from FlagEmbedding import FlagReranker", "",
        f"model = FlagReranker({placeholder}, use_fp16=False{flag_args})",
        f"scores = model.compute_score({pairs}, normalize=False)",
        "```", "",
        "### sentence-transformers", "", "```python", "from sentence_transformers import CrossEncoder", "",
        f"model = CrossEncoder({placeholder}, max_length={python_literal(spec.max_length)})",
        f"pairs = {pairs}", *ce_prep,
        f"scores = model.predict({ce_pairs})  # activation from config.json: "
        f"{_ST_ACTIVATION_PATHS[spec.activation]}",
        "```", "",
        "### Text Embeddings Inference (`/rerank`)", "", "```bash",
        "docker run -p 8080:80 -v \"$PWD/path/to/this/folder:/data/model\" "
        "ghcr.io/huggingface/text-embeddings-inference:cpu-latest --model-id /data/model",
        f"curl 127.0.0.1:8080/rerank -X POST -H 'Content-Type: application/json' -d '{tei_body}'",
        "```", "",
        "`raw_scores: true` returns the logits (as `compute_score(..., normalize=False)`); without it TEI applies "
        "the sigmoid (as `predict`).",
    ]
    lines += [""]
    return "\n".join(lines)
