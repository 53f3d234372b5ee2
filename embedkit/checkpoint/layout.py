"""What the files of a model folder are, and whether the folder can be loaded for inference."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "vocab.json",
)


def find_weight_files(folder: Path) -> list[Path]:
    """The files holding model weights (single or sharded safetensors / bin)."""
    found = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
    if not found:
        found = sorted(p for p in folder.glob("model-*-of-*.safetensors"))
    return found


def find_tokenizer_files(folder: Path) -> list[Path]:
    """The files a tokenizer can be built from."""
    return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]


def check_model_folder(path: str | Path) -> Path:
    """Check that ``path`` is a local folder with config, weights and tokenizer; return it resolved.

    Raises :class:`CheckpointError` naming the path tried and, for an incomplete folder, every missing part.
    embedkit works offline: a hub id such as ``BAAI/bge-small-en-v1.5`` is never downloaded.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise CheckpointError(
            f"no model folder at {str(path)!r} (tried {folder.resolve()}); embedkit works offline and loads "
            "local folders only, it never downloads from a hub",
            hint="pass the path of a folder holding config.json, the weights and the tokenizer "
            "(download it once elsewhere, e.g. `huggingface-cli download NAME --local-dir DIR`), "
            "or the alias 'minilm' for the bundled all-MiniLM-L6-v2",
        )
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is a file, not a model folder",
            hint="pass the folder that holds config.json, the weights and the tokenizer files",
        )
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not find_weight_files(folder):
        missing.append("weights (" + " / ".join(WEIGHT_FILES[::2]) + ")")
    if not find_tokenizer_files(folder):
        missing.append("tokenizer (" + " / ".join(TOKENIZER_FILES[:3]) + " ...)")
    if missing:
        raise CheckpointError(
            f"{folder} is not a complete model folder: missing {'; '.join(missing)}",
            hint="point to the folder written by save_pretrained / `embedkit save` (a training checkpoint may "
            "lack the tokenizer: copy it from the base model)",
        )
    return folder.resolve()


def check_destination(dst: str | Path, *, overwrite: bool = False, src: str | Path | None = None) -> Path:
    """Refuse a destination that exists (unless ``overwrite``) or that lies inside ``src``; return it as a Path."""
    dst = Path(dst)
    if src is not None:
        src_r, dst_r = Path(src).resolve(), dst.resolve()
        if dst_r == src_r or src_r in dst_r.parents:
            raise CheckpointError(
                f"destination {dst} is inside the source {src}",
                hint="choose a destination outside the source folder",
            )
    if dst.exists() and not overwrite:
        raise CheckpointError(f"destination {dst} already exists",
                              hint="pass --overwrite (API: overwrite=True) to replace it, or choose another path")
    return dst
