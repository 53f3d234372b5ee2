"""``merge_lora``: base model + LoRA adapter -> one plain model folder, verified to give the adapter model's vectors.

Order: check the inputs (adapter folder, destination) -> load the base (offline, no untrusted pickle) -> attach the
adapter through peft and check that every adapter tensor found its place -> encode a text sample with the adapter
model (unmerged) -> ``merge_and_unload`` -> encode the same sample with the merged model and compare -> only then
save through :func:`embedkit.checkpoint.save.save` (atomic: the destination is untouched on any failure).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import CheckpointError, DataError
from ..folder.layout import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    check_destination,
    check_folder,
    check_model_folder,
    find_adapter_weights,
    find_tokenizer_files,
)
from ..folder.loading import load_model, load_tokenizer
from ..folder.safe_load import load_state_dict
from ..models import resolve_model_path
from ..spec import EmbedderSpec, load_spec, model_token_limit, read_sentence_transformers_spec, resolve_spec
from ..verify import SAMPLE_TEXTS, compare
from .save import save

logger = logging.getLogger("embedkit")

_ADAPTER_HINT = "pass the folder written by `embedkit finetune --lora` (OUTPUT/adapter) or by peft's save_pretrained"


@dataclass
class MergeReport:
    """What :func:`merge_lora` did and measured.

    Attributes:
        path: the merged model folder.
        base / adapter: the folders it was built from.
        spec: the recipe saved with the merged model (from the adapter folder, else the base).
        max_abs_diff: largest absolute difference between the merged model's vectors and the adapter model's
            (base + adapter through peft, unmerged), over queries and passages of the sample.
        num_texts: size of the text sample.
        tolerance: the largest ``max_abs_diff`` accepted.
        base_max_abs_diff: largest absolute difference between the adapter model's vectors and the base's; ``0``
            means the adapter changes nothing (e.g. a freshly initialized LoRA).
        lora: ``r``, ``lora_alpha``, ``target_modules`` and ``base_model_name_or_path`` from the adapter config.
        files: the files written, relative to ``path``.
    """

    path: Path
    base: Path
    adapter: Path
    spec: EmbedderSpec
    max_abs_diff: float
    num_texts: int
    tolerance: float
    base_max_abs_diff: float
    lora: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def verification(self) -> str:
        """One line: what was compared and the measured difference."""
        return (f"vectors equal the adapter model's (max abs diff {self.max_abs_diff:.2g} over {self.num_texts} "
                f"texts, tolerance {self.tolerance:g})")


# ---------------------------------------------------------------------- checks
def _import_peft() -> Any:
    return require("peft", "merging a LoRA adapter")


def read_adapter_config(adapter: Path) -> dict[str, Any]:
    """Check that ``adapter`` is a peft adapter folder and return its ``adapter_config.json``."""
    check_folder(adapter, what="adapter folder", missing_hint=_ADAPTER_HINT,
                 file_hint=f"pass the folder that holds {ADAPTER_CONFIG} and the adapter weights")
    cfg_path = adapter / ADAPTER_CONFIG
    if not cfg_path.is_file():
        full_model = (adapter / "config.json").is_file()
        raise CheckpointError(
            f"{adapter} has no {ADAPTER_CONFIG}: it is not a LoRA adapter folder"
            + (" (it looks like a full model)" if full_model else ""),
            hint="a full model needs no merge: use `embedkit save` on it" if full_model else _ADAPTER_HINT,
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})", hint="the adapter folder is damaged") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object", hint="the adapter folder is damaged")
    if not find_adapter_weights(adapter):
        raise CheckpointError(f"{adapter} has no adapter weights ({' / '.join(ADAPTER_WEIGHTS)})",
                              hint="the adapter folder is incomplete: save it again with save_pretrained")
    return cfg


def _check_paths(dst: Path, base: Path, adapter: Path, overwrite: bool) -> None:
    """Refuse a destination inside (or equal to) the base or the adapter, or one that would replace either."""
    for src, what in ((base, "base model"), (adapter, "adapter")):
        check_destination(dst, overwrite=overwrite, src=src)
        if dst.exists() and dst.resolve() in src.resolve().parents:
            raise CheckpointError(f"destination {dst} contains the {what} {src}; --overwrite would delete it",
                                  hint="choose a destination outside the base and adapter folders")


def _describe_lora(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: cfg.get(k) for k in ("peft_type", "r", "lora_alpha", "target_modules", "base_model_name_or_path")}


def _base_facts(config: Any) -> str:
    return (f"model type {getattr(config, 'model_type', '?')!r}, hidden size {getattr(config, 'hidden_size', '?')}, "
            f"{getattr(config, 'num_hidden_layers', '?')} layers")


def _adapter_origin(lora: dict[str, Any], adapter: Path) -> str:
    """The adapter's own base model, as its config names it (with its facts when that folder is here)."""
    origin = lora.get("base_model_name_or_path")
    text = (f"the adapter {adapter} was trained on {origin!r}" if origin else
            f"the adapter {adapter} does not name its base model")
    text += f" (r={lora.get('r')}, target modules {lora.get('target_modules')})"
    if isinstance(origin, str) and (Path(origin) / "config.json").is_file():
        try:
            cfg = json.loads((Path(origin) / "config.json").read_text(encoding="utf-8"))
            text += (f"; that model has model type {cfg.get('model_type')!r}, hidden size {cfg.get('hidden_size')}, "
                     f"{cfg.get('num_hidden_layers')} layers")
        except (OSError, json.JSONDecodeError):
            pass
    return text


