"""Loading a transformers model from a local folder: offline, without untrusted pickle, never half-random."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .layout import cached_parse, find_tokenizer_files, find_weight_files, read_config, weight_index_shards
from .safe_load import check_finite, load_state_dict, pickle_refusal_reason, read_safetensors_header

logger = logging.getLogger("embedkit")

# Keys a bare encoder may lack without harm: the pooler is never used for embeddings.
_IGNORABLE_MISSING = ("pooler.", "embeddings.position_ids")


def _check_headers(folder: Path) -> dict[str, tuple[Path, str]]:
    """Check every weight header / index of ``folder``; return ``{tensor: (file, dtype)}`` (dtype as in the file:
    a safetensors code such as ``"F32"``, or a torch dtype name for ``.bin`` files that load with mmap)."""
    found: dict[str, tuple[Path, str]] = {}
    files: list[Path] = []
    for f in find_weight_files(folder):
        if f.name.endswith(".index.json"):
            for shard in weight_index_shards(f):
                if not shard.is_file():
                    raise CheckpointError(f"{f} lists shard {shard.name}, which is missing", hint="copy the shard")
                files.append(shard)
        else:
            files.append(f)
    for f in dict.fromkeys(files):
        if f.suffix == ".safetensors":
            found.update({name: (f, info["dtype"]) for name, info in read_safetensors_header(f).items()})
        else:
            found.update({name: (f, dtype) for name, dtype in _bin_dtypes(f).items()})
    return found


def _bin_dtypes(path: Path) -> dict[str, str]:
    """Tensor dtypes of a ``.bin`` state dict, read with ``mmap`` (cheap); empty when it cannot be read that way
    (the real load reports why)."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy format, pickle refusal, damage: the load below raises the precise error
        return {}
    if not isinstance(sd, dict):
        return {}
    return {k: str(v.dtype).removeprefix("torch.") for k, v in sd.items() if isinstance(v, torch.Tensor)}


_FLOAT_CODES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "float64", "float32", "float16", "bfloat16",
                "float8_e4m3fn", "float8_e5m2"}


def _origin(found: dict[str, tuple[Path, str]], name: str, prefix: str) -> tuple[Path, str] | None:
    """Where the model's tensor ``name`` came from (transformers adds or strips the ``base_model_prefix``)."""
    for key in (name, f"{prefix}.{name}" if prefix else name, name.removeprefix(f"{prefix}.") if prefix else name):
        if key in found:
            return found[key]
    return None


def check_loaded_weights(model: Any, folder: Path, found: dict[str, tuple[Path, str]]) -> None:
    """Refuse a loaded model whose checkpoint stored an integer / bool tensor where the model holds a floating
    one (transformers casts it silently), or whose floating tensors hold NaN / Inf. Names the file and tensor."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    state = model.state_dict()
    for name, t in state.items():
        origin = _origin(found, name, prefix)
        if origin is not None and t.is_floating_point() and origin[1] not in _FLOAT_CODES:
            raise CheckpointError(
                f"{origin[0]}: tensor {name!r} is stored as {origin[1]} but the model expects floating-point "
                f"weights ({str(t.dtype).removeprefix('torch.')}); it would be cast silently",
                hint="the weight file is damaged or belongs to something else: copy the weights again or re-save "
                "them from the original model")
    for name, t in state.items():
        origin = _origin(found, name, prefix)
        source = origin[0] if origin else folder
        check_finite(source, {name: t})


_HF_CONFIGS: OrderedDict[tuple[str, Path], tuple[tuple[int, ...], Any]] = OrderedDict()


def hf_config(folder: str | Path) -> Any:
    """transformers' ``AutoConfig`` of ``folder`` (offline), built once per version of its ``config.json`` and
    shared by the tokenizer and model loaders (a fresh copy each call: loading a model may modify it).
    :class:`CheckpointError` naming ``config.json`` when transformers cannot use it."""
    from transformers import AutoConfig

    def parse() -> Any:
        try:
            return AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 transformers / huggingface_hub raise many types for a bad config
            detail = " ".join((str(exc).strip() or type(exc).__name__).split())[:400]
            raise CheckpointError(f"{Path(folder) / 'config.json'} cannot be used: {detail}",
                                  hint="fix config.json (it must be the model's transformers config)") from None

    return cached_parse(_HF_CONFIGS, Path(folder) / "config.json", parse, tag=str(folder))


def _describe_mismatch(item: Any) -> str:
    """``name (file shape vs model shape)`` from one entry of transformers' ``mismatched_keys``."""
    if isinstance(item, (tuple, list)) and len(item) == 3:
        name, ckpt, expected = item
        return f"{name} (file {list(ckpt)} vs config {list(expected)})"
    return str(item)


