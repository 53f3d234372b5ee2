"""Saving a trained cross-encoder so that :class:`embedkit.Reranker`, sentence-transformers' ``CrossEncoder``,
FlagEmbedding's ``FlagReranker`` and TEI all load it with the same scores.

The folder: the Hugging Face ``*ForSequenceClassification`` files (config, weights, tokenizer; what FlagReranker and
TEI read), ``config.json`` ``sentence_transformers.activation_fn`` (what ``CrossEncoder`` reads; no embedder
``modules.json``, which would make sentence-transformers build an embedding model), ``config.json``
``embedkit_reranker`` (the :class:`~embedkit.rerank.spec.RerankerSpec` it was trained with: truncation, lengths),
a model card and the manifest; written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._io import atomic_dir, atomic_write
from ..checkpoint.convert import read_weights
from ..checkpoint.manifest import write_manifest
from ..errors import EmbedkitError
from ..folder.layout import read_json_file
from ..folder.safe_load import load_state_dict
from ..rerank.spec import RECORD_KEY, RerankerSpec, describe_reranker
from .lora import is_peft

ST_ACTIVATION_PATHS = {"sigmoid": "torch.nn.modules.activation.Sigmoid",
                       "identity": "torch.nn.modules.linear.Identity",
                       "tanh": "torch.nn.modules.activation.Tanh"}
"""``RerankerSpec.activation`` -> the path ``CrossEncoder`` stores in ``config.json``."""


def save_reranker(model: Any, folder: Path, spec: RerankerSpec, tokenizer: Any,
                  card: dict[str, Any] | None = None) -> Path:
    """Write a trained cross-encoder (or its LoRA adapter, for a peft model) to ``folder``, atomically."""
    if is_peft(model):
        return save_reranker_adapter(model, folder, spec, tokenizer)
    with atomic_dir(folder, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        config = read_json_file(tmp / "config.json", expect=dict)
        config["sentence_transformers"] = {"activation_fn": ST_ACTIVATION_PATHS[spec.activation]}
        config[RECORD_KEY] = spec.to_dict()
        with atomic_write(tmp / "config.json", "w") as fh:
            json.dump(config, fh, indent=2, sort_keys=True)
            fh.write("\n")
        with atomic_write(tmp / "README.md", "w") as fh:
            fh.write(reranker_card(spec, name=folder.name, architecture=type(model).__name__, card=card))
        write_manifest(tmp, show_progress=False)
    return folder


def save_reranker_adapter(model: Any, folder: Path, spec: RerankerSpec, tokenizer: Any) -> Path:
    """A LoRA adapter folder (peft files, tokenizer, ``embedkit-reranker.json`` spec, manifest), atomically."""
    with atomic_dir(folder, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        with atomic_write(tmp / "embedkit-reranker.json", "w") as fh:
            json.dump(spec.to_dict(), fh, indent=2)
        write_manifest(tmp, show_progress=False)
    return folder


def load_reranker_weights(model: Any, folder: Path) -> None:
    """Resume: load the weights (or adapter) :func:`save_reranker` wrote into ``model``."""
    if is_peft(model):
        from peft import set_peft_model_state_dict

        found = next((f for f in (folder / "adapter_model.safetensors", folder / "adapter_model.bin")
                      if f.is_file()), None)
        if found is None:
            raise EmbedkitError(f"{folder} holds no adapter weights to resume from")
        set_peft_model_state_dict(model, load_state_dict(found))
        return
    state, _ = read_weights(folder)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise EmbedkitError(f"cannot resume from {folder}: {len(missing)} missing / {len(unexpected)} unexpected "
                            f"tensors (e.g. {(missing or unexpected)[:3]})",
                            hint="resume from a checkpoint of the same model and the same --lora setting")


def _cell(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False).replace("|", "\\|").replace("`", "'")
    return f"`{text}`"


def reranker_card(spec: RerankerSpec, *, name: str, architecture: str, card: dict[str, Any] | None = None) -> str:
    """The model card (``README.md``) of a trained reranker: recipe, training, metrics, and how to load it in
    embedkit, FlagEmbedding and sentence-transformers with the same scores."""
    info = dict(card or {})
    one_line = " ".join  # keep every value on one line
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: text-ranking",
             "tags: [embedkit, cross-encoder, reranker]", "---", "", f"# {one_line(str(name).split())}", "",
             "Cross-encoder reranker fine-tuned by [embedkit](https://pypi.org/project/embedkit/) "
             "(`embedkit finetune --reranker`).", ""]
    if info.get("base_model"):
        lines.append(f"- **base model**: {_cell(str(info['base_model']))}")
    lines += [f"- **architecture**: {_cell(architecture)}", "", "## Reranking recipe", "",
              "| field | value | decided by |", "|---|---|---|"]
    lines += [f"| {f} | {_cell(v)} | {one_line(str(rule).split())} |" for f, v, rule in describe_reranker(spec)]
    for title, key in (("Training", "training"), ("Metrics", "metrics")):
        if info.get(key):
            lines += ["", f"## {title}", ""] + [f"- **{k}**: {one_line(str(v).split())}" for k, v in info[key].items()]
    qml = spec.resolved_query_max_length
    lines += ["", "## Usage (all three give the same scores on pairs that fit in max_length)", "",
              "```python", "from embedkit import Reranker", "", 'r = Reranker("PATH")',
              'r.compute_score([("what is a panda?", "The giant panda is a bear.")])   # raw logits', "```", "",
              "```python", "from FlagEmbedding import FlagReranker", "",
              f'r = FlagReranker("PATH", max_length={spec.max_length}'
              + (f", query_max_length={qml}" if qml else "") + ", use_fp16=False)",
              'r.compute_score([("what is a panda?", "The giant panda is a bear.")])', "```", "",
              "```python", "from sentence_transformers import CrossEncoder", "",
              f'r = CrossEncoder("PATH", max_length={spec.max_length})',
              'r.predict([("what is a panda?", "The giant panda is a bear.")])   # ' + spec.activation + "(logit)",
              "```", ""]
    return "\n".join(lines)