def _mismatch(base: Path, base_config: Any, adapter: Path, lora: dict[str, Any], detail: str) -> CheckpointError:
    origin = lora.get("base_model_name_or_path")
    same = isinstance(origin, str) and Path(origin).expanduser().resolve() == base.resolve()
    return CheckpointError(
        f"the adapter does not fit the base model: base {base} has {_base_facts(base_config)}; "
        f"{_adapter_origin(lora, adapter)}. {detail}",
        hint=f"the adapter names this very base model yet does not fit it: {adapter / ADAPTER_CONFIG} or its "
        "weights were edited or damaged; re-export the adapter" if same else
        "merge the adapter into the model it was trained on (its adapter_config.json names it under "
        "base_model_name_or_path)",
    )


def _first_lines(exc: BaseException, n: int = 2, width: int = 400) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines[:n])[:width]


def _check_every_adapter_tensor_loaded(peft_model: Any, adapter: Path, base: Path, lora: dict[str, Any]) -> None:
    """peft ignores adapter tensors that have no place in the base (e.g. layers it lacks): refuse that."""
    from peft import get_peft_model_state_dict

    weights = find_adapter_weights(adapter)[0]
    saved = set(load_state_dict(weights))
    placed = set(get_peft_model_state_dict(peft_model))
    unplaced, missing = sorted(saved - placed), sorted(placed - saved)
    if unplaced or missing:
        detail = (f"{len(unplaced)} adapter tensors have no place in the base (e.g. {', '.join(unplaced[:2])})"
                  if unplaced else
                  f"{len(missing)} adapter tensors the base needs are missing (e.g. {', '.join(missing[:2])})")
        raise _mismatch(base, peft_model.get_base_model().config, adapter, lora, detail)


# ---------------------------------------------------------------------- spec and texts
def merged_spec(base: Path, adapter: Path, base_config: dict[str, Any]) -> EmbedderSpec:
    """The recipe of the merged model: the adapter folder's (as trained), field by field falling back to the base's.

    The adapter folder written by ``embedkit finetune --lora`` holds the training spec as sentence-transformers
    files; a bare peft folder holds none, and then the base model's spec is used as it is.
    """
    adapter_fields = read_sentence_transformers_spec(adapter)
    assumed_needed = not {"pooling", "normalize"} <= set(adapter_fields)
    base_spec = load_spec(base, warn=assumed_needed)
    if not adapter_fields:
        logger.info("%s records no spec; using the base model's (%s)", adapter, base)
        return base_spec
    hidden = base_config.get("hidden_size")
    spec = resolve_spec(adapter, config=base_config, model_max_length=model_token_limit(base, base_config),
                        hidden_size=hidden if isinstance(hidden, int) else None, warn=False)
    for name in EmbedderSpec.field_names():
        if name in adapter_fields:
            spec.provenance[name] = f"adapter {spec.provenance[name]}"
        else:
            setattr(spec, name, getattr(base_spec, name))
            spec.provenance[name] = f"base model {base_spec.provenance.get(name, 'default')}"
    return spec.validate(hidden_size=hidden if isinstance(hidden, int) else None)