def load_tokenizer(path: str | Path, hint: str | None = None) -> Any:
    """``AutoTokenizer`` from a local folder (``local_files_only``); :class:`CheckpointError` naming the folder."""
    from transformers import AutoTokenizer

    try:
        kwargs = {"config": hf_config(path)}  # the model loader's config object: config.json parsed once
    except CheckpointError:
        kwargs = {}  # AutoTokenizer falls back to a plain PretrainedConfig, as it does on its own
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, **kwargs)
    except Exception as exc:  # tokenizers raises bare Exception for a garbage tokenizer.json
        files = ", ".join(f.name for f in find_tokenizer_files(Path(path))) or "no tokenizer files"
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CheckpointError(f"no usable tokenizer in {path} ({files}): {type(exc).__name__}: {detail}",
                              hint=hint or "check the tokenizer files (`embedkit inspect` lists what the folder "
                              "holds); training checkpoints often lack them: copy them from the base model") from None


@contextlib.contextmanager
def _quiet_loading_bar() -> Iterator[None]:
    """transformers draws a "Loading weights" bar on every load: hide it (embedkit shows its own progress where it
    matters) unless ``EMBEDKIT_VERBOSE`` is set (the CLI's ``--verbose``)."""
    from transformers.utils import logging as hf_logging

    if os.environ.get("EMBEDKIT_VERBOSE") or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _model_class(auto_class: Any, config: Any) -> Any:
    """The concrete class ``auto_class`` builds for ``config`` (found on the meta device: no memory, no init)."""
    import torch

    with torch.device("meta"):
        return type(auto_class.from_config(config))


def load_model(path: str | Path, dtype: Any = None, *, trust_pickle: bool = False, device: Any = None,
               auto_class: Any = None, ignorable_missing: tuple[str, ...] = _IGNORABLE_MISSING,
               what: str = "model", state_dict: dict[str, Any] | None = None) -> Any:
    """Load ``auto_class`` (default ``AutoModel``) from ``path`` offline; refuse pickle and silently random weights.

    Raises :class:`CheckpointError` when the config is unreadable or has wrong key types, a weight file is corrupt
    (or its index points outside the folder), shapes do not match the config, weights are missing (transformers
    would initialize them at random; keys starting with one of ``ignorable_missing`` are tolerated), a tensor is
    stored as integers where floats are expected or holds NaN / Inf, or a ``.bin`` needs full unpickling and
    ``trust_pickle`` is false. Every message names the file (and the tensor where there is one).

    ``state_dict``: the folder's tensors when the caller has read them already (``convert``): the model is built
    from them, with the same checks, instead of reading the weight files a second time.
    """
    from transformers import AutoModel

    auto_class = auto_class or AutoModel

    folder = Path(path)
    read_config(folder)  # JSON object, key types: precise errors before transformers' own
    found = _check_headers(folder)
    config = hf_config(folder)
    # mismatched shapes come back in the loading info (and are refused below, naming the tensor), not as
    # transformers' generic "look at the above report"
    kwargs: dict[str, Any] = {"local_files_only": True, "output_loading_info": True, "config": config,
                              "ignore_mismatched_sizes": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        try:
            with _quiet_loading_bar():
                if state_dict is None:
                    model, info = auto_class.from_pretrained(str(folder), **kwargs)
                else:
                    model, info = _model_class(auto_class, config).from_pretrained(None, state_dict=state_dict,
                                                                                   **kwargs)
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
        example = missing[:5] or [_describe_mismatch(m) for m in list(mismatched)[:5]]
        files = ", ".join(sorted({p.name for p, _ in found.values()})) or "the weight files"
        raise CheckpointError(
            f"{folder}: weights ({files}) do not match the {what} in config.json ({len(missing)} missing, "
            f"{len(mismatched)} with other shapes, e.g. {', '.join(map(str, example))}); transformers would fill "
            "them with random values",
            hint="check that config.json belongs to these weights (`embedkit inspect` shows both)",
        )
    check_loaded_weights(model, folder, found)
    model.eval()
    if device is not None:
        model.to(device)
    return model
