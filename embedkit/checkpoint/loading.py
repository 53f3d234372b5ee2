"""Loading a transformers model from a local folder: offline, without untrusted pickle, never half-random."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .layout import find_weight_files
from .safe_load import load_state_dict, pickle_refusal_reason, read_safetensors_header

logger = logging.getLogger("embedkit")

# Keys a bare encoder may lack without harm: the pooler is never used for embeddings.
_IGNORABLE_MISSING = ("pooler.", "embeddings.position_ids")


def _check_headers(folder: Path) -> None:
    for f in find_weight_files(folder):
        if f.suffix == ".safetensors":
            read_safetensors_header(f)
        elif f.name.endswith(".safetensors.index.json"):
            import json

            try:
                index = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{f}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
            for shard in sorted(set(index.get("weight_map", {}).values())):
                if not (folder / shard).is_file():
                    raise CheckpointError(f"{f} lists shard {shard}, which is missing", hint="copy the shard")
                read_safetensors_header(folder / shard)


def load_tokenizer(path: str | Path, hint: str | None = None) -> Any:
    """``AutoTokenizer`` from a local folder (``local_files_only``); :class:`CheckpointError` naming the folder."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"no usable tokenizer in {path}: {str(exc).strip().splitlines()[0][:300]}",
                              hint=hint or "check the tokenizer files (`embedkit inspect` lists what the folder "
                              "holds); training checkpoints often lack them: copy them from the base model") from None


def load_model(path: str | Path, dtype: Any = None, *, trust_pickle: bool = False, device: Any = None,
               auto_class: Any = None, ignorable_missing: tuple[str, ...] = _IGNORABLE_MISSING,
               what: str = "model") -> Any:
    """Load ``auto_class`` (default ``AutoModel``) from ``path`` offline; refuse pickle and silently random weights.

    Raises :class:`CheckpointError` when the config is unreadable, a weight file is corrupt, shapes do not match
    the config, weights are missing (transformers would initialize them at random; keys starting with one of
    ``ignorable_missing`` are tolerated), or a ``.bin`` needs full unpickling and ``trust_pickle`` is false.
    """
    from transformers import AutoConfig, AutoModel

    auto_class = auto_class or AutoModel

    folder = Path(path)
    _check_headers(folder)
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{folder}/config.json cannot be used: {str(exc).splitlines()[0]}",
                              hint="fix config.json (it must be the model's transformers config)") from None
    kwargs: dict[str, Any] = {"local_files_only": True, "output_loading_info": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        try:
            model, info = auto_class.from_pretrained(str(folder), **kwargs)
        except pickle.UnpicklingError as exc:
            if not trust_pickle:
                raise CheckpointError(
                    f"{folder}: the .bin weights need full unpickling, which can run arbitrary code "
                    f"({pickle_refusal_reason(exc)})",
                    hint="only if you trust the source, pass --trust-pickle (API: trust_pickle=True); "
                    "then convert once with `embedkit convert --to safetensors`",
                ) from None
            bins = [f for f in find_weight_files(folder) if f.suffix == ".bin"]
            state = {}
            for f in bins:
                state.update(load_state_dict(f, trust_pickle=True))
            model = auto_class.from_config(config, dtype=dtype)
            result = model.load_state_dict(state, strict=False)
            info = {"missing_keys": list(result.missing_keys), "unexpected_keys": list(result.unexpected_keys),
                    "mismatched_keys": []}
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        msg = str(exc).strip().splitlines()
        raise CheckpointError(
            f"cannot load {folder} as a {what}: {' '.join(msg[:3])[:600]}",
            hint="the weights do not fit config.json (shapes or names) or a file is damaged; "
            "`embedkit inspect` shows what the folder holds",
        ) from None
    missing = [k for k in info.get("missing_keys", [])
               if not k.startswith(ignorable_missing) and not k.endswith("embeddings.position_ids")]
    mismatched = info.get("mismatched_keys", [])
    if missing or mismatched:
        example = missing[:5] or [str(m) for m in mismatched[:5]]
        raise CheckpointError(
            f"{folder}: weights do not match the {what} in config.json ({len(missing)} missing, {len(mismatched)} "
            f"with other shapes, e.g. {', '.join(map(str, example))}); transformers would fill them with random "
            "values",
            hint="check that config.json belongs to these weights (`embedkit inspect` shows both)",
        )
    model.eval()
    if device is not None:
        model.to(device)
    return model