def _check_texts(texts: Sequence[str] | None) -> list[str]:
    if texts is None:
        return list(SAMPLE_TEXTS)
    if isinstance(texts, str):
        raise DataError("texts must be a list of strings, not one string", hint="pass [text] for a single text")
    items = list(texts)
    if not items:
        raise DataError("the verification sample is empty", hint="pass at least one text (or none for the "
                        "built-in sample)")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise DataError(f"texts[{i}] is {type(t).__name__}, expected str")
    return items


def _encode_both(model: Any, tokenizer: Any, spec: EmbedderSpec, texts: list[str]) -> np.ndarray:
    """Queries and passages of ``texts`` through ``model`` with ``spec``, stacked."""
    # lazy: pulls in torch; embedkit.checkpoint.merge stays importable without it (fast CLI start)
    from ..embedder import Embedder

    embedder = Embedder.from_model(model.eval(), tokenizer, spec, batch_size=32, show_progress=False)
    return np.concatenate([embedder.encode_queries(texts), embedder.encode_corpus(texts)])


# ---------------------------------------------------------------------- merge
def merge_lora(
    base: str | Path,
    adapter: str | Path,
    dst: str | Path,
    *,
    overwrite: bool = False,
    texts: Sequence[str] | None = None,
    tolerance: float = 1e-4,
    trust_pickle: bool = False,
) -> MergeReport:
    """Merge a LoRA adapter into its base model and save a plain model folder that encodes like base + adapter.

    The spec (pooling, normalization, instructions, max lengths...) comes from the adapter folder (where
    ``embedkit finetune --lora`` writes it), else from the base; the tokenizer from the adapter folder when it has
    one, else from the base. Before anything is written, the merged model's vectors are compared with the adapter
    model's (base + adapter through peft, unmerged) on ``texts`` (default: a built-in varied sample), as queries
    and as passages; above ``tolerance`` a :class:`CheckpointError` is raised and ``dst`` is left untouched.

    Args:
        base: the base model folder (or ``"minilm"``).
        adapter: the LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).
        dst: the merged model folder to write (must not exist unless ``overwrite``).
        overwrite: replace ``dst`` (atomically) if it exists.
        texts: the verification sample (default :data:`embedkit.verify.SAMPLE_TEXTS`).
        tolerance: the largest accepted max abs difference between merged and adapter vectors.
        trust_pickle: allow full unpickling of the base's ``.bin`` weights (trusted files only).

    Raises:
        CheckpointError: missing / incomplete adapter folder, an adapter that does not fit the base, a bad
            destination, or merged vectors that differ from the adapter model's.

    Example:
        >>> report = merge_lora("bge-small-en-v1.5", "out/adapter", "bge-small-merged")
        >>> report.max_abs_diff <= 1e-4
        True
    """
    _import_peft()
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise CheckpointError(f"tolerance must be a number >= 0, got {tolerance!r}", hint="e.g. tolerance=1e-4")
    sample = _check_texts(texts)
    base_dir = check_model_folder(resolve_model_path(base))
    adapter_dir = Path(adapter).expanduser()
    lora = _describe_lora(read_adapter_config(adapter_dir))
    adapter_dir = adapter_dir.resolve()
    dst = Path(dst)
    _check_paths(dst, base_dir, adapter_dir, overwrite)

    peft_model, spec, tokenizer = _attach_adapter(base_dir, adapter_dir, lora, trust_pickle=trust_pickle)
    merged, diff, base_diff = _merge_verified(peft_model, tokenizer, spec, sample, tolerance, base_dir, adapter_dir,
                                              dst)
    report = MergeReport(path=dst, base=base_dir, adapter=adapter_dir, spec=spec, max_abs_diff=diff,
                         num_texts=len(sample), tolerance=float(tolerance), base_max_abs_diff=base_diff, lora=lora)
    report.files = _save_merged(merged, tokenizer, report, overwrite=overwrite)
    logger.debug("merged %s + %s -> %s: %s", base_dir, adapter_dir, dst, report.verification)
    return report


def _attach_adapter(base_dir: Path, adapter_dir: Path, lora: dict[str, Any], *,
                    trust_pickle: bool) -> tuple[Any, EmbedderSpec, Any]:
    """Load the base (offline, no untrusted pickle) with the adapter attached through peft, every adapter tensor
    in its place; with the merged model's spec and tokenizer (the adapter folder's when it has one)."""
    from peft import PeftModel

    model = load_model(base_dir, trust_pickle=trust_pickle)
    spec = merged_spec(base_dir, adapter_dir, model.config.to_dict())
    tok_dir = adapter_dir if find_tokenizer_files(adapter_dir) else base_dir
    tokenizer = load_tokenizer(tok_dir)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False, local_files_only=True)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _mismatch(base_dir, model.config, adapter_dir, lora, f"peft: {_first_lines(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. safetensors' own error type for a damaged file
        raise CheckpointError(f"cannot read the adapter in {adapter_dir} ({type(exc).__name__}: {_first_lines(exc)})",
                              hint="the adapter folder is damaged or incomplete: export it again") from None
    _check_every_adapter_tensor_loaded(peft_model, adapter_dir, base_dir, lora)
    peft_model.eval()
    return peft_model, spec, tokenizer


def _merge_verified(peft_model: Any, tokenizer: Any, spec: EmbedderSpec, sample: list[str], tolerance: float,
                    base_dir: Path, adapter_dir: Path, dst: Path) -> tuple[Any, float, float]:
    """``merge_and_unload`` and check the merged model encodes ``sample`` like the adapter model (unmerged):
    ``(merged model, max abs diff merged vs adapter, max abs diff adapter vs base)``."""
    adapter_vecs = _encode_both(peft_model, tokenizer, spec, sample)
    with peft_model.disable_adapter():
        base_vecs = _encode_both(peft_model, tokenizer, spec, sample)
    base_diff = compare(adapter_vecs, base_vecs).max_abs_diff
    if base_diff == 0.0:
        logger.warning("the adapter %s does not change the vectors of %s at all (an untrained LoRA?); merging anyway",
                       adapter_dir, base_dir)

    try:
        merged = peft_model.merge_and_unload(safe_merge=True)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"peft could not merge {adapter_dir} into {base_dir}: {_first_lines(exc)}",
                              hint="the adapter weights may hold NaN/inf values; check the training run") from None
    merged.eval()
    merged_vecs = _encode_both(merged, tokenizer, spec, sample)
    diff = compare(merged_vecs, adapter_vecs).max_abs_diff
    if not diff <= tolerance:  # also catches NaN
        raise CheckpointError(
            f"the merged model's vectors differ from the adapter model's by {diff:.3g} (max abs, over "
            f"{len(sample)} texts), more than the tolerance {tolerance:g}; nothing was written to {dst}",
            hint="check that the adapter is a plain LoRA adapter peft can merge; if the difference is only "
            "numerical (e.g. half-precision weights), pass a larger --tolerance",
        )
    return merged, diff, base_diff


def _save_merged(merged: Any, tokenizer: Any, report: MergeReport, *, overwrite: bool) -> list[str]:
    """Save the verified merged model with its spec and a model card naming base, adapter and the check."""
    lora = report.lora
    card = {
        "base_model": str(report.base),
        "training": {"LoRA adapter": f"`{report.adapter}`", "r": lora.get("r"), "lora_alpha": lora.get("lora_alpha"),
                     "target modules": lora.get("target_modules")},
        "notes": [f"merged from the base model `{report.base}` and the LoRA adapter `{report.adapter}`; verified "
                  f"before saving: {report.verification}; it differs from the base model's by up to "
                  f"{report.base_max_abs_diff:.3g}"],
    }
    result = save(merged, report.path, spec=report.spec, tokenizer=tokenizer, overwrite=overwrite, card=card)
    return result.files


__all__ = ["MergeReport", "merge_lora", "merged_spec", "read_adapter_config", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS"]
